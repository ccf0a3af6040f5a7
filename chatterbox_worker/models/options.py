"""What one generation call may set, as one typed value: :class:`GenerationOptions`.

Every model variant's ``synthesize`` and ``stream`` take these options; each variant's
defaults (``registry.VARIANTS[...].defaults``) are an instance of it. This module imports
no torch, so the speech pipeline and the unit tests build options freely.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass


@dataclass(frozen=True)
class GenerationOptions:
    """Sampling settings, seed and output treatment of one generation.

    The field defaults are the standard model's (``ChatterboxTTS.generate``); the other
    variants' defaults differ where their library classes' ``generate`` does.
    """

    # T3's emotion input; Turbo has none and ignores it.
    exaggeration: float = 0.5
    # Classifier-free guidance weight; 0 turns guidance off. Turbo ignores it.
    cfg_weight: float = 0.5
    temperature: float = 0.8
    repetition_penalty: float = 1.2
    # 0 turns min-p filtering off; Turbo ignores it.
    min_p: float = 0.05
    # 1.0 turns nucleus filtering off.
    top_p: float = 1.0
    # 0 turns top-k filtering off (only Turbo's library loop uses it).
    top_k: int = 0
    # Speech-token cap of the call; None: the CHATTERBOX_MAX_NEW_TOKENS setting.
    max_new_tokens: int | None = None
    # None: a fresh seed per window of S3Gen noise and per T3 job.
    seed: int | None = None
    # False when the seed was drawn for the job rather than asked for: its S3Gen windows
    # may then share calls with other jobs' (model.run_s3gen).
    exact_seed: bool = True
    # The multilingual model's language tag; None: no tag. The others speak English only.
    language_id: str | None = None
    # Mark the audio with the library's Perth watermark.
    watermark: bool = True

    def __post_init__(self) -> None:
        if self.max_new_tokens is not None and self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {self.max_new_tokens}")
        if self.top_k < 0:
            raise ValueError(f"top_k must not be negative, got {self.top_k}")

    def but(self, **changes) -> GenerationOptions:
        """These options with some fields changed (``dataclasses.replace``)."""
        return dataclasses.replace(self, **changes)
