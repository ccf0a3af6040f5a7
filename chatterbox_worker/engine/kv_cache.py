"""The engine's static KV cache: how many rows fit, the allocation, lazy zeroing, row moves.

One tensor pair per layer, ``[rows, kv_heads, max_len, head_dim]``; a job owns one row
(two with classifier-free guidance) for its whole run, at any position up to ``max_len``.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence

import torch

from chatterbox_worker.engine.scheduler import RowMove

logger = logging.getLogger(__name__)

# On CPU the KV cache is zeroed this many positions at a time, as jobs first reach them.
CLEAN_CHUNK_TOKENS = 64


def rows_that_fit(wanted: int, min_rows: int, row_tokens: int, bytes_per_row_token: int,
                  memory_fraction: float, device) -> int:
    """``wanted`` rows, or as many as fit in ``memory_fraction`` of free GPU memory (at least ``min_rows``)."""
    if device.type != "cuda":
        return wanted
    free, _ = torch.cuda.mem_get_info(device)
    fit = int(free * memory_fraction // (bytes_per_row_token * row_tokens))
    if fit >= wanted:
        return wanted
    logger.warning("KV cache: %d rows of %d tokens fit in %.0f%% of free GPU memory (asked %d)",
                   fit, row_tokens, 100 * memory_fraction, wanted)
    return max(min_rows, fit)


class KVCache:
    """Keys and values of every layer for ``rows`` rows of ``max_len`` positions."""

    def __init__(self, n_layers: int, rows: int, kv_heads: int, max_len: int, head_dim: int,
                 dtype: torch.dtype, device):
        self.n_layers, self.rows, self.max_len = n_layers, rows, max_len
        self.shape = (rows, kv_heads, max_len, head_dim)
        self.dtype, self.device = dtype, device
        self.layers: list[tuple[torch.Tensor, torch.Tensor]] | None = None
        self._clean_len = 0

    @property
    def allocated(self) -> bool:
        return self.layers is not None

    def bytes(self) -> int:
        rows, heads, length, dim = self.shape
        return 2 * self.n_layers * rows * heads * length * dim * torch.finfo(self.dtype).bits // 8

    def allocate(self) -> None:
        if self.layers is not None:
            return
        # A decode step reads every batch row up to the longest row, and masked positions
        # must hold finite values (0 * NaN is NaN), so positions are zeroed before first use.
        # On a GPU all at once (the graphs read the full length); on CPU a chunk at a time,
        # so that only the positions jobs reach are ever committed to memory.
        on_gpu = self.device.type == "cuda"
        make = torch.zeros if on_gpu else torch.empty
        self.layers = [(make(self.shape, dtype=self.dtype, device=self.device),
                        make(self.shape, dtype=self.dtype, device=self.device)) for _ in range(self.n_layers)]
        self._clean_len = self.max_len if on_gpu else 0

    def release(self) -> None:
        self.layers = None

    def ensure_clean(self, length: int) -> None:
        """Zero cache positions up to ``length`` (and a chunk beyond) before anything uses them."""
        if length <= self._clean_len:
            return
        new = min(self.max_len, max(length, self._clean_len + CLEAN_CHUNK_TOKENS))
        for k_cache, v_cache in self.layers:
            k_cache[:, :, self._clean_len:new].zero_()
            v_cache[:, :, self._clean_len:new].zero_()
        self._clean_len = new

    def move_rows(self, moves: Sequence[RowMove]) -> None:
        """Apply the scheduler's row moves (down over finished jobs' rows), in order."""
        for move in moves:
            for k_cache, v_cache in self.layers:
                k_cache[move.dst, :, :move.length] = k_cache[move.src, :, :move.length].clone()
                v_cache[move.dst, :, :move.length] = v_cache[move.src, :, :move.length].clone()
