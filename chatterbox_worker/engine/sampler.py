"""Draws each running job's next token from the logits of its last forward.

Per job: classifier-free guidance folds its two rows into one, the multilingual analyzer
may edit the logits, and a teacher-forced job logs them. Then the recipe's processors run
over all jobs' rows at once, and each job draws from its own ``torch.Generator``, so a
seeded job draws the same tokens alone or beside others and the global RNG is untouched.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from chatterbox_worker.engine.recipes import Recipe
from chatterbox_worker.engine.requests import EngineRequest, RequestStatus
from chatterbox_worker.engine.sampling import SamplingBatch, penalised_ids

# What a job gets from a step: its token, or the status it ends with instead of drawing one.
Draw = int | RequestStatus


class Sampler:
    def __init__(self, recipe: Recipe, device):
        self.recipe = recipe
        self.device = device
        self._batch_key: tuple = ()
        self._batch: SamplingBatch | None = None

    def sample(self, requests: Sequence[EngineRequest]) -> list[Draw]:
        rows = [self._guided_logits(r) for r in requests]
        logits = self.recipe.process(torch.cat(rows) if len(rows) > 1 else rows[0], self._sampling_batch(requests))
        probs = torch.softmax(logits, dim=-1)
        draws: list[Draw] = []
        for i, request in enumerate(requests):
            state = request.state
            state.logits = None
            if self.recipe.nothing_to_draw(logits[i], request.steps):
                draws.append(RequestStatus.FINISHED_STOPPED)
                continue
            token = int(torch.multinomial(probs[i:i + 1], num_samples=1, generator=state.generator))
            forced = request.forced_tokens
            if forced is not None:
                if request.steps >= len(forced):
                    draws.append(RequestStatus.FINISHED_LENGTH)
                    continue
                token = forced[request.steps]
            draws.append(token)
        return draws

    def _guided_logits(self, request: EngineRequest) -> torch.Tensor:
        """[1, V]: the request's logits after guidance and its analyzer, before any processor."""
        state = request.state
        logits = state.logits
        if request.num_rows == 2:
            cond, uncond = logits[0:1], logits[1:2]
            logits = cond + state.cfg * (cond - uncond)
        if request.forced_tokens is not None:
            request.logit_log.append(logits[0].clone())
        if request.analyzer is not None:
            last = state.last_token if request.steps else self.recipe.hp.start_speech_token
            logits = request.analyzer.observe(state.attention, logits, last)
        return logits

    def _sampling_batch(self, requests: Sequence[EngineRequest]) -> SamplingBatch:
        """The requests' settings as row tensors, rebuilt only when the requests change."""
        histories = [r.state.history for r in requests]
        key = tuple(r.run_key for r in requests)
        if key != self._batch_key:
            self._batch_key = key
            self._batch = SamplingBatch.of([r.params for r in requests], histories, self.device)
        else:
            self._batch.ids = penalised_ids(histories)
        return self._batch
