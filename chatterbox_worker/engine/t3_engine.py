"""One T3 decode engine per loaded model: every job's speech tokens come from one loop.

The library samples one job at a time: each token reruns the Hugging Face backbone over a
growing dynamic cache, with attention and hidden-state outputs on, under a process-global
RNG. Here each model owns a :class:`T3Engine` whose thread steps every in-flight job together:

* a job is prefilled alone (its conditioning, text and start-of-speech embeddings), then
  joins the shared decode loop; jobs join and leave between steps (continuous batching);
* one decode step is one batched forward over all rows of all jobs (a job with classifier-
  free guidance has two rows, conditional and unconditional), each row at its own position,
  over a preallocated static KV cache (rows x max length), attention masked per row;
* the backbone step is written over the model's own weights (projections, rotary tables,
  norms, MLP), so no attention or hidden-state outputs are built, except one head of each
  layer that the multilingual alignment analyzer reads (9, 12, 13), for its job's
  conditional row only;
* each job draws from its own ``torch.Generator`` seeded from the job's seed (a random one
  when the job has none), so a seeded job draws the same tokens alone or beside others, and
  nothing touches the global RNG. Seeded like ``torch.manual_seed(seed)``, a job's generator
  replays the library's own draws;
* the variants differ only by a :class:`Recipe`: prefill embeddings, the embedding of a
  sampled token, the order of logits processors, the stop rule.

Callers iterate a :class:`TokenStream` on their own thread, so S3Gen decoding never stalls
the decode loop. On a GPU the decode step can run in bf16 and be replayed from CUDA graphs
captured per batch bucket; both fall back to eager float32 on failure.
"""
from __future__ import annotations

import itertools
import logging
import math
import queue
import secrets
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from chatterbox.models.t3.inference.alignment_stream_analyzer import (
    LLAMA_ALIGNED_HEADS,
    AlignmentStreamAnalyzer,
)

logger = logging.getLogger(__name__)

# What T3.inference passes to the multilingual analyzer; the heads it reads are the
# library's LLAMA_ALIGNED_HEADS (layers 12, 13 and 9).
ALIGNMENT_LAYER_IDX = 9
# Batch buckets (in rows) that CUDA graphs are captured for; a step pads up to the next one.
GRAPH_ROW_BUCKETS = (1, 2, 4, 8, 16, 32)
# At most this share of free GPU memory goes to the KV cache (after the model is loaded).
DEFAULT_KV_MEMORY_FRACTION = 0.5
# A job is retried once after running out of memory; a second failure is its error.
MAX_OOM_RETRIES = 1
# From this many rows up, a CPU decode step multiplies as weight @ x.T (see _wide_linear).
WIDE_ROWS = 8
# On CPU the KV cache is zeroed this many positions at a time, as jobs first reach them.
CLEAN_CHUNK_TOKENS = 64
_DONE = object()
_SERIALS = itertools.count()


# -- sampling -------------------------------------------------------------------------------


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


# -- variant recipes ------------------------------------------------------------------------


class Recipe:
    """What differs between the variants. The base is Chatterbox's Llama T3 (standard)."""

    name = "standard"
    uses_cfg = True
    # Which of the job's draws may end it on the stop token (Turbo ignores its first).
    first_stoppable_step = 0

    def __init__(self, t3):
        self.t3 = t3
        self.hp = t3.hp

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

    def token_embeds(self, tokens: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
        """Embeddings [n, 1, dim] of each job's last token; ``steps`` counts its draws so far."""
        return (self.t3.speech_emb(tokens) + self.t3.speech_pos_emb.emb(steps)).unsqueeze(1)

    def process(self, logits: torch.Tensor, batch: "_SamplingBatch") -> torch.Tensor:
        """T3.inference's processors: repetition, temperature, min_p, top_p."""
        logits = repetition_penalty(logits, batch.ids, batch.penalty)
        logits = logits / batch.temperature
        if batch.any_min_p:
            logits = min_p_filter(logits, batch.min_p)
        if batch.any_top_p:
            logits = top_p_filter(logits, batch.one_minus_top_p)
        return logits

    def make_analyzer(self, len_cond: int, n_text: int):
        return None


class MultilingualRecipe(Recipe):
    name = "multilingual"

    def make_analyzer(self, len_cond: int, n_text: int):
        return EngineAlignmentAnalyzer(self.t3.tfmr, None, text_tokens_slice=(len_cond, len_cond + n_text),
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

    def token_embeds(self, tokens: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
        return self.t3.speech_emb(tokens).unsqueeze(1)

    def process(self, logits: torch.Tensor, batch: "_SamplingBatch") -> torch.Tensor:
        # inference_turbo's order: temperature, top-k, top-p, then repetition.
        logits = torch.where(batch.apply_temperature, logits / batch.temperature, logits)
        for k in batch.top_ks:
            rows = batch.top_k_rows[k]
            logits[rows] = top_k_filter(logits[rows], k)
        if batch.any_top_p:
            logits = torch.where(batch.top_p_on, top_p_filter(logits, batch.one_minus_top_p), logits)
        return repetition_penalty(logits, batch.ids, batch.penalty)


RECIPES = {"standard": Recipe, "multilingual": MultilingualRecipe, "turbo": TurboRecipe}


class EngineAlignmentAnalyzer(AlignmentStreamAnalyzer):
    """The library's analyzer, fed by the engine instead of forward hooks on the backbone."""

    def _add_attention_spy(self, tfmr, buffer_idx, layer_idx, head_idx):
        pass


# -- the backbone step ----------------------------------------------------------------------


class Backbone:
    """A T3 backbone run layer by layer over the engine's static KV cache."""

    def __init__(self, t3, dtype: torch.dtype):
        self.t3 = t3
        self.tfmr = t3.tfmr
        self.dtype = dtype
        cfg = t3.cfg
        self.n_heads = cfg.num_attention_heads
        self.n_kv_heads = getattr(cfg, "num_key_value_heads", None) or self.n_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.n_heads
        self.n_layers = cfg.num_hidden_layers
        self.hidden = cfg.hidden_size
        self.max_positions = 0  # set by the engine: its cache length
        # Layer index -> [(buffer index, head)] that the alignment analyzer reads.
        self.spy: dict[int, list[tuple[int, int]]] = {}
        for i, (layer, head) in enumerate(LLAMA_ALIGNED_HEADS):
            self.spy.setdefault(layer, []).append((i, head))

    @staticmethod
    def wide_rows(n: int, t: int, device) -> bool:
        return t == 1 and n >= WIDE_ROWS and device.type == "cpu"

    def kv_bytes_per_row_token(self) -> int:
        return 2 * self.n_layers * self.n_kv_heads * self.head_dim * torch.finfo(self.dtype).bits // 8

    def attend(self, q, k_cache, v_cache, mask, scale):
        return F.scaled_dot_product_attention(q, k_cache, v_cache, attn_mask=mask, scale=scale)

    def forward(self, x, positions, cache, rows: slice, length: int, prefill: bool, spy_rows=None):
        """Run every layer. ``x`` [n, T, dim]; ``positions`` [n, T] of each row's tokens.

        Writes the new keys and values into ``cache`` rows ``rows`` at ``positions`` and
        attends over the first ``length`` cached positions (causal within a prefill, masked
        per row in a decode step). Returns (last hidden states [n, dim], spied attention).
        """
        raise NotImplementedError


def _spy_probs(q, k, scale, mask, head):
    # The softmax attention of one head (q [T, d], k [L, d]), as eager attention computes it.
    scores = (q[head] @ k[head].transpose(-1, -2)) * scale
    scores = scores.masked_fill(~mask, -math.inf) if mask is not None else scores
    return torch.softmax(scores.float(), dim=-1)


def _fuse_linears(*linears: torch.nn.Linear) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One weight for several projections of the same input, shared with the modules.

    The modules' weights become row slices of the fused tensor (same values, no copy kept),
    so the library's own forward is unchanged and no memory is duplicated.
    """
    weight = torch.cat([lin.weight.detach() for lin in linears])
    biases = [lin.bias for lin in linears]
    bias = torch.cat([b.detach() for b in biases]) if all(b is not None for b in biases) else None
    start = 0
    for lin in linears:
        n = lin.weight.size(0)
        lin.weight = torch.nn.Parameter(weight[start:start + n], requires_grad=False)
        if bias is not None:
            lin.bias = torch.nn.Parameter(bias[start:start + n], requires_grad=False)
        start += n
    return weight, bias


def _wide_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear`` for a decode step of many rows on CPU, as ``weight @ x.T``.

    CPU BLAS multiplies a few rows by a large weight far faster in this orientation from
    about 8 rows up (measured: 16 rows 1.2 ms instead of 2.4 ms for a 1024x8192 weight),
    and its result for one row does not depend on how many rows there are. It rounds a
    little differently from ``F.linear`` (about 1e-6 relative), so it is used only from
    WIDE_ROWS up; a job's solo run (2 rows) keeps ``F.linear``.
    """
    shape = x.shape
    out = (weight @ x.reshape(-1, shape[-1]).t()).t()
    if bias is not None:
        out = out + bias
    return out.contiguous().view(*shape[:-1], weight.size(0))


def _rms_norm(x, weight, eps):
    # LlamaRMSNorm's arithmetic, without a module call.
    dtype = x.dtype
    x32 = x.to(torch.float32)
    x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return weight * x32.to(dtype)


@dataclass
class _LlamaLayer:
    qkv: torch.Tensor
    qkv_bias: torch.Tensor | None
    o: torch.Tensor
    gate_up: torch.Tensor
    down: torch.Tensor
    ln1: torch.Tensor
    ln2: torch.Tensor
    eps: float
    act: Any
    scaling: float


class LlamaBackbone(Backbone):
    """The Llama decoder (standard and multilingual T3) as plain tensor operations.

    Per layer: q, k and v come from one projection (as do the MLP's gate and up), the
    rotary tables are computed once for every position, and no module is called, so the
    decode step is a few dozen kernel launches with little Python around them.
    """

    def __init__(self, t3, dtype):
        super().__init__(t3, dtype)
        self.layers: list[_LlamaLayer] = []
        for layer in self.tfmr.layers:
            attn, mlp = layer.self_attn, layer.mlp
            qkv, qkv_bias = _fuse_linears(attn.q_proj, attn.k_proj, attn.v_proj)
            gate_up, _ = _fuse_linears(mlp.gate_proj, mlp.up_proj)
            self.layers.append(_LlamaLayer(
                qkv=qkv, qkv_bias=qkv_bias, o=attn.o_proj.weight, gate_up=gate_up, down=mlp.down_proj.weight,
                ln1=layer.input_layernorm.weight, ln2=layer.post_attention_layernorm.weight,
                eps=layer.input_layernorm.variance_epsilon, act=mlp.act_fn, scaling=attn.scaling))
        self.q_size = self.n_heads * self.head_dim
        self.kv_size = self.n_kv_heads * self.head_dim
        self.norm = self.tfmr.norm
        self._rope: tuple[torch.Tensor, torch.Tensor] | None = None
        half = self.head_dim // 2
        rotate = torch.zeros(self.head_dim, self.head_dim)
        rotate[half:, :half] = -torch.eye(half)  # out[:half] = -x[half:]
        rotate[:half, half:] = torch.eye(half)  # out[half:] = x[:half]
        self.rotate = rotate.to(device=t3.device, dtype=dtype)

    def rope_tables(self, length: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin [length, head_dim] of the model's rotary embedding, every position."""
        if self._rope is None or self._rope[0].size(0) < length:
            positions = torch.arange(length, device=device)[None]
            probe = torch.zeros(1, 1, self.head_dim, dtype=self.dtype, device=device)
            cos, sin = self.tfmr.rotary_emb(probe, positions)
            self._rope = (cos[0], sin[0])
        return self._rope

    def forward(self, x, positions, cache, rows, length, prefill, spy_rows=None):
        n, t, _ = x.shape
        x = x.to(self.dtype)
        cos_tab, sin_tab = self.rope_tables(max(length, t, self.max_positions), x.device)
        cos, sin = cos_tab[positions].unsqueeze(1), sin_tab[positions].unsqueeze(1)  # [n, 1, t, hd]
        if prefill:
            mask = row_idx = pos = None
        else:
            mask = (torch.arange(length, device=x.device)[None, :] <= positions[:, -1:])[:, None, None, :]
            row_idx = torch.arange(rows.start, rows.stop, device=x.device)
            pos = positions[:, 0]
        hd, qs, ks = self.head_dim, self.q_size, self.kv_size
        linear = _wide_linear if self.wide_rows(n, t, x.device) else F.linear
        spied: dict = {}
        for li, L in enumerate(self.layers):
            h = _rms_norm(x, L.ln1, L.eps)
            qkv = linear(h, L.qkv, L.qkv_bias)
            # q and k rotate together: [n, t, heads_q + heads_kv, hd] -> [n, heads, t, hd]
            qk = qkv[..., :qs + ks].reshape(n, t, -1, hd).transpose(1, 2)
            # rotate_half as one matmul with a signed permutation (each output is one input,
            # negated or not: exact).
            qk = qk * cos + (qk @ self.rotate) * sin
            q, k = qk[:, : qs // hd], qk[:, qs // hd:]
            v = qkv[..., qs + ks:].reshape(n, t, -1, hd).transpose(1, 2)
            k_cache, v_cache = cache[li]
            if prefill:
                k_cache[rows, :, :t] = k
                v_cache[rows, :, :t] = v
                o = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=L.scaling)
            else:
                k_cache[row_idx, :, pos] = k[:, :, 0]
                v_cache[row_idx, :, pos] = v[:, :, 0]
                o = self.attend(q, k_cache[rows, :, :length], v_cache[rows, :, :length], mask, L.scaling)
            if spy_rows is not None and li in self.spy:
                for buffer_idx, head in self.spy[li]:
                    for r in spy_rows:
                        kr = k[r] if prefill else k_cache[rows.start + r, :, :length]
                        m = torch.ones(t, t, dtype=torch.bool, device=x.device).tril() if prefill else mask[r, 0]
                        spied[(r, buffer_idx)] = _spy_probs(q[r], kr, L.scaling, m, head)
            x = x + linear(o.transpose(1, 2).reshape(n, t, -1), L.o)
            gate, up = linear(_rms_norm(x, L.ln2, L.eps), L.gate_up).chunk(2, dim=-1)
            x = x + linear(L.act(gate) * up, L.down)
        last = x[:, -1]
        return _rms_norm(last, self.norm.weight, self.norm.variance_epsilon), spied


class GPT2Backbone(Backbone):
    def __init__(self, t3, dtype):
        super().__init__(t3, dtype)
        self.n_kv_heads = self.n_heads

    def forward(self, x, positions, cache, rows, length, prefill, spy_rows=None):
        tfmr = self.tfmr
        n, t, _ = x.shape
        x = (x + tfmr.wpe(positions)).to(self.dtype)
        if prefill:
            mask, row_idx = None, None
        else:
            mask = (torch.arange(length, device=x.device)[None, :] <= positions[:, -1:])[:, None, None, :]
            row_idx = torch.arange(rows.start, rows.stop, device=x.device)
        scale = 1.0 / math.sqrt(self.head_dim)
        for li, block in enumerate(tfmr.h):
            attn = block.attn
            q, k, v = attn.c_attn(block.ln_1(x)).split(self.hidden, dim=2)
            q = q.view(n, t, -1, self.head_dim).transpose(1, 2)
            k = k.view(n, t, -1, self.head_dim).transpose(1, 2)
            v = v.view(n, t, -1, self.head_dim).transpose(1, 2)
            k_cache, v_cache = cache[li]
            if prefill:
                k_cache[rows, :, :t] = k
                v_cache[rows, :, :t] = v
                o = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale)
            else:
                k_cache[row_idx, :, positions[:, 0]] = k[:, :, 0]
                v_cache[row_idx, :, positions[:, 0]] = v[:, :, 0]
                o = self.attend(q, k_cache[rows, :, :length], v_cache[rows, :, :length], mask, scale)
            x = x + attn.c_proj(o.transpose(1, 2).reshape(n, t, -1))
            x = x + block.mlp(block.ln_2(x))
        return tfmr.ln_f(x[:, -1]), {}


def _rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


# -- jobs -----------------------------------------------------------------------------------


@dataclass(eq=False)  # compared by identity
class _Job:
    embeds: torch.Tensor  # [rows, T, dim] prefill embeddings
    params: SamplingParams
    seed: int
    analyzer: Any = None
    out: queue.SimpleQueue = field(default_factory=queue.SimpleQueue)
    cancelled: bool = False
    retries: int = 0
    delivered: int = 0  # tokens handed to the caller (a retry replays, then goes on)
    # The caller is woken every ``flush_every`` tokens (None: once, at the end); a streaming
    # caller asks for its window size, a basic-mode caller needs no wake-up per token.
    flush_every: int | None = 1
    buffer: list[int] = field(default_factory=list)
    # Decode state, reset by _reset.
    rows: int = 0
    row0: int = 0
    length: int = 0  # cached positions
    steps: int = 0  # tokens drawn
    last_token: int = -1
    logits: torch.Tensor | None = None  # [rows, V] of the last forward
    spied: dict | None = None
    # The ids the repetition penalty applies to: history[:n_history]; the rest repeats one.
    history: torch.Tensor | None = None
    n_history: int = 0
    generator: torch.Generator | None = None
    cap: int = 0
    # Teacher forcing (equivalence tests): these tokens are taken instead of drawn, and
    # each step's logits (after CFG, before any processor) are kept.
    cfg: torch.Tensor | None = None
    serial: int = field(default_factory=lambda: next(_SERIALS))
    forced: list[int] | None = None
    logit_log: list[torch.Tensor] = field(default_factory=list)


class TokenStream:
    """A job's speech tokens (ints) as the engine draws them; iterate on the caller's thread.

    Closing it early (or breaking out of the loop) cancels the job. ``retries`` counts the
    times the engine restarted it after running out of memory.
    """

    def __init__(self, engine: "T3Engine", job: _Job):
        self._engine = engine
        self._job = job

    @property
    def retries(self) -> int:
        return self._job.retries

    @property
    def seed(self) -> int:
        return self._job.seed

    @property
    def logits(self) -> list[torch.Tensor]:
        """A teacher-forced job's logits per step (after CFG, before processors)."""
        return self._job.logit_log

    def __iter__(self) -> Iterator[int]:
        try:
            while True:
                item = self._job.out.get()
                if item is _DONE:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield from item
        finally:
            self.close()

    def close(self) -> None:
        if not self._job.cancelled:
            self._job.cancelled = True
            self._engine._wake()


@dataclass
class _SamplingBatch:
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
    top_ks: list
    top_k_rows: dict

    @classmethod
    def of(cls, jobs: list[_Job], device) -> "_SamplingBatch":
        def col(values, dtype=torch.float32):
            return torch.tensor(values, dtype=dtype, device=device)[:, None]

        ps = [j.params for j in jobs]
        top_k_rows: dict[int, list[int]] = {}
        for i, p in enumerate(ps):
            if p.top_k > 0:
                top_k_rows.setdefault(p.top_k, []).append(i)
        return cls(
            ids=torch.stack([j.history[: max(j.n_history for j in jobs)] for j in jobs]),
            penalty=col([float(p.repetition_penalty) for p in ps]),
            temperature=col([p.temperature if p.temperature > 0 else 1.0 for p in ps]),
            apply_temperature=col([p.temperature > 0 and p.temperature != 1.0 for p in ps], torch.bool),
            min_p=col([p.min_p for p in ps]),
            any_min_p=any(p.min_p > 0 for p in ps),
            one_minus_top_p=col([1 - p.top_p for p in ps]),
            top_p_on=col([p.top_p < 1.0 for p in ps], torch.bool),
            any_top_p=any(p.top_p < 1.0 for p in ps),
            top_ks=list(top_k_rows),
            top_k_rows=top_k_rows,
        )


# -- the engine -----------------------------------------------------------------------------


@dataclass
class EngineConfig:
    max_slots: int = 8
    max_context_tokens: int = 2048
    dtype: str = "auto"  # auto | float32 | bfloat16
    cuda_graphs: str = "auto"  # auto | off
    kv_memory_fraction: float = DEFAULT_KV_MEMORY_FRACTION

    @classmethod
    def from_settings(cls, on_gpu: bool = False) -> "EngineConfig":
        from chatterbox_worker.settings import get_settings

        s = get_settings()
        # As many slots as jobs the worker takes at once: more would only reserve memory.
        slots = s.engine_max_slots or s.concurrent_jobs(on_gpu)
        return cls(max_slots=slots, max_context_tokens=s.engine_max_context_tokens,
                   dtype=s.t3_dtype, cuda_graphs=s.cuda_graphs, kv_memory_fraction=s.engine_kv_memory_fraction)


def _is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.OutOfMemoryError)


class T3Engine:
    """Owns T3 sampling for one model: one thread, one static KV cache, every job batched."""

    def __init__(self, t3, variant: str, config: EngineConfig | None = None):
        self.t3 = t3
        self.config = config or EngineConfig()
        self.recipe: Recipe = RECIPES[variant](t3)
        self.device = t3.device
        self.dtype = self._pick_dtype(self.config.dtype)
        if self.dtype != torch.float32:
            # The backbone's layers alone: embeddings, conditioning, rotary tables and heads
            # stay float32 (a whole-model cast breaks the conditioning path).
            tfmr = t3.tfmr
            blocks = tfmr.h if getattr(t3, "is_gpt", False) else tfmr.layers
            for module in [*blocks, getattr(tfmr, "norm", None), getattr(tfmr, "ln_f", None)]:
                if module is not None:
                    module.to(self.dtype)
        backbone_cls = GPT2Backbone if getattr(t3, "is_gpt", False) else LlamaBackbone
        self.backbone: Backbone = backbone_cls(t3, self.dtype)
        self.rows_per_job = 2 if self.recipe.uses_cfg else 1
        self.max_len = self.config.max_context_tokens
        self.backbone.max_positions = self.max_len
        self.max_jobs = self.config.max_slots
        self.max_rows = self._size_rows()
        self.cache: list[tuple[torch.Tensor, torch.Tensor]] | None = None
        self.graphs: dict[int, Any] = {}
        self._lock = threading.Condition()
        self._decode_key: tuple = ()
        self._sampling_key: tuple = ()
        self._pending: list[_Job] = []
        self._active: list[_Job] = []
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._stats = {"jobs": 0, "tokens": 0, "steps": 0, "oom_retries": 0, "oom_failures": 0,
                       "max_batch_jobs": 0, "graph_replays": 0}

    # -- set-up ------------------------------------------------------------------------

    def _pick_dtype(self, setting: str) -> torch.dtype:
        if setting == "float32" or self.device.type != "cuda":
            if setting == "bfloat16":
                logger.warning("T3_DTYPE=bfloat16 needs a GPU; T3 runs in float32 on %s", self.device)
            return torch.float32
        if torch.cuda.is_bf16_supported():
            return torch.bfloat16
        logger.warning("this GPU has no bfloat16; T3 runs in float32")
        return torch.float32

    def _size_rows(self) -> int:
        rows = self.config.max_slots * self.rows_per_job
        if self.device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(self.device)
            per_row = self.backbone.kv_bytes_per_row_token() * self.max_len
            fit = int(free * self.config.kv_memory_fraction // per_row)
            if fit < rows:
                logger.warning("KV cache: %d rows of %d tokens fit in %.0f%% of free GPU memory (asked %d)",
                               fit, self.max_len, 100 * self.config.kv_memory_fraction, rows)
                rows = max(self.rows_per_job, fit)
        self.max_jobs = max(1, rows // self.rows_per_job)
        return rows

    def _allocate(self) -> None:
        if self.cache is not None:
            return
        b = self.backbone
        shape = (self.max_rows, b.n_kv_heads, self.max_len, b.head_dim)
        # A decode step reads every batch row up to the longest row, and masked positions
        # must hold finite values (0 * NaN is NaN), so positions are zeroed before first use.
        # On a GPU all at once (the graphs read the full length); on CPU a chunk at a time,
        # so that only the positions jobs reach are ever committed to memory.
        make = torch.zeros if self.device.type == "cuda" else torch.empty
        self.cache = [(make(shape, dtype=self.dtype, device=self.device),
                       make(shape, dtype=self.dtype, device=self.device)) for _ in range(b.n_layers)]
        self._clean_len = self.max_len if self.device.type == "cuda" else 0
        logger.info("T3 engine (%s): KV cache %d rows x %d tokens, %s, %.0f MB reserved",
                    self.recipe.name, self.max_rows, self.max_len, self.dtype,
                    self.max_rows * self.max_len * b.kv_bytes_per_row_token() / 2**20)

    def start(self) -> None:
        """Allocate the cache, capture CUDA graphs (GPU, CUDA_GRAPHS=auto) and start the loop."""
        with self._lock:
            if self._thread is not None:
                return
            self._allocate()
            if self.device.type == "cuda" and self.config.cuda_graphs == "auto":
                self._capture_graphs()
            self._thread = threading.Thread(target=self._run, name=f"t3-engine-{self.recipe.name}", daemon=True)
            self._thread.start()

    def stats(self) -> dict:
        with self._lock:
            return {**self._stats, "active_jobs": len(self._active), "pending_jobs": len(self._pending),
                    "max_jobs": self.max_jobs, "max_rows": self.max_rows, "dtype": str(self.dtype).split(".")[-1],
                    "cuda_graphs": sorted(self.graphs)}

    # -- the caller's side -------------------------------------------------------------

    @torch.inference_mode()
    def submit(self, t3_cond, text_tokens: torch.Tensor, params: SamplingParams,
               forced_tokens: list[int] | None = None, flush_every: int | None = 1) -> TokenStream:
        """Queue a job; its prefill embeddings are built here, on the caller's thread.

        The stream hands tokens over in groups of ``flush_every`` (None: all at the end).
        """
        embeds, len_cond = self.recipe.prefill_embeds(t3_cond, text_tokens, params)
        if embeds.size(1) >= self.max_len - 1:
            raise ValueError(f"the prompt and text take {embeds.size(1)} positions; the T3 engine holds "
                             f"{self.max_len} (ENGINE_MAX_CONTEXT_TOKENS): shorten the text")
        n_text = torch.atleast_2d(text_tokens).size(-1)
        analyzer = self.recipe.make_analyzer(len_cond, n_text)
        seed = params.seed if params.seed is not None else secrets.randbits(63)
        job = _Job(embeds=embeds.detach(), params=params, seed=seed, analyzer=analyzer,
                   forced=list(forced_tokens) if forced_tokens is not None else None, flush_every=flush_every)
        self.start()
        with self._lock:
            self._pending.append(job)
            self._stats["jobs"] += 1
            self._lock.notify()
        return TokenStream(self, job)

    def _wake(self) -> None:
        with self._lock:
            self._lock.notify()

    # -- the loop ----------------------------------------------------------------------

    def stop(self) -> None:
        """End the loop once the jobs in flight are done, and free the KV cache.

        The loop's thread holds the model's T3; a model that is let go must stop its engine
        or its weights stay in memory for the life of the process.
        """
        with self._lock:
            thread, self._stopping = self._thread, True
            self._lock.notify()
        if thread is not None:
            thread.join()
        with self._lock:
            self._thread, self._stopping, self.cache = None, False, None

    def _run(self) -> None:
        torch.set_grad_enabled(False)
        while True:
            with self._lock:
                while not self._pending and not self._active:
                    if self._stopping:
                        return
                    self._lock.wait()
            try:
                with torch.inference_mode():
                    self._iteration()
            except Exception as exc:  # noqa: BLE001 - the loop must outlive any one failure
                try:
                    self._recover(exc)
                except Exception:  # noqa: BLE001
                    logger.exception("T3 engine recovery failed; failing the jobs in flight")
                    for job in self._active:
                        job.out.put(exc)
                    self._active = []

    def _iteration(self) -> None:
        self._drop_cancelled()
        self._admit()
        ready = [j for j in self._active if j.logits is not None]
        if ready:
            self._sample(ready)
        self._drop_finished()
        stepping = [j for j in self._active if j.logits is None]
        if stepping:
            self._decode(stepping)

    def _admit(self) -> None:
        """Prefill waiting jobs while rows are free (each alone: T3 prefill is compute-bound)."""
        while True:
            with self._lock:
                used = sum(j.rows for j in self._active)
                if not self._pending or len(self._active) >= self.max_jobs:
                    return
                job = self._pending[0]
                rows = job.embeds.size(0)
                if used + rows > self.max_rows:
                    return
                self._pending.pop(0)
            if job.cancelled:
                job.out.put(_DONE)
                continue
            self._reset(job, row0=used)
            self._active.append(job)
            try:
                self._prefill(job)
            except Exception as exc:  # noqa: BLE001 - one job's failure is that job's alone
                if _is_oom(exc):
                    raise
                logger.exception("T3 prefill failed; failing that job")
                self._active.remove(job)
                job.out.put(exc)

    def _reset(self, job: _Job, row0: int) -> None:
        self._decode_key = self._sampling_key = ()  # a retried job restarts under the same serial
        job.rows = job.embeds.size(0)
        job.row0 = row0
        job.length = 0
        job.steps = 0
        job.last_token = -1
        job.logits = None
        job.logit_log = []
        job.generator = torch.Generator(device=self.device).manual_seed(job.seed)
        job.history = torch.full((job.params.max_new_tokens + 2,), self.recipe.initial_history(),
                                 dtype=torch.long, device=self.device)
        job.n_history = 1
        job.cfg = torch.as_tensor(job.params.cfg_weight, device=self.device, dtype=torch.float32)
        room = self.max_len - job.embeds.size(1) - 1
        job.cap = min(job.params.max_new_tokens, max(room, 0))
        if job.cap < job.params.max_new_tokens:
            logger.warning("job capped at %d speech tokens by ENGINE_MAX_CONTEXT_TOKENS=%d",
                           job.cap, self.max_len)
        if job.analyzer is not None and job.retries:
            p = job.analyzer
            job.analyzer = self.recipe.make_analyzer(p.text_tokens_slice[0],
                                                     p.text_tokens_slice[1] - p.text_tokens_slice[0])

    def _ensure_clean(self, length: int) -> None:
        """Zero cache positions up to ``length`` (and a chunk beyond) before anything uses them."""
        if length <= self._clean_len:
            return
        new = min(self.max_len, max(length, self._clean_len + CLEAN_CHUNK_TOKENS))
        for k_cache, v_cache in self.cache:
            k_cache[:, :, self._clean_len:new].zero_()
            v_cache[:, :, self._clean_len:new].zero_()
        self._clean_len = new

    def _prefill(self, job: _Job) -> None:
        t = job.embeds.size(1)
        if t >= self.max_len:
            raise ValueError(f"the prompt takes {t} positions; ENGINE_MAX_CONTEXT_TOKENS is {self.max_len}")
        self._ensure_clean(t)
        positions = torch.arange(t, device=self.device)[None].expand(job.rows, t)
        hidden, spied = self.backbone.forward(
            job.embeds, positions, self.cache, slice(job.row0, job.row0 + job.rows), t, prefill=True,
            spy_rows=[0] if job.analyzer is not None else None)
        job.logits = self.t3.speech_head(hidden.float())
        job.spied = {key[1]: v for key, v in spied.items()}
        job.length = t

    def _decode_inputs(self, jobs: list[_Job]):
        """Row layout tensors of a batch, rebuilt only when its jobs change (else advanced)."""
        key = tuple(j.serial for j in jobs)
        if key != self._decode_key:
            self._decode_key = key
            rows = [j.rows for j in jobs]
            self._uniform_rows = rows[0] if len(set(rows)) == 1 else None
            self._rows_per = torch.tensor(rows, device=self.device)
            self._positions = torch.tensor([j.length for j in jobs for _ in range(j.rows)],
                                           device=self.device)[:, None]
            self._steps = torch.tensor([j.steps for j in jobs], device=self.device)
            self._spy_rows = [sum(rows[:i]) for i, j in enumerate(jobs) if j.analyzer is not None]
        else:
            self._positions += 1
            self._steps += 1
        return self._positions, self._steps

    def _decode(self, jobs: list[_Job]) -> None:
        """One batched forward: every row of every job, each at its own position."""
        n_rows = sum(j.rows for j in jobs)
        positions, steps = self._decode_inputs(jobs)
        tokens = torch.tensor([j.last_token for j in jobs], device=self.device)
        embeds = self.recipe.token_embeds(tokens, steps)  # [jobs, 1, dim]
        if self._uniform_rows == 1:
            x = embeds
        elif self._uniform_rows is not None:
            x = embeds.repeat_interleave(self._uniform_rows, dim=0)
        else:
            x = embeds.repeat_interleave(self._rows_per, dim=0)
        spy_rows = self._spy_rows
        length = max(j.length for j in jobs) + 1
        self._ensure_clean(length)
        graph = self._graph_for(n_rows) if not spy_rows else None
        if graph is not None:
            hidden = graph.replay(x, positions)
            spied = {}
            self._stats["graph_replays"] += 1
        else:
            hidden, spied = self.backbone.forward(x, positions, self.cache, slice(0, n_rows), length,
                                                  prefill=False, spy_rows=spy_rows or None)
        head = self.t3.speech_head
        if self.backbone.wide_rows(n_rows, 1, hidden.device):
            logits = _wide_linear(hidden.float(), head.weight, head.bias)
        else:
            logits = head(hidden.float())
        r = 0
        for job in jobs:
            job.logits = logits[r:r + job.rows]
            if spied:
                job.spied = {key[1]: v for key, v in spied.items() if key[0] == r}
            job.length += 1
            r += job.rows
        self._stats["steps"] += 1
        self._stats["max_batch_jobs"] = max(self._stats["max_batch_jobs"], len(jobs))

    def _sample(self, jobs: list[_Job]) -> None:
        rows = []
        for job in jobs:
            lg = job.logits
            if job.rows == 2:
                cond, uncond = lg[0:1], lg[1:2]
                lg = cond + job.cfg * (cond - uncond)
            if job.forced is not None:
                job.logit_log.append(lg[0].clone())
            if job.analyzer is not None:
                job.analyzer.last_aligned_attns = [job.spied[i] for i in range(len(LLAMA_ALIGNED_HEADS))]
                last = job.last_token if job.steps else self.recipe.hp.start_speech_token
                lg = job.analyzer.step(lg, next_token=last)
            rows.append(lg)
        logits = self.recipe.process(torch.cat(rows) if len(rows) > 1 else rows[0], self._sampling_batch(jobs))
        probs = torch.softmax(logits, dim=-1)
        for i, job in enumerate(jobs):
            job.logits = None
            if self.recipe.name == "turbo" and job.steps > 0 and torch.all(logits[i] == -math.inf):
                self._finish(job)
                continue
            token = int(torch.multinomial(probs[i:i + 1], num_samples=1, generator=job.generator))
            if job.forced is not None:
                if job.steps >= len(job.forced):
                    self._finish(job)
                    continue
                token = job.forced[job.steps]
            self._deliver(job, token)

    def _sampling_batch(self, jobs: list[_Job]) -> "_SamplingBatch":
        """The jobs' sampling settings as row tensors, rebuilt only when the jobs change."""
        key = tuple(j.serial for j in jobs)
        if key != self._sampling_key:
            self._sampling_key = key
            self._batch = _SamplingBatch.of(jobs, self.device)
        elif len(jobs) == 1:
            self._batch.ids = jobs[0].history[: jobs[0].n_history][None]
        else:
            k = max(j.n_history for j in jobs)
            self._batch.ids = torch.stack([j.history[:k] for j in jobs])
        return self._batch

    def _deliver(self, job: _Job, token: int) -> None:
        hp = self.recipe.hp
        job.steps += 1
        if self.recipe.name == "turbo" and job.steps == 1:
            # inference_turbo penalises its start token for the first draw only.
            job.history.fill_(token)
        else:
            job.history[job.n_history] = token
            job.n_history += 1
        job.last_token = token
        if token == hp.stop_speech_token and job.steps > self.recipe.first_stoppable_step:
            self._finish(job)
            return
        if job.steps > job.delivered:
            job.buffer.append(token)
            job.delivered = job.steps
            self._stats["tokens"] += 1
            if job.flush_every is not None and len(job.buffer) >= job.flush_every:
                job.out.put(job.buffer)
                job.buffer = []
        if job.steps >= job.cap:
            self._finish(job)

    def _finish(self, job: _Job) -> None:
        job.cancelled = True  # leaves the batch at the next compaction
        if job.buffer:
            job.out.put(job.buffer)
            job.buffer = []
        job.out.put(_DONE)

    def _drop_cancelled(self) -> None:
        with self._lock:
            dropped = [j for j in self._pending if j.cancelled]
            self._pending = [j for j in self._pending if not j.cancelled]
        for job in dropped:
            job.out.put(_DONE)
        self._drop_finished()

    def _drop_finished(self) -> None:
        """Remove finished jobs and move the later jobs' rows down over the gap."""
        if not any(j.cancelled for j in self._active):
            return
        kept, row = [], 0
        for job in self._active:
            if job.cancelled:
                continue
            if job.row0 != row:
                src = slice(job.row0, job.row0 + job.rows)
                dst = slice(row, row + job.rows)
                for k_cache, v_cache in self.cache:
                    k_cache[dst, :, :job.length] = k_cache[src, :, :job.length].clone()
                    v_cache[dst, :, :job.length] = v_cache[src, :, :job.length].clone()
                job.row0 = row
            kept.append(job)
            row += job.rows
        with self._lock:
            self._active = kept

    def _recover(self, exc: BaseException) -> None:
        """Out of memory: fewer slots, the jobs in flight restart once; anything else fails them."""
        jobs = self._active
        self._active = []
        if not _is_oom(exc):
            logger.exception("T3 engine step failed; failing %d job(s)", len(jobs))
            for job in jobs:
                job.out.put(exc)
            return
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        with self._lock:
            self.max_jobs = max(1, min(self.max_jobs, len(jobs)) // 2)
            self._stats["oom_retries"] += 1
            retry = [j for j in jobs if j.retries < MAX_OOM_RETRIES and not j.cancelled]
            for job in retry:
                job.retries += 1
            self._pending[:0] = retry
        logger.warning("T3 engine out of memory with %d job(s); now at most %d at once, retrying",
                       len(jobs), self.max_jobs)
        for job in jobs:
            if job not in retry:
                self._stats["oom_failures"] += 1
                job.out.put(exc)

    # -- CUDA graphs -------------------------------------------------------------------

    def _graph_for(self, n_rows: int):
        for bucket in GRAPH_ROW_BUCKETS:
            if bucket >= n_rows and bucket in self.graphs:
                return self.graphs[bucket]
        return None

    def _capture_graphs(self) -> None:
        """Capture the decode step per row bucket; on any failure run eager (one warning)."""
        try:
            for bucket in GRAPH_ROW_BUCKETS:
                if bucket > self.max_rows:
                    break
                self.graphs[bucket] = _DecodeGraph(self, bucket)
            logger.info("T3 engine (%s): CUDA graphs captured for %s rows", self.recipe.name, sorted(self.graphs))
        except Exception as exc:  # noqa: BLE001 - graphs are an optimisation only
            logger.warning("CUDA graph capture failed (%s); the T3 decode step runs eager", exc)
            self.graphs.clear()


class _DecodeGraph:
    """The decode step over the full cache length for a fixed row count, as a CUDA graph.

    Rows past the real ones are padding: they sit at position 0 of rows no job is using,
    and their outputs are ignored.
    """

    def __init__(self, engine: T3Engine, rows: int):
        if engine.device.type != "cuda":
            raise RuntimeError("CUDA graphs need a CUDA device")
        self.engine = engine
        self.rows = rows
        dim = engine.backbone.hidden
        self.x = torch.zeros(rows, 1, dim, dtype=torch.float32, device=engine.device)
        self.positions = torch.zeros(rows, 1, dtype=torch.long, device=engine.device)
        stream = torch.cuda.Stream(engine.device)
        stream.wait_stream(torch.cuda.current_stream(engine.device))
        with torch.cuda.stream(stream), torch.inference_mode():
            for _ in range(2):  # warm-up outside the graph, as capture requires
                self._step()
        torch.cuda.current_stream(engine.device).wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph), torch.inference_mode():
            self.hidden = self._step()

    def _step(self):
        e = self.engine
        hidden, _ = e.backbone.forward(self.x, self.positions, e.cache, slice(0, self.rows), e.max_len,
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


# -- a tiny T3 (benchmarks and tests) -------------------------------------------------------

TINY_CONFIG_NAME = "engine_tiny_{variant}_{layers}x{width}"


def build_tiny_t3(variant: str = "standard", *, layers: int = 2, width: int = 256, seed: int = 0):
    """A T3 with a tiny random backbone (``layers`` x ``width``) and the real vocabularies.

    With so little arithmetic per token, framework overhead dominates a decode step, as it
    does on a GPU. The multilingual analyzer reads layers 9, 12 and 13, so that variant
    needs at least 14 layers.
    """
    from chatterbox.models.t3 import T3
    from chatterbox.models.t3.llama_configs import LLAMA_CONFIGS
    from chatterbox.models.t3.modules.t3_config import T3Config

    gpt = variant == "turbo"
    # The multilingual analyzer reads heads up to 15: keep 16 heads, narrower ones.
    heads = 16 if variant == "multilingual" else max(1, width // 64)
    name = TINY_CONFIG_NAME.format(variant=variant, layers=layers, width=width)
    base = LLAMA_CONFIGS["GPT2_medium" if gpt else "Llama_520M"]
    if gpt:
        config = {**base, "n_embd": width, "hidden_size": width, "n_layer": layers, "n_head": heads}
    else:
        config = {**base, "hidden_size": width, "intermediate_size": 4 * width, "num_hidden_layers": layers,
                  "num_attention_heads": heads, "num_key_value_heads": heads, "head_dim": width // heads}
    LLAMA_CONFIGS[name] = config
    if variant == "multilingual":
        hp = T3Config.multilingual()
    elif gpt:
        hp = T3Config(text_tokens_dict_size=50276)
        hp.speech_tokens_dict_size = 6563
        hp.input_pos_emb = None
        hp.speech_cond_prompt_len = 375
        hp.use_perceiver_resampler = False
        hp.emotion_adv = False
    else:
        hp = T3Config.english_only()
    hp.llama_config_name = name
    # The library's perceiver resampler is built for width 1024 only.
    hp.use_perceiver_resampler = hp.use_perceiver_resampler and width == 1024
    torch.manual_seed(seed)
    return T3(hp).eval()


def tiny_conditionals(t3, seed: int = 0):
    """Random conditionals of the right shapes for :func:`build_tiny_t3`."""
    from chatterbox.models.t3.modules.cond_enc import T3Cond

    g = torch.Generator().manual_seed(seed)
    hp = t3.hp
    prompt = torch.randint(0, 6561, (1, hp.speech_cond_prompt_len), generator=g)
    return T3Cond(speaker_emb=torch.randn(1, hp.speaker_embed_size, generator=g),
                  cond_prompt_speech_tokens=prompt,
                  emotion_adv=0.5 * torch.ones(1, 1, 1))


def tiny_text_tokens(t3, n: int = 12, seed: int = 0) -> torch.Tensor:
    """Text ids framed by the start and stop tokens, one row (the engine adds the CFG row)."""
    g = torch.Generator().manual_seed(seed)
    hp = t3.hp
    body = torch.randint(1, min(hp.text_tokens_dict_size, 700), (1, n), generator=g)
    body[body == hp.start_text_token] = 1
    return torch.cat([torch.tensor([[hp.start_text_token]]), body, torch.tensor([[hp.stop_text_token]])], dim=1)
