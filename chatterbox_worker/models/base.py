"""What every worker model adds to its Chatterbox library class: :class:`WorkerModelMixin`.

It combines the pieces under this package: conditionals from arrays
(:mod:`.array_conditionals`), S3Gen decodes and windows (:mod:`.s3gen_windows`) and
generation through the T3 engine (:mod:`.token_generation`); and it ties a class to its
registry entry (:mod:`.registry`), which says how the class is loaded.
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch

from chatterbox_worker.models.array_conditionals import ArrayConditionalsMixin
from chatterbox_worker.models.registry import VariantSpec, variant_spec
from chatterbox_worker.models.s3gen_windows import S3GenDecodingMixin
from chatterbox_worker.models.token_generation import EngineGenerationMixin
from chatterbox_worker.settings import get_settings

logger = logging.getLogger(__name__)


class WorkerModelMixin(ArrayConditionalsMixin, S3GenDecodingMixin, EngineGenerationMixin):
    """Mixed in before a Chatterbox library class; a subclass names its ``variant``."""

    variant: str
    # The directory the weights came from (the hub's snapshot too): the conditionals
    # cache keys its disk tier by a fingerprint of these files.
    checkpoint_dir: Path | None = None

    @property
    def spec(self) -> VariantSpec:
        """This variant's registry entry."""
        return variant_spec(self.variant)

    @property
    def min_prompt_seconds(self) -> float:
        """Voice prompts must be longer than this (the library refuses shorter ones)."""
        return self.spec.min_prompt_seconds

    @staticmethod
    def default_device() -> str:
        return get_settings().chatterbox_device or ("cuda" if torch.cuda.is_available() else "cpu")

    @classmethod
    def load(cls, device: str | None = None, ckpt_dir: str | Path | None = None):
        """Load the variant: from ``ckpt_dir`` or its checkpoint setting when set, else the hub."""
        device = device or cls.default_device()
        ckpt_dir = ckpt_dir or get_settings().checkpoint_dir(cls.variant)
        if ckpt_dir:
            logger.info("loading Chatterbox %s from %s on %s", cls.variant, ckpt_dir, device)
            return cls.from_local(ckpt_dir, device)
        logger.info("loading Chatterbox %s from the model hub on %s", cls.variant, device)
        return cls.from_pretrained(device)

    @classmethod
    def from_local(cls, ckpt_dir, device, *args, **kwargs):
        # from_pretrained ends in from_local on the downloaded snapshot, so both paths land here.
        model = super().from_local(ckpt_dir, device, *args, **kwargs)
        model.checkpoint_dir = Path(ckpt_dir)
        model.warm_up()  # at start-up, not in the first job: the KV cache, on a GPU the graphs
        return model

    def check_english(self, language_id: str | None) -> None:
        """Refuse a language tag the variant does not speak (the English-only variants)."""
        if language_id and language_id.lower() not in self.spec.languages:
            raise ValueError(f"the {self.variant} model speaks English only (language_id {language_id!r}); "
                             f"use the multilingual model")

    def release_memory(self) -> None:
        """Give cached allocator blocks back after an out-of-memory error."""
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
