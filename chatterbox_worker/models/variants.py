"""The multilingual and Turbo Chatterbox models, conditioned from arrays like the standard one.

Both classes follow :class:`optimized_chatterbox.OptimizedChatterboxTTS`: a voice's
conditionals come from an array (the library's own steps, returned rather than stored),
every call takes its conditionals as an argument and never reads or writes ``self.conds``,
and the number of speech tokens is bounded. T3 sampling runs in the model's decode engine
(``t3_engine``), whose recipe for each variant takes the steps of its library class's
``generate``: the multilingual loop with its alignment checks, Turbo's ``inference_turbo``.

Voice conversion is not offered here: it always runs on the standard model's S3Gen.
"""
from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from chatterbox.models.s3gen import S3GEN_SR
from chatterbox.models.s3gen.const import S3GEN_SIL
from chatterbox.mtl_tts import SUPPORTED_LANGUAGES, ChatterboxMultilingualTTS
from chatterbox.mtl_tts import punc_norm as multilingual_punc_norm
from chatterbox.tts import Conditionals
from chatterbox.tts_turbo import ChatterboxTurboTTS
from chatterbox.tts_turbo import punc_norm as turbo_punc_norm
from chatterbox_worker.settings import get_settings

from optimized_chatterbox import (
    ArrayConditioningMixin,
    SpeechJob,
    cfg_text_batch,
    default_device,
    token_cap,
)
from chatterbox_worker.engine import SamplingParams

logger = logging.getLogger(__name__)

MULTILINGUAL_VARIANT = "multilingual"
TURBO_VARIANT = "turbo"
# Where each variant's checkpoint directory may be given; otherwise the hub is used.
CKPT_DIR_ENV = {
    MULTILINGUAL_VARIANT: "CHATTERBOX_MULTILINGUAL_CKPT_DIR",
    TURBO_VARIANT: "CHATTERBOX_TURBO_CKPT_DIR",
}

# ChatterboxMultilingualTTS.generate's defaults where they differ from the standard model's.
MULTILINGUAL_REPETITION_PENALTY = 2.0
# T3.inference reads cross-attention from this layer for the multilingual alignment checks.
ALIGNMENT_LAYER_IDX = 9  # with layers 12 and 13 (the library's LLAMA_ALIGNED_HEADS)

# ChatterboxTurboTTS.generate's defaults and fixed steps.
TURBO_MIN_PROMPT_SECONDS = 5.0
TURBO_REPETITION_PENALTY = 1.2
TURBO_MIN_P = 0.0
TURBO_TOP_P = 0.95
TURBO_TOP_K = 1000
TURBO_TEMPERATURE = 0.8
TURBO_CFM_TIMESTEPS = 2
# Turbo appends this much silence so that the vocoder ends the utterance cleanly.
TURBO_SILENCE_TOKENS = 3


@contextlib.contextmanager
def alignment_hooks_released(module: torch.nn.Module) -> Iterator[None]:
    """Undo what an ``AlignmentStreamAnalyzer`` leaves on the transformer once the block ends.

    For calls of the library's own multilingual ``T3.inference`` (the engine registers no
    hooks). The library builds a new analyzer on every such call. Each one
    registers forward hooks on attention layers and never removes them, so a long-running
    worker would pile up hooks (and the analyzers they keep alive) with every job, and run
    all of them on every forward pass. It also switches the attention implementation to
    eager with ``output_attentions``; the next analyzer does that again before its first
    forward pass, so restoring the setting changes no result.
    """
    before = {sub: set(sub._forward_hooks) for sub in module.modules()}
    config = getattr(module, "config", None)
    saved_config = None
    if config is not None:
        saved_config = (config._attn_implementation, config.output_attentions)
    try:
        yield
    finally:
        for sub, keys in before.items():
            for key in set(sub._forward_hooks) - keys:
                # What RemovableHandle.remove() deletes.
                del sub._forward_hooks[key]
                getattr(sub, "_forward_hooks_with_kwargs", {}).pop(key, None)
                getattr(sub, "_forward_hooks_always_called", {}).pop(key, None)
        if saved_config is not None:
            # Implementation first: output_attentions=True is refused on a non-eager one.
            config._attn_implementation, config.output_attentions = saved_config


class OptimizedMultilingualTTS(ArrayConditioningMixin, ChatterboxMultilingualTTS):
    """``ChatterboxMultilingualTTS`` whose voice comes from arrays and whose calls share no state.

    Its ``prepare_conditionals`` takes the same steps as the standard model's (6 s for the
    T3 prompt tokens, 10 s for S3Gen), so the mixin's array path serves it unchanged.
    """

    variant = MULTILINGUAL_VARIANT

    @staticmethod
    def normalize_language(language_id: str | None) -> str | None:
        """The library's check and lowercasing of ``language_id``; None means no language tag."""
        if not language_id:
            return None
        language = language_id.lower()
        if language not in SUPPORTED_LANGUAGES:
            raise ValueError(f"Unsupported language_id {language_id!r}. "
                             f"Supported languages: {', '.join(SUPPORTED_LANGUAGES)}")
        return language

    def _text_tokens(self, text: str, language: str | None) -> torch.Tensor:
        tokens = self.tokenizer.text_to_tokens(multilingual_punc_norm(text), language_id=language)
        return cfg_text_batch(tokens.to(self.device), self.t3.hp)

    def speech_job(self, text: str, *, conditionals: Conditionals | None, exaggeration: float, cfg_weight: float,
                   temperature: float, repetition_penalty: float, min_p: float, top_p: float,
                   max_new_tokens: int | None, seed: int | None, language_id: str | None,
                   exact_seed: bool = True) -> SpeechJob:
        language = self.normalize_language(language_id)
        call = self.conditionals_for_call(conditionals or self.default_conditionals(), exaggeration)
        params = SamplingParams(max_new_tokens=token_cap(max_new_tokens), temperature=temperature, top_p=top_p,
                                min_p=min_p, repetition_penalty=repetition_penalty, cfg_weight=cfg_weight, seed=seed)
        # The library's multilingual path skips the cut of control tokens that the standard
        # and Turbo paths make; without it a sampled control token would index past S3Gen's
        # vocabulary. So it takes the standard model's steps.
        return SpeechJob(call.t3, self._text_tokens(text, language), params, call.gen, exact_seed=exact_seed)

    def synthesize(
        self,
        text: str,
        *,
        conditionals: Conditionals | None = None,
        exaggeration: float = 0.5,
        cfg_weight: float = 0.5,
        temperature: float = 0.8,
        repetition_penalty: float = MULTILINGUAL_REPETITION_PENALTY,
        min_p: float = 0.05,
        top_p: float = 1.0,
        max_new_tokens: int | None = None,
        seed: int | None = None,
        exact_seed: bool = True,
        watermark: bool = True,
        language_id: str | None = None,
    ) -> np.ndarray:
        """Text in ``language_id`` to a float32 waveform at ``self.sr``."""
        job = self.speech_job(text, conditionals=conditionals, exaggeration=exaggeration, cfg_weight=cfg_weight,
                              temperature=temperature, repetition_penalty=repetition_penalty, min_p=min_p,
                              top_p=top_p, max_new_tokens=max_new_tokens, seed=seed, language_id=language_id,
                              exact_seed=exact_seed)
        return self._synthesize(job, watermark)

    def stream(
        self,
        text: str,
        *,
        conditionals: Conditionals | None = None,
        chunk_size: int = 50,
        first_chunk_size: int | None = None,
        exaggeration: float = 0.5,
        cfg_weight: float = 0.5,
        temperature: float = 0.8,
        repetition_penalty: float = MULTILINGUAL_REPETITION_PENALTY,
        min_p: float = 0.05,
        top_p: float = 1.0,
        max_new_tokens: int | None = None,
        seed: int | None = None,
        exact_seed: bool = True,
        watermark: bool = True,
        language_id: str | None = None,
    ) -> Iterator[np.ndarray]:
        """Yield audio every ``chunk_size`` speech tokens while T3 is still sampling.

        The engine runs the multilingual loop with its alignment checks (the library's
        analyzer, fed one attention head of layers 9, 12 and 13 instead of forward hooks).
        """
        job = self.speech_job(text, conditionals=conditionals, exaggeration=exaggeration, cfg_weight=cfg_weight,
                              temperature=temperature, repetition_penalty=repetition_penalty, min_p=min_p,
                              top_p=top_p, max_new_tokens=max_new_tokens, seed=seed, language_id=language_id,
                              exact_seed=exact_seed)
        return self._stream(job, chunk_size, watermark, first_chunk_size)


class OptimizedTurboTTS(ArrayConditioningMixin, ChatterboxTurboTTS):
    """``ChatterboxTurboTTS`` whose voice comes from arrays and whose calls share no state.

    Its ``prepare_conditionals`` differs from the standard model's only in the prompt
    treatment (longer than 5 s, loudness normalised before resampling) and in its class
    constants (15 s for the T3 prompt tokens, 375 of them), which the mixin reads from the
    class. Turbo has no classifier-free guidance, min_p or exaggeration: those arguments are
    accepted for a uniform interface and ignored, as the library ignores them.
    """

    variant = TURBO_VARIANT
    min_prompt_seconds = TURBO_MIN_PROMPT_SECONDS

    def prepare_prompt(self, wav_24k: np.ndarray) -> np.ndarray:
        # The library's own normalisation (-27 LUFS), so the conditionals stay identical.
        return self.norm_loudness(wav_24k, S3GEN_SR)

    def _text_tokens(self, text: str) -> torch.Tensor:
        encoded = self.tokenizer(turbo_punc_norm(text), return_tensors="pt", padding=True, truncation=True)
        return encoded.input_ids.to(self.device)

    def _silence(self) -> torch.Tensor:
        return torch.full((TURBO_SILENCE_TOKENS,), S3GEN_SIL, dtype=torch.long, device=self.device)

    @staticmethod
    def _check_unsupported(language_id: str | None, cfg_weight: float, exaggeration: float, min_p: float) -> None:
        if language_id and language_id.lower() != "en":
            raise ValueError(f"the turbo model speaks English only (language_id {language_id!r}); "
                             f"use the multilingual model")
        if cfg_weight > 0.0 or exaggeration > 0.0 or min_p > 0.0:
            # Requests carry the standard model's defaults, so this is routine, not a warning.
            logger.debug("turbo ignores cfg_weight, exaggeration and min_p")

    def speech_job(self, text: str, *, conditionals: Conditionals | None, exaggeration: float, cfg_weight: float,
                   temperature: float, repetition_penalty: float, min_p: float, top_p: float, top_k: int,
                   max_new_tokens: int | None, seed: int | None, language_id: str | None,
                   exact_seed: bool = True) -> SpeechJob:
        self._check_unsupported(language_id, cfg_weight, exaggeration, min_p)
        call = self.conditionals_for_call(conditionals or self.default_conditionals(), exaggeration)
        # inference_turbo draws one token, then max_gen_len more: token_cap draws in all.
        params = SamplingParams(max_new_tokens=token_cap(max_new_tokens), temperature=temperature, top_p=top_p,
                                top_k=top_k, repetition_penalty=repetition_penalty, seed=seed)
        return SpeechJob(call.t3, self._text_tokens(text), params, call.gen, tail=self._silence(),
                         n_cfm_timesteps=TURBO_CFM_TIMESTEPS, cut_at_start_token=False, exact_seed=exact_seed)

    def synthesize(
        self,
        text: str,
        *,
        conditionals: Conditionals | None = None,
        exaggeration: float = 0.0,
        cfg_weight: float = 0.0,
        temperature: float = TURBO_TEMPERATURE,
        repetition_penalty: float = TURBO_REPETITION_PENALTY,
        min_p: float = TURBO_MIN_P,
        top_p: float = TURBO_TOP_P,
        top_k: int = TURBO_TOP_K,
        max_new_tokens: int | None = None,
        seed: int | None = None,
        exact_seed: bool = True,
        watermark: bool = True,
        language_id: str | None = None,
    ) -> np.ndarray:
        """Text to a float32 waveform at ``self.sr``; cfg_weight, exaggeration, min_p ignored."""
        job = self.speech_job(text, conditionals=conditionals, exaggeration=exaggeration, cfg_weight=cfg_weight,
                              temperature=temperature, repetition_penalty=repetition_penalty, min_p=min_p,
                              top_p=top_p, top_k=top_k, max_new_tokens=max_new_tokens, seed=seed,
                              language_id=language_id, exact_seed=exact_seed)
        return self._synthesize(job, watermark)

    def stream(
        self,
        text: str,
        *,
        conditionals: Conditionals | None = None,
        chunk_size: int = 50,
        first_chunk_size: int | None = None,
        exaggeration: float = 0.0,
        cfg_weight: float = 0.0,
        temperature: float = TURBO_TEMPERATURE,
        repetition_penalty: float = TURBO_REPETITION_PENALTY,
        min_p: float = TURBO_MIN_P,
        top_p: float = TURBO_TOP_P,
        top_k: int = TURBO_TOP_K,
        max_new_tokens: int | None = None,
        seed: int | None = None,
        exact_seed: bool = True,
        watermark: bool = True,
        language_id: str | None = None,
    ) -> Iterator[np.ndarray]:
        """Yield audio every ``chunk_size`` speech tokens while T3 is still sampling.

        Each window is decoded with 2 flow steps and earlier tokens as context, and the last
        window carries Turbo's trailing silence.
        """
        job = self.speech_job(text, conditionals=conditionals, exaggeration=exaggeration, cfg_weight=cfg_weight,
                              temperature=temperature, repetition_penalty=repetition_penalty, min_p=min_p,
                              top_p=top_p, top_k=top_k, max_new_tokens=max_new_tokens, seed=seed,
                              language_id=language_id, exact_seed=exact_seed)
        return self._stream(job, chunk_size, watermark, first_chunk_size)


VARIANT_CLASSES: dict[str, type[ArrayConditioningMixin]] = {
    MULTILINGUAL_VARIANT: OptimizedMultilingualTTS,
    TURBO_VARIANT: OptimizedTurboTTS,
}


def create_variant_tts(
    variant: str, device: str | None = None, ckpt_dir: str | Path | None = None
) -> OptimizedMultilingualTTS | OptimizedTurboTTS:
    """Load ``variant``: from ``ckpt_dir`` or the variant's ``CKPT_DIR_ENV`` when set, else the hub."""
    cls = VARIANT_CLASSES.get(variant)
    if cls is None:
        raise ValueError(f"unknown model variant {variant!r}; choose from {', '.join(VARIANT_CLASSES)}")
    device = device or default_device()
    ckpt_dir = ckpt_dir or get_settings().checkpoint_dir(variant)
    if ckpt_dir:
        logger.info("loading Chatterbox %s from %s on %s", variant, ckpt_dir, device)
        return cls.from_local(ckpt_dir, device)
    logger.info("loading Chatterbox %s from the model hub on %s", variant, device)
    return cls.from_pretrained(device)
