"""The T3 backbones run layer by layer over the engine's static KV cache.

The step is written over the model's own weights (projections, rotary tables, norms,
MLP), so no attention or hidden-state outputs are built, except the softmax attention of
the heads a multilingual job's alignment analyzer reads, for its conditional row only.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

# From this many rows up, a CPU decode step multiplies as weight @ x.T (see wide_linear).
WIDE_ROWS = 8

KVLayers = Sequence[tuple[torch.Tensor, torch.Tensor]]
# (row in the batch, buffer index of the head) -> that head's softmax attention.
CapturedAttention = dict[tuple[int, int], torch.Tensor]


class Backbone:
    """A T3 backbone run layer by layer over the engine's static KV cache."""

    def __init__(self, t3, dtype: torch.dtype, aligned_heads: Sequence[tuple[int, int]] = ()):
        self.t3 = t3
        self.tfmr = t3.tfmr
        self.dtype = dtype
        cfg = t3.cfg
        self.n_heads = cfg.num_attention_heads
        self.n_kv_heads = getattr(cfg, "num_key_value_heads", None) or self.n_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.n_heads
        self.n_layers = cfg.num_hidden_layers
        self.hidden = cfg.hidden_size
        self.max_positions = 0  # set by the runner: its cache length
        # Layer index -> [(buffer index, head)] whose attention the alignment analyzer reads.
        self.captured_heads: dict[int, list[tuple[int, int]]] = {}
        for i, (layer, head) in enumerate(aligned_heads):
            self.captured_heads.setdefault(layer, []).append((i, head))

    @staticmethod
    def wide_rows(n: int, t: int, device) -> bool:
        return t == 1 and n >= WIDE_ROWS and device.type == "cpu"

    def kv_bytes_per_row_token(self) -> int:
        return 2 * self.n_layers * self.n_kv_heads * self.head_dim * torch.finfo(self.dtype).bits // 8

    def attend(self, q, k_cache, v_cache, mask, scale):
        return F.scaled_dot_product_attention(q, k_cache, v_cache, attn_mask=mask, scale=scale)

    def forward(self, x, positions, cache: KVLayers, rows: slice, length: int, prefill: bool,
                capture_rows: list[int] | None = None) -> tuple[torch.Tensor, CapturedAttention]:
        """Run every layer. ``x`` [n, T, dim]; ``positions`` [n, T] of each row's tokens.

        Writes the new keys and values into ``cache`` rows ``rows`` at ``positions`` and
        attends over the first ``length`` cached positions (causal within a prefill, masked
        per row in a decode step). Returns (last hidden states [n, dim], the attention of
        the aligned heads for the batch rows ``capture_rows``).
        """
        raise NotImplementedError


def _head_attention(q, k, scale, mask, head):
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


def wide_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
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


def _decode_mask(length: int, positions: torch.Tensor) -> torch.Tensor:
    # [n, 1, 1, length]: each row attends to its own positions so far.
    return (torch.arange(length, device=positions.device)[None, :] <= positions[:, -1:])[:, None, None, :]


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

    def __init__(self, t3, dtype, aligned_heads=()):
        super().__init__(t3, dtype, aligned_heads)
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

    def forward(self, x, positions, cache, rows, length, prefill, capture_rows=None):
        n, t, _ = x.shape
        x = x.to(self.dtype)
        cos_tab, sin_tab = self.rope_tables(max(length, t, self.max_positions), x.device)
        cos, sin = cos_tab[positions].unsqueeze(1), sin_tab[positions].unsqueeze(1)  # [n, 1, t, hd]
        if prefill:
            mask = row_idx = pos = None
        else:
            mask = _decode_mask(length, positions)
            row_idx = torch.arange(rows.start, rows.stop, device=x.device)
            pos = positions[:, 0]
        hd, qs, ks = self.head_dim, self.q_size, self.kv_size
        linear = wide_linear if self.wide_rows(n, t, x.device) else F.linear
        captured: CapturedAttention = {}
        for li, L in enumerate(self.layers):
            qkv = linear(_rms_norm(x, L.ln1, L.eps), L.qkv, L.qkv_bias)
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
            if capture_rows is not None and li in self.captured_heads:
                self._capture(captured, li, q, k if prefill else k_cache, rows, length, mask, capture_rows, L.scaling,
                              prefill)
            x = x + linear(o.transpose(1, 2).reshape(n, t, -1), L.o)
            gate, up = linear(_rms_norm(x, L.ln2, L.eps), L.gate_up).chunk(2, dim=-1)
            x = x + linear(L.act(gate) * up, L.down)
        return _rms_norm(x[:, -1], self.norm.weight, self.norm.variance_epsilon), captured

    def _capture(self, captured: CapturedAttention, layer: int, q, keys, rows: slice, length: int, mask,
                 capture_rows: list[int], scale: float, prefill: bool) -> None:
        """The aligned heads' attention of one layer, for the rows that an analyzer reads."""
        t = q.size(2)
        for buffer_idx, head in self.captured_heads[layer]:
            for r in capture_rows:
                kr = keys[r] if prefill else keys[rows.start + r, :, :length]
                m = torch.ones(t, t, dtype=torch.bool, device=q.device).tril() if prefill else mask[r, 0]
                captured[(r, buffer_idx)] = _head_attention(q[r], kr, scale, m, head)


class GPT2Backbone(Backbone):
    """Turbo's GPT-2 blocks, called as they are, over the static KV cache."""

    def __init__(self, t3, dtype, aligned_heads=()):
        super().__init__(t3, dtype, aligned_heads)
        self.n_kv_heads = self.n_heads

    def forward(self, x, positions, cache, rows, length, prefill, capture_rows=None):
        tfmr = self.tfmr
        n, t, _ = x.shape
        x = (x + tfmr.wpe(positions)).to(self.dtype)
        if prefill:
            mask, row_idx = None, None
        else:
            mask = _decode_mask(length, positions)
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


def backbone_for(t3, dtype: torch.dtype, aligned_heads: Sequence[tuple[int, int]] = ()) -> Backbone:
    cls = GPT2Backbone if getattr(t3, "is_gpt", False) else LlamaBackbone
    return cls(t3, dtype, aligned_heads)
