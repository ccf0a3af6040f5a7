"""The T3 decode engine: one loop per model that batches every job's speech-token sampling.

Modules, from the loop down:

* ``core``: :class:`T3Engine`, whose step reads the schedule, runs the model, samples, delivers;
* ``scheduler``: admission under the row and job bounds, out-of-memory recovery (no torch);
* ``requests``: a job's status and rows as the engine tracks it (no torch); ``streams``: the
  caller's :class:`TokenStream`; ``stats``: the typed :class:`EngineStats`;
* ``model_runner``: prefill and the batched decode step; ``backbones``: the T3 backbones
  over the static ``kv_cache``; ``cuda_graphs``: the decode step replayed on a GPU;
* ``sampler`` and ``sampling``: :class:`SamplingParams`, the logits processors, the draw;
* ``recipes``: what differs between the variants; ``config``: :class:`EngineConfig`.

The names below load their modules on first use, so that importing the torch-free parts
(the scheduler, the requests) does not import torch.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the same names, for type checkers
    from chatterbox_worker.engine.config import EngineConfig
    from chatterbox_worker.engine.core import T3Engine
    from chatterbox_worker.engine.sampling import SamplingParams
    from chatterbox_worker.engine.stats import EngineStats
    from chatterbox_worker.engine.streams import TokenStream

__all__ = ["EngineConfig", "EngineStats", "SamplingParams", "T3Engine", "TokenStream"]

_EXPORTS = {
    "T3Engine": "core",
    "EngineConfig": "config",
    "EngineStats": "stats",
    "SamplingParams": "sampling",
    "TokenStream": "streams",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value
