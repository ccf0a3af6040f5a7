"""What the worker needs of a speech model: the real ``OptimizedChatterboxTTS`` variants and
the unit tier's stub model both provide it. No torch here."""
from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Protocol

import numpy as np

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


# (model, prompt, exaggeration, use_cache) -> (conditionals, cache source); the legacy
# handler plugs its temp-file path in here.
Conditioner = Callable[[SpeechModel, VoicePrompt, float, bool], tuple[Any, str]]
