"""The decode engine's settings, as plain values (the caller reads them from wherever it keeps them)."""
from __future__ import annotations

from dataclasses import dataclass

# At most this share of free GPU memory goes to the KV cache (after the model is loaded).
DEFAULT_KV_MEMORY_FRACTION = 0.5


@dataclass
class EngineConfig:
    """How many jobs share a decode step, how long a row of the KV cache is, and the GPU options."""

    max_slots: int = 8
    max_context_tokens: int = 2048
    dtype: str = "auto"  # auto | float32 | bfloat16
    cuda_graphs: str = "auto"  # auto | off
    kv_memory_fraction: float = DEFAULT_KV_MEMORY_FRACTION
