"""The decode step captured as CUDA graphs, one per batch bucket of rows (GPU only).

A step of n rows replays the graph of the smallest captured bucket that holds n; the rows
past the real ones are padding. Capture failing anywhere leaves the step eager.
"""
from __future__ import annotations

import logging

import torch

from chatterbox_worker.engine.backbones import Backbone
from chatterbox_worker.engine.kv_cache import KVCache

logger = logging.getLogger(__name__)

# Batch buckets (in rows) that CUDA graphs are captured for; a step pads up to the next one.
GRAPH_ROW_BUCKETS = (1, 2, 4, 8, 16, 32)


class DecodeGraph:
    """The decode step over the full cache length for a fixed row count, as a CUDA graph.

    Rows past the real ones are padding: they sit at position 0 of rows no job is using,
    and their outputs are ignored.
    """

    def __init__(self, backbone: Backbone, kv_cache: KVCache, rows: int):
        device = kv_cache.device
        if device.type != "cuda":
            raise RuntimeError("CUDA graphs need a CUDA device")
        self.backbone, self.kv_cache = backbone, kv_cache
        self.rows = rows
        self.x = torch.zeros(rows, 1, backbone.hidden, dtype=torch.float32, device=device)
        self.positions = torch.zeros(rows, 1, dtype=torch.long, device=device)
        stream = torch.cuda.Stream(device)
        stream.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(stream), torch.inference_mode():
            for _ in range(2):  # warm-up outside the graph, as capture requires
                self._step()
        torch.cuda.current_stream(device).wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph), torch.inference_mode():
            self.hidden = self._step()

    def _step(self) -> torch.Tensor:
        cache = self.kv_cache
        hidden, _ = self.backbone.forward(self.x, self.positions, cache.layers, slice(0, self.rows), cache.max_len,
                                          prefill=False)
        return hidden

    def replay(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        n = x.size(0)
        self.x[:n].copy_(x)
        self.x[n:].zero_()
        self.positions[:n].copy_(positions)
        self.positions[n:].zero_()
        self.graph.replay()
        return self.hidden[:n]


def capture_graphs(backbone: Backbone, kv_cache: KVCache, name: str) -> dict[int, DecodeGraph]:
    """A graph per row bucket up to the cache's rows; none at all on any failure (one warning)."""
    graphs: dict[int, DecodeGraph] = {}
    try:
        for bucket in GRAPH_ROW_BUCKETS:
            if bucket > kv_cache.rows:
                break
            graphs[bucket] = DecodeGraph(backbone, kv_cache, bucket)
        logger.info("T3 engine (%s): CUDA graphs captured for %s rows", name, sorted(graphs))
    except Exception as exc:
        logger.warning("CUDA graph capture failed (%s); the T3 decode step runs eager", exc)
        graphs.clear()
    return graphs


def graph_for(graphs: dict[int, DecodeGraph], n_rows: int) -> DecodeGraph | None:
    for bucket in GRAPH_ROW_BUCKETS:
        if bucket >= n_rows and bucket in graphs:
            return graphs[bucket]
    return None
