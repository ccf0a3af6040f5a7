"""What the worker needs of a speech model: the real ``OptimizedChatterboxTTS`` variants and
the unit tier's stub model both provide it. No torch here."""
from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from chatterbox_worker.engine.stats import EngineStats
from chatterbox_worker.models.options import GenerationOptions
from chatterbox_worker.voices.sources import VoicePrompt


class SpeechModel(Protocol):
    sr: int
    variant: str

    def prepare_conditionals_from_array(self, samples: np.ndarray, sample_rate: int,
                                        exaggeration: float = 0.5) -> Any: ...
    def default_conditionals(self) -> Any: ...
    def synthesize(self, text: str, *, conditionals: Any, options: GenerationOptions) -> np.ndarray: ...
    def stream(self, text: str, *, conditionals: Any, options: GenerationOptions, chunk_size: int,
               first_chunk_size: int | None = None) -> Iterator[np.ndarray]: ...
    def convert_voice(self, samples: np.ndarray, sample_rate: int, target: Any, **kwargs: Any) -> np.ndarray: ...
    def release_memory(self) -> None: ...


@dataclass(frozen=True)
class ModelStats:
    """One reading of an engine-backed model's decode counters (``engine_stats()``): its T3
    engine's, None until the engine has started, and its S3Gen lane's."""

    engine: EngineStats | None
    s3gen: dict[str, int] = field(default_factory=dict)  # calls, windows, shared_calls, ...

    def as_dict(self) -> dict[str, Any]:
        """The flat form benchmarks write to JSON: the engine's fields, and ``s3gen``."""
        return {**(self.engine.as_dict() if self.engine is not None else {}), "s3gen": dict(self.s3gen)}


# (model, prompt, exaggeration, use_cache) -> (conditionals, cache source); the legacy
# handler plugs its temp-file path in here.
Conditioner = Callable[[SpeechModel, VoicePrompt, float, bool], tuple[Any, str]]
