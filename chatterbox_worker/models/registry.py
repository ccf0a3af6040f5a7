"""The model variants the worker serves, defined once: :data:`VARIANTS`.

Each :class:`VariantSpec` says what a variant is: the class that loads it, the decode
engine's recipe for its T3, its generation defaults, the setting that names its local
checkpoint, the shortest voice prompt it accepts and the languages it speaks. The job
contract (``contract.limits.MODEL_VARIANTS``), the settings and the model classes all read
this table.

Importing this module imports neither torch nor chatterbox: the settings and the unit tests
read it. The model class is named as ``"module:Class"`` and imported only by
:meth:`VariantSpec.model_class` (or :func:`load_model`).
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chatterbox_worker.models.options import GenerationOptions

STANDARD = "standard"
MULTILINGUAL = "multilingual"
TURBO = "turbo"

ENGLISH_ONLY = ("en",)
# chatterbox.mtl_tts.SUPPORTED_LANGUAGES in the library's order, copied so that reading it
# needs no torch; an integration test checks that the two agree.
MULTILINGUAL_LANGUAGES = (
    "ar", "da", "de", "el", "en", "es", "fi", "fr", "he", "hi", "it", "ja",
    "ko", "ms", "nl", "no", "pl", "pt", "ru", "sv", "sw", "tr", "zh",
)

# ChatterboxTurboTTS.prepare_conditionals refuses prompts of 5 s or less.
TURBO_MIN_PROMPT_SECONDS = 5.0

# Chunk bounds: long text is spoken chunk by chunk, each within the range where the model
# is known to speak well.
# Upstream reports quality degrading past about 350 characters per call
# (resemble-ai/chatterbox #424); 300 keeps a sentence-packed chunk under that.
CHUNK_CHARS = 300
# The library's own cap, hard-coded in ChatterboxTTS.generate: 1000 tokens, about 40 s at
# 25 tokens/s, twice what 300 characters take at a normal pace (about 20 s).
CHUNK_TOKENS = 1000
# Turbo becomes unstable past 25-30 s of audio (resemble-ai/chatterbox #543). 25 s is
# 625 tokens at 25 tokens/s; 200 characters take about 13-15 s at a normal pace, so a
# slow speaker still ends well inside the cap.
TURBO_CHUNK_CHARS = 200
TURBO_CHUNK_TOKENS = 625


@dataclass(frozen=True)
class VariantSpec:
    """One model variant, as every layer of the worker knows it."""

    name: str
    # The worker's model class for the variant, as "module:Class" (imported on demand).
    model_class_path: str
    # The decode engine's recipe for this variant's T3 (a key of the engine's RECIPES).
    recipe: str
    # What ``synthesize`` and ``stream`` use for options a caller does not set.
    defaults: GenerationOptions
    # The Settings field (its upper-case name is the environment variable) that names a
    # local checkpoint directory; unset: the model hub.
    checkpoint_setting: str
    # A voice prompt must be longer than this (seconds).
    min_prompt_seconds: float
    # Language ids the variant speaks; the first is the one it speaks without a tag.
    languages: tuple[str, ...]
    # Longest text chunk spoken in one call, and the speech-token cap of one call (the
    # reasons are at CHUNK_CHARS and TURBO_CHUNK_CHARS above).
    max_chunk_chars: int = CHUNK_CHARS
    max_chunk_tokens: int = CHUNK_TOKENS

    @property
    def checkpoint_env(self) -> str:
        """The environment variable that names the variant's checkpoint directory."""
        return self.checkpoint_setting.upper()

    def model_class(self) -> type:
        """The variant's model class (imports torch and chatterbox)."""
        module, _, name = self.model_class_path.partition(":")
        return getattr(importlib.import_module(module), name)

    def options(self, **changes: Any) -> GenerationOptions:
        """This variant's default options with some fields changed."""
        return self.defaults.but(**changes)


VARIANTS: dict[str, VariantSpec] = {
    STANDARD: VariantSpec(
        name=STANDARD,
        model_class_path="optimized_chatterbox:OptimizedChatterboxTTS",
        recipe=STANDARD,
        defaults=GenerationOptions(),
        checkpoint_setting="chatterbox_ckpt_dir",
        min_prompt_seconds=0.0,
        languages=ENGLISH_ONLY,
    ),
    MULTILINGUAL: VariantSpec(
        name=MULTILINGUAL,
        model_class_path="chatterbox_worker.models.variants:OptimizedMultilingualTTS",
        recipe=MULTILINGUAL,
        # ChatterboxMultilingualTTS.generate's defaults where they differ from the standard's.
        defaults=GenerationOptions(repetition_penalty=2.0),
        checkpoint_setting="chatterbox_multilingual_ckpt_dir",
        min_prompt_seconds=0.0,
        languages=MULTILINGUAL_LANGUAGES,
    ),
    TURBO: VariantSpec(
        name=TURBO,
        model_class_path="chatterbox_worker.models.variants:OptimizedTurboTTS",
        recipe=TURBO,
        # ChatterboxTurboTTS.generate's defaults; it has no guidance, min_p or exaggeration.
        defaults=GenerationOptions(exaggeration=0.0, cfg_weight=0.0, temperature=0.8, repetition_penalty=1.2,
                                   min_p=0.0, top_p=0.95, top_k=1000),
        checkpoint_setting="chatterbox_turbo_ckpt_dir",
        min_prompt_seconds=TURBO_MIN_PROMPT_SECONDS,
        languages=ENGLISH_ONLY,
        max_chunk_chars=TURBO_CHUNK_CHARS,
        max_chunk_tokens=TURBO_CHUNK_TOKENS,
    ),
}

VARIANT_NAMES: tuple[str, ...] = tuple(VARIANTS)


def variant_spec(name: str) -> VariantSpec:
    """The variant called ``name``; a ValueError lists the known ones."""
    spec = VARIANTS.get(name)
    if spec is None:
        raise ValueError(f"unknown model variant {name!r}; choose from {', '.join(VARIANTS)}")
    return spec


def load_model(variant: str, device: str | None = None, ckpt_dir: str | Path | None = None) -> Any:
    """Load ``variant`` on ``device`` (default: CHATTERBOX_DEVICE, else cuda when available,
    else cpu): from ``ckpt_dir`` or the variant's checkpoint setting when set, else the hub."""
    return variant_spec(variant).model_class().load(device, ckpt_dir)
