"""The multilingual and Turbo Chatterbox models, conditioned from arrays like the standard one.

Both classes follow :class:`optimized_chatterbox.OptimizedChatterboxTTS`: a voice's
conditionals come from an array (the library's own steps, returned rather than stored),
every call takes its conditionals and options as arguments and never reads or writes
``self.conds``, and the number of speech tokens is bounded. T3 sampling runs in the model's
decode engine (``chatterbox_worker.engine``), whose recipe for each variant takes the steps of its
library class's ``generate``: the multilingual loop with its alignment checks, Turbo's
``inference_turbo``. Each class here says only how text and options become a
:class:`DecodeJob`; its defaults, checkpoint setting and languages are in :mod:`.registry`.

Voice conversion is not offered here: it always runs on the standard model's S3Gen.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from chatterbox.models.s3gen import S3GEN_SR
from chatterbox.models.s3gen.const import S3GEN_SIL
from chatterbox.mtl_tts import ChatterboxMultilingualTTS
from chatterbox.mtl_tts import punc_norm as multilingual_punc_norm
from chatterbox.tts import Conditionals
from chatterbox.tts_turbo import ChatterboxTurboTTS
from chatterbox.tts_turbo import punc_norm as turbo_punc_norm

from chatterbox_worker.engine import SamplingParams
from chatterbox_worker.models.base import WorkerModelMixin
from chatterbox_worker.models.options import GenerationOptions
from chatterbox_worker.models.registry import MULTILINGUAL, TURBO, load_model
from chatterbox_worker.models.token_generation import DecodeJob, cfg_text_batch, sampling_params, token_cap

logger = logging.getLogger(__name__)

# ChatterboxTurboTTS.generate's fixed steps.
TURBO_CFM_TIMESTEPS = 2
# Turbo appends this much silence so that the vocoder ends the utterance cleanly.
TURBO_SILENCE_TOKENS = 3


class OptimizedMultilingualTTS(WorkerModelMixin, ChatterboxMultilingualTTS):
    """``ChatterboxMultilingualTTS`` whose voice comes from arrays and whose calls share no state.

    Its ``prepare_conditionals`` takes the same steps as the standard model's (6 s for the
    T3 prompt tokens, 10 s for S3Gen), so the mixin's array path serves it unchanged. The
    engine runs the multilingual loop with its alignment checks (the library's analyzer,
    fed one attention head of layers 9, 12 and 13 instead of forward hooks).
    """

    variant = MULTILINGUAL

    def normalize_language(self, language_id: str | None) -> str | None:
        """The library's check and lowercasing of ``language_id``; None means no language tag."""
        if not language_id:
            return None
        language = language_id.lower()
        supported = self.spec.languages
        if language not in supported:
            raise ValueError(f"Unsupported language_id {language_id!r}. "
                             f"Supported languages: {', '.join(supported)}")
        return language

    def _text_tokens(self, text: str, language: str | None) -> torch.Tensor:
        tokens = self.tokenizer.text_to_tokens(multilingual_punc_norm(text), language_id=language)
        return cfg_text_batch(tokens.to(self.device), self.t3.hp)

    def decode_job(self, text: str, conditionals: Conditionals | None, options: GenerationOptions) -> DecodeJob:
        """``ChatterboxMultilingualTTS.generate``'s steps up to T3 sampling."""
        language = self.normalize_language(options.language_id)
        call = self.conditionals_for_call(conditionals or self.default_conditionals(), options.exaggeration)
        # The library's multilingual path skips the cut of control tokens that the standard
        # and Turbo paths make; without it a sampled control token would index past S3Gen's
        # vocabulary. So it takes the standard model's steps.
        return DecodeJob(call.t3, self._text_tokens(text, language), sampling_params(options), call.gen,
                         exact_seed=options.exact_seed)


class OptimizedTurboTTS(WorkerModelMixin, ChatterboxTurboTTS):
    """``ChatterboxTurboTTS`` whose voice comes from arrays and whose calls share no state.

    Its ``prepare_conditionals`` differs from the standard model's only in the prompt
    treatment (longer than 5 s, loudness normalised before resampling) and in its class
    constants (15 s for the T3 prompt tokens, 375 of them), which the mixin reads from the
    class. Turbo has no classifier-free guidance, min_p or exaggeration: those options are
    accepted for a uniform interface and ignored, as the library ignores them. Each window
    is decoded with 2 flow steps, and the last one carries Turbo's trailing silence.
    """

    variant = TURBO

    def prepare_prompt(self, wav_24k: np.ndarray) -> np.ndarray:
        # The library's own normalisation (-27 LUFS), so the conditionals stay identical.
        return self.norm_loudness(wav_24k, S3GEN_SR)

    def _text_tokens(self, text: str) -> torch.Tensor:
        encoded = self.tokenizer(turbo_punc_norm(text), return_tensors="pt", padding=True, truncation=True)
        return encoded.input_ids.to(self.device)

    def _silence(self) -> torch.Tensor:
        return torch.full((TURBO_SILENCE_TOKENS,), S3GEN_SIL, dtype=torch.long, device=self.device)

    def _check_unsupported(self, options: GenerationOptions) -> None:
        self.check_english(options.language_id)
        if options.cfg_weight > 0.0 or options.exaggeration > 0.0 or options.min_p > 0.0:
            # Requests carry the standard model's defaults, so this is routine, not a warning.
            logger.debug("turbo ignores cfg_weight, exaggeration and min_p")

    def decode_job(self, text: str, conditionals: Conditionals | None, options: GenerationOptions) -> DecodeJob:
        """``ChatterboxTurboTTS.generate``'s steps up to T3 sampling."""
        self._check_unsupported(options)
        call = self.conditionals_for_call(conditionals or self.default_conditionals(), options.exaggeration)
        # inference_turbo draws one token, then max_gen_len more: token_cap draws in all.
        params = SamplingParams(max_new_tokens=token_cap(options.max_new_tokens), temperature=options.temperature,
                                top_p=options.top_p, top_k=options.top_k,
                                repetition_penalty=options.repetition_penalty, seed=options.seed)
        return DecodeJob(call.t3, self._text_tokens(text), params, call.gen, tail=self._silence(),
                         n_cfm_timesteps=TURBO_CFM_TIMESTEPS, cut_at_start_token=False,
                         exact_seed=options.exact_seed)


def create_variant_tts(
    variant: str, device: str | None = None, ckpt_dir: str | Path | None = None
) -> OptimizedMultilingualTTS | OptimizedTurboTTS:
    """Load ``variant`` (see :func:`registry.load_model`, which loads any variant)."""
    return load_model(variant, device, ckpt_dir)
