"""What serves jobs: the loaded models, the voice library, the conditionals cache, usage counts."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from chatterbox_worker.conditionals.cache import ConditionalsCache
from chatterbox_worker.contract.errors import JobError
from chatterbox_worker.contract.limits import MODEL_SAMPLE_RATE
from chatterbox_worker.models.interface import Conditioner, SpeechModel
from chatterbox_worker.voices.usage import VoiceUsage
from optimized_voice_library import OptimizedVoiceLibrary


@dataclass
class Worker:
    models: dict[str, SpeechModel]
    library: OptimizedVoiceLibrary
    cache: ConditionalsCache | None = None
    # None: conditionals from arrays through the cache; the legacy handler sets its file path.
    conditioner: Conditioner | None = None
    usage: VoiceUsage | None = None

    def model_for(self, variant: str) -> SpeechModel:
        model = self.models.get(variant)
        if model is None:
            loaded = ", ".join(sorted(self.models)) or "none"
            raise JobError("model", f"model {variant!r} is not loaded on this worker (loaded: {loaded}); "
                                    f"add it to CHATTERBOX_MODELS, e.g. CHATTERBOX_MODELS=standard,{variant}")
        return model

    @property
    def library_sample_rate(self) -> int:
        """Saved voices are stored at the models' own rate."""
        return next(iter(self.models.values())).sr if self.models else MODEL_SAMPLE_RATE

    def stats(self) -> dict[str, Any]:
        stats = dict(self.library.get_stats())
        stats["conditionals_cache"] = self.cache.stats() if self.cache else None
        stats["models_loaded"] = sorted(self.models)
        return stats
