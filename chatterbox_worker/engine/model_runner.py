"""Runs T3 for the engine: the backbone's precision, the KV cache, prefill and the batched decode step.

The runner knows rows and positions, not scheduling: the engine hands it the requests the
scheduler admitted (to prefill, each alone: T3's prefill is compute-bound) and the ones
running (to decode together). A decode step is one forward over every row of every job,
each row at its own position; its logits wait on each request's state for the sampler.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence

import torch

from chatterbox_worker.engine.backbones import Backbone, backbone_for, wide_linear
from chatterbox_worker.engine.config import EngineConfig
from chatterbox_worker.engine.cuda_graphs import DecodeGraph, capture_graphs, graph_for
from chatterbox_worker.engine.kv_cache import KVCache, rows_that_fit
from chatterbox_worker.engine.recipes import Recipe
from chatterbox_worker.engine.requests import DecodeState, EngineRequest
from chatterbox_worker.engine.sampling import TokenHistory
from chatterbox_worker.engine.scheduler import RowMove
from chatterbox_worker.engine.stats import EngineCounters

logger = logging.getLogger(__name__)


def pick_dtype(setting: str, device) -> torch.dtype:
    """The backbone's precision for a T3_DTYPE setting: bfloat16 only on a GPU that has it."""
    if setting == "float32" or device.type != "cuda":
        if setting == "bfloat16":
            logger.warning("T3_DTYPE=bfloat16 needs a GPU; T3 runs in float32 on %s", device)
        return torch.float32
    if torch.cuda.is_bf16_supported():
        return torch.bfloat16
    logger.warning("this GPU has no bfloat16; T3 runs in float32")
    return torch.float32


def cast_backbone_layers(t3, dtype: torch.dtype) -> None:
    # The backbone's layers alone: embeddings, conditioning, rotary tables and heads stay
    # float32 (a whole-model cast breaks the conditioning path).
    tfmr = t3.tfmr
    blocks = tfmr.h if getattr(t3, "is_gpt", False) else tfmr.layers
    for module in [*blocks, getattr(tfmr, "norm", None), getattr(tfmr, "ln_f", None)]:
        if module is not None:
            module.to(dtype)


class _RowLayout:
    """A decode batch's row tensors, rebuilt only when its requests change (else advanced a step).

    A held (paced) request rides along without advancing: its rows decode its last token at
    the same position again, and the runner drops what that step gave it.
    """

    def __init__(self):
        self.key: tuple = ()

    def update(self, requests: Sequence[EngineRequest], device) -> None:
        held = tuple(r.outbox.held for r in requests)
        key = (tuple(r.run_key for r in requests), held)
        if key == self.key:
            if any(held):
                self.positions += self.row_advance
                self.steps += self.job_advance
            else:
                self.positions += 1
                self.steps += 1
            return
        self.key = key
        rows = [r.num_rows for r in requests]
        self.job_advance = torch.tensor([0 if h else 1 for h in held], device=device)
        self.row_advance = torch.tensor([0 if h else 1 for h, r in zip(held, requests) for _ in range(r.num_rows)],
                                        device=device)[:, None]
        self.n_rows = sum(rows)
        self.uniform_rows = rows[0] if len(set(rows)) == 1 else None
        self.rows_per = torch.tensor(rows, device=device)
        self.positions = torch.tensor([r.num_cached for r in requests for _ in range(r.num_rows)],
                                      device=device)[:, None]
        self.steps = torch.tensor([r.steps for r in requests], device=device)
        # The batch row of each request that has an analyzer: its conditional row.
        self.capture_rows = [sum(rows[:i]) for i, r in enumerate(requests) if r.analyzer is not None]

    def spread(self, embeds: torch.Tensor) -> torch.Tensor:
        """One embedding per request -> one per row."""
        if self.uniform_rows == 1:
            return embeds
        if self.uniform_rows is not None:
            return embeds.repeat_interleave(self.uniform_rows, dim=0)
        return embeds.repeat_interleave(self.rows_per, dim=0)


class ModelRunner:
    """One model's T3 over one static KV cache."""

    def __init__(self, t3, recipe: Recipe, config: EngineConfig, counters: EngineCounters):
        self.t3, self.recipe, self.counters = t3, recipe, counters
        self.device = t3.device
        self.dtype = pick_dtype(config.dtype, self.device)
        if self.dtype != torch.float32:
            cast_backbone_layers(t3, self.dtype)
        self.backbone: Backbone = backbone_for(t3, self.dtype, recipe.aligned_heads())
        self.max_len = config.max_context_tokens
        self.backbone.max_positions = self.max_len
        per_job = recipe.max_rows_per_job
        self.max_rows = rows_that_fit(config.max_slots * per_job, per_job, self.max_len,
                                      self.backbone.kv_bytes_per_row_token(), config.kv_memory_fraction, self.device)
        b = self.backbone
        self.kv_cache = KVCache(b.n_layers, self.max_rows, b.n_kv_heads, self.max_len, b.head_dim, self.dtype,
                                self.device)
        self.graphs: dict[int, DecodeGraph] = {}
        self._layout = _RowLayout()

    def allocate(self) -> None:
        if self.kv_cache.allocated:
            return
        self.kv_cache.allocate()
        logger.info("T3 engine (%s): KV cache %d rows x %d tokens, %s, %.0f MB reserved",
                    self.recipe.name, self.max_rows, self.max_len, self.dtype, self.kv_cache.bytes() / 2**20)

    def capture_graphs(self) -> None:
        self.graphs = capture_graphs(self.backbone, self.kv_cache, self.recipe.name)

    def release(self) -> None:
        self.kv_cache.release()

    def reset_layout(self) -> None:
        """Rebuild the row tensors at the next decode (after a step that failed part-way)."""
        self._layout = _RowLayout()

    def move_rows(self, moves: Sequence[RowMove]) -> None:
        if moves:
            self.kv_cache.move_rows(moves)

    def start(self, request: EngineRequest) -> None:
        """A fresh run for an admitted request: its generator, penalised history and token cap."""
        p = request.params
        request.num_cached = request.steps = 0
        request.logit_log = []
        room = self.max_len - request.prompt_length - 1
        cap = min(p.max_new_tokens, max(room, 0))
        if cap < p.max_new_tokens:
            logger.warning("job capped at %d speech tokens by ENGINE_MAX_CONTEXT_TOKENS=%d", cap, self.max_len)
        if request.analyzer is not None and request.retries:
            # A replay starts the analyzer over too.
            start, stop = request.analyzer.text_tokens_slice
            request.analyzer = self.recipe.make_analyzer(start, stop - start)
        request.state = DecodeState(
            generator=torch.Generator(device=self.device).manual_seed(request.seed),
            history=TokenHistory(self.recipe.initial_history(), p.max_new_tokens + 2, self.device),
            cfg=torch.as_tensor(p.cfg_weight, device=self.device, dtype=torch.float32),
            cap=cap)

    def prefill(self, request: EngineRequest) -> None:
        t = request.prompt_length
        if t >= self.max_len:
            raise ValueError(f"the prompt takes {t} positions; ENGINE_MAX_CONTEXT_TOKENS is {self.max_len}")
        self.kv_cache.ensure_clean(t)
        positions = torch.arange(t, device=self.device)[None].expand(request.num_rows, t)
        hidden, attention = self.backbone.forward(
            request.prompt_embeds, positions, self.kv_cache.layers, slice(request.row0, request.row0 + request.num_rows),
            t, prefill=True, capture_rows=[0] if request.analyzer is not None else None)
        request.state.logits = self.t3.speech_head(hidden.float())
        request.state.attention = {key[1]: v for key, v in attention.items()}
        request.num_cached = t

    def decode(self, requests: Sequence[EngineRequest]) -> None:
        """One batched forward: every row of every request, each at its own position."""
        layout = self._layout
        layout.update(requests, self.device)
        n_rows = layout.n_rows
        tokens = torch.tensor([r.state.last_token for r in requests], device=self.device)
        x = layout.spread(self.recipe.token_embeds(tokens, layout.steps))  # [rows, 1, dim]
        capture_rows = layout.capture_rows
        length = max(r.num_cached for r in requests) + 1
        self.kv_cache.ensure_clean(length)
        graph = graph_for(self.graphs, n_rows) if not capture_rows else None
        if graph is not None:
            hidden, attention = graph.replay(x, layout.positions), {}
            self.counters.graph_replays += 1
        else:
            hidden, attention = self.backbone.forward(x, layout.positions, self.kv_cache.layers, slice(0, n_rows),
                                                      length, prefill=False, capture_rows=capture_rows or None)
        logits = self._speech_logits(hidden, n_rows)
        r = 0
        for request, held in zip(requests, layout.key[1]):
            if not held:  # a held request's step is dropped: it decodes this position again later
                request.state.logits = logits[r:r + request.num_rows]
                if attention:
                    request.state.attention = {key[1]: v for key, v in attention.items() if key[0] == r}
                request.num_cached += 1
            r += request.num_rows
        self.counters.note_batch(len(requests) - sum(layout.key[1]))

    def _speech_logits(self, hidden: torch.Tensor, n_rows: int) -> torch.Tensor:
        head = self.t3.speech_head
        if self.backbone.wide_rows(n_rows, 1, hidden.device):
            return wide_linear(hidden.float(), head.weight, head.bias)
        return head(hidden.float())
