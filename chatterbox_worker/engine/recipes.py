"""What differs between the Chatterbox variants in the decode loop, one :class:`Recipe` each.

A recipe builds a job's prefill embeddings and the embedding of each sampled token, orders
the logits processors, and says how the penalised history and the stop rule behave. The
multilingual recipe adds the library's alignment analyzer, imported only when that recipe
builds one, so that a chatterbox build without it still serves the other variants.
"""
from __future__ import annotations

import functools
import math
from typing import Any

import torch

from chatterbox_worker.engine.sampling import (
    SamplingBatch,
    SamplingParams,
    TokenHistory,
    min_p_filter,
    repetition_penalty,
    top_k_filter,
    top_p_filter,
)

# What T3.inference passes to the multilingual analyzer; the heads it reads are the
# library's LLAMA_ALIGNED_HEADS (layers 12, 13 and 9).
ALIGNMENT_LAYER_IDX = 9


class Recipe:
    """The base is Chatterbox's Llama T3 (standard)."""

    name = "standard"
    uses_cfg = True
    # Which of the job's draws may end it on the stop token (Turbo ignores its first).
    first_stoppable_step = 0

    def __init__(self, t3):
        self.t3 = t3
        self.hp = t3.hp

    @property
    def max_rows_per_job(self) -> int:
        return 2 if self.uses_cfg else 1

    def rows(self, params: SamplingParams) -> int:
        # cfg_weight 0 gives cond + 0 * (cond - uncond) == cond: the second row adds nothing.
        return 2 if self.uses_cfg and params.cfg_weight > 0.0 else 1

    def prefill_embeds(self, t3_cond, text_tokens: torch.Tensor, params: SamplingParams):
        """(embeds [rows, T, dim], len_cond): T3.inference's first input, BOS included."""
        t3, hp = self.t3, self.hp
        text_tokens = torch.atleast_2d(text_tokens).to(dtype=torch.long, device=t3.device)
        if text_tokens.size(0) == 1:
            text_tokens = torch.cat([text_tokens, text_tokens])
        embeds, len_cond = t3.prepare_input_embeds(
            t3_cond=t3_cond, text_tokens=text_tokens,
            speech_tokens=hp.start_speech_token * torch.ones_like(text_tokens[:, :1]),
            cfg_weight=params.cfg_weight,
        )
        bos = torch.tensor([[hp.start_speech_token]], dtype=torch.long, device=embeds.device)
        bos_embed = t3.speech_emb(bos) + t3.speech_pos_emb.get_fixed_embedding(0)
        embeds = torch.cat([embeds, bos_embed.expand(embeds.size(0), -1, -1)], dim=1)
        return embeds[: self.rows(params)], len_cond

    def initial_history(self) -> int:
        # The library's generated_ids start with the BOS token, which is penalised too.
        return self.hp.start_speech_token

    def remember(self, history: TokenHistory, token: int, step: int) -> None:
        """Add the job's ``step``-th draw (from 1) to the ids its repetition penalty applies to."""
        history.append(token)

    def token_embeds(self, tokens: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
        """Embeddings [n, 1, dim] of each job's last token; ``steps`` counts its draws so far."""
        return (self.t3.speech_emb(tokens) + self.t3.speech_pos_emb.emb(steps)).unsqueeze(1)

    def process(self, logits: torch.Tensor, batch: SamplingBatch) -> torch.Tensor:
        """T3.inference's processors: repetition, temperature, min_p, top_p."""
        logits = repetition_penalty(logits, batch.ids, batch.penalty)
        logits = logits / batch.temperature
        if batch.any_min_p:
            logits = min_p_filter(logits, batch.min_p)
        if batch.any_top_p:
            logits = top_p_filter(logits, batch.one_minus_top_p)
        return logits

    def nothing_to_draw(self, logits: torch.Tensor, step: int) -> bool:
        """Whether the job ends before its draw because its processors left no candidate."""
        return False

    def aligned_heads(self) -> tuple[tuple[int, int], ...]:
        """The (layer, head) pairs whose attention the job's analyzer reads (none here)."""
        return ()

    def make_analyzer(self, len_cond: int, n_text: int) -> Any:
        return None


class MultilingualRecipe(Recipe):
    name = "multilingual"

    def aligned_heads(self) -> tuple[tuple[int, int], ...]:
        from chatterbox.models.t3.inference.alignment_stream_analyzer import LLAMA_ALIGNED_HEADS

        return tuple(LLAMA_ALIGNED_HEADS)

    def make_analyzer(self, len_cond: int, n_text: int) -> Any:
        return _engine_analyzer_class()(self.t3.tfmr, None, text_tokens_slice=(len_cond, len_cond + n_text),
                                        alignment_layer_idx=ALIGNMENT_LAYER_IDX, eos_idx=self.hp.stop_speech_token)


class TurboRecipe(Recipe):
    """inference_turbo: GPT-2 with its own position embeddings, no CFG, no BOS token."""

    name = "turbo"
    uses_cfg = False
    first_stoppable_step = 1

    def prefill_embeds(self, t3_cond, text_tokens: torch.Tensor, params: SamplingParams):
        text_tokens = torch.atleast_2d(text_tokens).to(dtype=torch.long, device=self.t3.device)
        start = self.hp.start_speech_token * torch.ones_like(text_tokens[:, :1])
        return self.t3.prepare_input_embeds(t3_cond=t3_cond, text_tokens=text_tokens, speech_tokens=start,
                                            cfg_weight=0.0)

    def remember(self, history: TokenHistory, token: int, step: int) -> None:
        if step == 1:
            # inference_turbo penalises its start token for the first draw only.
            history.replace_all(token)
        else:
            history.append(token)

    def token_embeds(self, tokens: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
        return self.t3.speech_emb(tokens).unsqueeze(1)

    def process(self, logits: torch.Tensor, batch: SamplingBatch) -> torch.Tensor:
        # inference_turbo's order: temperature, top-k, top-p, then repetition.
        logits = torch.where(batch.apply_temperature, logits / batch.temperature, logits)
        for k in batch.top_ks:
            rows = batch.top_k_rows[k]
            logits[rows] = top_k_filter(logits[rows], k)
        if batch.any_top_p:
            logits = torch.where(batch.top_p_on, top_p_filter(logits, batch.one_minus_top_p), logits)
        return repetition_penalty(logits, batch.ids, batch.penalty)

    def nothing_to_draw(self, logits: torch.Tensor, step: int) -> bool:
        # inference_turbo stops where every logit was filtered out (after its first draw).
        return step > 0 and bool(torch.all(logits == -math.inf))


RECIPES: dict[str, type[Recipe]] = {"standard": Recipe, "multilingual": MultilingualRecipe, "turbo": TurboRecipe}


@functools.cache
def _engine_analyzer_class() -> type:
    """The library's analyzer, fed by the engine instead of forward hooks on the backbone."""
    from chatterbox.models.t3.inference.alignment_stream_analyzer import AlignmentStreamAnalyzer

    class EngineAlignmentAnalyzer(AlignmentStreamAnalyzer):
        def _add_attention_spy(self, tfmr, buffer_idx, layer_idx, head_idx):
            pass  # the engine hands each step's attention over itself (see ``observe``)

        def observe(self, attention: dict[int, torch.Tensor], logits: torch.Tensor, last_token: int):
            """The analyzer's step on the engine's captured attention, one tensor per aligned head."""
            self.last_aligned_attns = [attention[i] for i in range(len(attention))]
            return self.step(logits, next_token=last_token)

    return EngineAlignmentAnalyzer
