"""Chatterbox TTS (the standard model) conditioned straight from numpy arrays.

:class:`OptimizedChatterboxTTS` is ``ChatterboxTTS`` with the worker's model pieces mixed in
(:class:`chatterbox_worker.models.base.WorkerModelMixin`): a voice's conditionals come from
an array and are returned rather than stored, every call takes its conditionals and its
:class:`GenerationOptions` as arguments, and speech tokens come from the model's T3 decode
engine, batched with other calls. S3Gen's noise comes from generators of each decode's own,
so no part of generation draws from torch's global RNG. It also converts voices (S3Gen
alone), which the other variants leave to it.

The names other modules import from here stay here: the class, :func:`create_optimized_tts`
and :class:`ConditionalsCodec`.
"""
from __future__ import annotations

from pathlib import Path

import librosa
import numpy as np
import torch
from chatterbox.models.s3gen import S3GEN_SR
from chatterbox.models.s3tokenizer import S3_SR
from chatterbox.tts import ChatterboxTTS, Conditionals, punc_norm

from chatterbox_worker.audio.codec import resample
from chatterbox_worker.models.base import WorkerModelMixin
from chatterbox_worker.models.conditionals_codec import ConditionalsCodec
from chatterbox_worker.models.options import GenerationOptions
from chatterbox_worker.models.registry import STANDARD
from chatterbox_worker.models.token_generation import DecodeJob, cfg_text_batch, sampling_params

__all__ = ["ConditionalsCodec", "GenerationOptions", "OptimizedChatterboxTTS", "create_optimized_tts"]

MODEL_VARIANT = STANDARD


class OptimizedChatterboxTTS(WorkerModelMixin, ChatterboxTTS):
    """``ChatterboxTTS`` whose voice comes from arrays and whose calls share no voice state."""

    variant = MODEL_VARIANT

    # -- generation --------------------------------------------------------------------

    def _text_tokens(self, text: str) -> torch.Tensor:
        return cfg_text_batch(self.tokenizer.text_to_tokens(punc_norm(text)).to(self.device), self.t3.hp)

    def decode_job(self, text: str, conditionals: Conditionals | None, options: GenerationOptions) -> DecodeJob:
        """``ChatterboxTTS.generate``'s steps up to T3 sampling, on per-call conditionals."""
        self.check_english(options.language_id)
        call = self.conditionals_for_call(conditionals or self.default_conditionals(), options.exaggeration)
        return DecodeJob(call.t3, self._text_tokens(text), sampling_params(options), call.gen,
                         exact_seed=options.exact_seed)

    def generate(
        self,
        text,
        repetition_penalty=1.2,
        min_p=0.05,
        top_p=1.0,
        audio_prompt_path=None,
        exaggeration=0.5,
        cfg_weight=0.5,
        temperature=0.8,
        *,
        audio_prompt_array: np.ndarray | None = None,
        audio_prompt_sr: int = S3GEN_SR,
        conditionals: Conditionals | None = None,
        max_new_tokens: int | None = None,
        seed: int | None = None,
    ) -> torch.Tensor:
        """The library's ``generate`` signature, plus arrays or ready conditionals.

        Returns a ``(1, N)`` tensor like the library. Never touches ``self.conds``.
        """
        if conditionals is None:
            if audio_prompt_array is not None:
                conditionals = self.prepare_conditionals_from_array(
                    audio_prompt_array, audio_prompt_sr, exaggeration
                )
            elif audio_prompt_path:
                wav, _ = librosa.load(audio_prompt_path, sr=S3GEN_SR)
                conditionals = self.prepare_conditionals_from_array(wav, S3GEN_SR, exaggeration)
        options = self.options(exaggeration=exaggeration, cfg_weight=cfg_weight, temperature=temperature,
                               repetition_penalty=repetition_penalty, min_p=min_p, top_p=top_p,
                               max_new_tokens=max_new_tokens, seed=seed)
        wav = self.synthesize(text, conditionals=conditionals, options=options)
        return torch.from_numpy(wav).unsqueeze(0)

    # -- voice conversion --------------------------------------------------------------

    def convert_voice(
        self,
        samples: np.ndarray,
        sample_rate: int,
        target: Conditionals,
        *,
        watermark: bool = True,
        seed: int | None = None,
        exact_seed: bool = True,
    ) -> np.ndarray:
        """``ChatterboxVC.generate`` on arrays, with the target voice's S3Gen conditionals.

        ``ChatterboxVC.set_target_voice`` computes exactly ``conds.gen`` (the first 10 s at
        24 kHz through ``embed_ref``), so a voice's cached conditionals serve both TTS and VC.
        """
        audio_16k = resample(samples, sample_rate, S3_SR)
        with torch.inference_mode():
            audio = torch.from_numpy(audio_16k).float().to(self.device)[None,]
            speech_tokens, _ = self.s3gen.tokenizer(audio)
        wav = self.run_s3gen(speech_tokens, target.gen, seed=seed, exact_seed=exact_seed)
        return self._watermark(wav) if watermark else wav


def create_optimized_tts(device: str | None = None, ckpt_dir: str | Path | None = None) -> OptimizedChatterboxTTS:
    """Load the standard model: from ``CHATTERBOX_CKPT_DIR`` when set, else from the hub."""
    return OptimizedChatterboxTTS.load(device, ckpt_dir)
