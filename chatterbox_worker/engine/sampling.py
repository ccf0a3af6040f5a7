"""Sampling settings and the logits processors, row by row over a batch of jobs.

Each filter is the arithmetic of one Hugging Face logits processor that the library's
loops use, with its setting given per row, so that jobs with different settings share one
step. :class:`SamplingBatch` holds those per-row settings for the jobs of a step.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass
class SamplingParams:
    """One job's sampling settings. ``top_k`` 0 and ``top_p`` 1 are off."""

    max_new_tokens: int
    temperature: float = 0.8
    top_p: float = 1.0
    min_p: float = 0.0
    top_k: int = 0
    repetition_penalty: float = 1.0
    cfg_weight: float = 0.0
    seed: int | None = None


def repetition_penalty(logits: torch.Tensor, ids: torch.Tensor, penalty: torch.Tensor) -> torch.Tensor:
    # RepetitionPenaltyLogitsProcessor, penalty per row. Rows of ``ids`` are padded with an
    # id already in the row: a repeated id gathers and writes back the same value.
    score = torch.gather(logits, 1, ids)
    score = torch.where(score < 0, score * penalty, score / penalty)
    return logits.scatter(1, ids, score)


def min_p_filter(logits: torch.Tensor, min_p: torch.Tensor) -> torch.Tensor:
    # MinPLogitsWarper, min_p per row; the most likely token is always kept.
    probs = torch.softmax(logits, dim=-1)
    remove = probs < min_p * probs.amax(dim=-1, keepdim=True)
    remove.scatter_(-1, probs.argmax(dim=-1, keepdim=True), False)
    return logits.masked_fill(remove, -math.inf)


def top_p_filter(logits: torch.Tensor, one_minus_top_p: torch.Tensor) -> torch.Tensor:
    # TopPLogitsWarper, per row; takes 1 - top_p (computed in double, as the library does).
    sorted_logits, sorted_indices = torch.sort(logits, descending=False)
    remove = sorted_logits.softmax(dim=-1).cumsum(dim=-1) <= one_minus_top_p
    remove[..., -1:] = False
    return logits.masked_fill(remove.scatter(1, sorted_indices, remove), -math.inf)


def top_k_filter(logits: torch.Tensor, top_k: int) -> torch.Tensor:
    # TopKLogitsWarper for one k (Turbo's jobs share it; a row group per k otherwise).
    k = min(top_k, logits.size(-1))
    return logits.masked_fill(logits < torch.topk(logits, k)[0][..., -1, None], -math.inf)


class TokenHistory:
    """The ids a job's repetition penalty applies to: ``ids[:length]``; the rest repeat the first.

    Preallocated for the job's whole run, so a step writes one id instead of growing a tensor.
    """

    def __init__(self, first: int, capacity: int, device):
        self.ids = torch.full((capacity,), first, dtype=torch.long, device=device)
        self.length = 1

    def append(self, token: int) -> None:
        self.ids[self.length] = token
        self.length += 1

    def replace_all(self, token: int) -> None:
        """Make ``token`` the only id penalised (every slot holds it; the length stays)."""
        self.ids.fill_(token)

    def padded(self, length: int) -> torch.Tensor:
        return self.ids[:length]


@dataclass
class SamplingBatch:
    """Per-row sampling settings of the jobs sampled in one step (one row per job)."""

    ids: torch.Tensor
    penalty: torch.Tensor
    temperature: torch.Tensor
    apply_temperature: torch.Tensor
    min_p: torch.Tensor
    any_min_p: bool
    one_minus_top_p: torch.Tensor
    top_p_on: torch.Tensor
    any_top_p: bool
    top_ks: list[int]
    top_k_rows: dict[int, list[int]]

    @classmethod
    def of(cls, params: Sequence[SamplingParams], histories: Sequence[TokenHistory], device) -> SamplingBatch:
        def col(values, dtype=torch.float32):
            return torch.tensor(values, dtype=dtype, device=device)[:, None]

        top_k_rows: dict[int, list[int]] = {}
        for i, p in enumerate(params):
            if p.top_k > 0:
                top_k_rows.setdefault(p.top_k, []).append(i)
        return cls(
            ids=penalised_ids(histories),
            penalty=col([float(p.repetition_penalty) for p in params]),
            temperature=col([p.temperature if p.temperature > 0 else 1.0 for p in params]),
            apply_temperature=col([p.temperature > 0 and p.temperature != 1.0 for p in params], torch.bool),
            min_p=col([p.min_p for p in params]),
            any_min_p=any(p.min_p > 0 for p in params),
            one_minus_top_p=col([1 - p.top_p for p in params]),
            top_p_on=col([p.top_p < 1.0 for p in params], torch.bool),
            any_top_p=any(p.top_p < 1.0 for p in params),
            top_ks=list(top_k_rows),
            top_k_rows=top_k_rows,
        )


def penalised_ids(histories: Sequence[TokenHistory]) -> torch.Tensor:
    """[jobs, longest history] ids, each row padded with its own first id."""
    if len(histories) == 1:
        return histories[0].padded(histories[0].length)[None]
    k = max(h.length for h in histories)
    return torch.stack([h.padded(k) for h in histories])
