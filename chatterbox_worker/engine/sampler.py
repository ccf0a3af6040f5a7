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

# What a job gets from a step: its token, the status it ends with instead of drawing one, or
# the error of its own that fails it alone (its neighbours draw as if it were not there).
Draw = int | RequestStatus | BaseException


NAN_LOGITS = "the model produced NaN logits for this request"


class RowFault(RuntimeError):
    """One job's logits could not be sampled (an exception of its own, or NaN logits)."""


class Sampler:
    def __init__(self, recipe: Recipe, device):
        self.recipe = recipe
        self.device = device
        self._batch_key: tuple = ()
        self._batch: SamplingBatch | None = None

    def sample(self, requests: Sequence[EngineRequest]) -> list[Draw]:
        """Each request's draw. A failure that belongs to one request (its analyzer, its row of
        the processors, NaN in its logits, its draw) is that request's draw; the others draw
        exactly what they would have drawn without it, from their own generators."""
        draws: dict[int, Draw] = {}
        rows: dict[int, torch.Tensor] = {}
        for i, request in enumerate(requests):
            try:
                rows[i] = self._guided_logits(request)
            except Exception as exc:  # its own analyzer or logits: it fails alone
                draws[i] = exc
            request.state.logits = None
        healthy = [i for i in range(len(requests)) if i in rows]
        if healthy:
            processed = self._processed([requests[i] for i in healthy], [rows[i] for i in healthy])
            for i, logits in zip(healthy, processed):
                draws[i] = logits if isinstance(logits, BaseException) else self._draw(requests[i], logits)
        return [draws[i] for i in range(len(requests))]

    def _processed(self, requests: Sequence[EngineRequest], rows: list[torch.Tensor]) -> list:
        """Each row after the recipe's processors, or the error its row alone raises."""
        try:
            stacked = torch.cat(rows) if len(rows) > 1 else rows[0]
            nan_in = torch.isnan(stacked).any(dim=-1)  # before the processors, which may edit in place
            logits = self.recipe.process(stacked, self._sampling_batch(requests))
            nan_rows = (nan_in | torch.isnan(logits).any(dim=-1)).tolist()  # one sync for the whole batch
            return [RowFault(NAN_LOGITS) if nan else row for row, nan in zip(logits, nan_rows)]
        except Exception:  # replay row by row (the processors are row-wise) to find the offender
            self._batch_key = ()
        out: list = []
        for request, row in zip(requests, rows):
            try:
                batch = SamplingBatch.of([request.params], [request.state.history], self.device)
                logits = self.recipe.process(row, batch)[0]
                out.append(RowFault(NAN_LOGITS) if bool(torch.isnan(logits).any()) else logits)
            except Exception as exc:
                out.append(exc)
        return out

    def _draw(self, request: EngineRequest, logits: torch.Tensor) -> Draw:
        """One request's draw from its processed logits [V]."""
        if self.recipe.nothing_to_draw(logits, request.steps):
            return RequestStatus.FINISHED_STOPPED
        try:
            probs = torch.softmax(logits, dim=-1)
            token = int(torch.multinomial(probs[None], num_samples=1, generator=request.state.generator))
        except RuntimeError as exc:  # e.g. every candidate filtered to -inf: its row, not the batch
            return RowFault(f"sampling failed for this request: {exc}")
        forced = request.forced_tokens
        if forced is not None:
            if request.steps >= len(forced):
                return RequestStatus.FINISHED_LENGTH
            token = forced[request.steps]
        return token

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
