"""A voice's conditionals computed from a numpy array, returned rather than stored.

The library computes a voice's conditionals from a file path (``librosa.load`` on a WAV) and
stores them on the model. :class:`ArrayConditionalsMixin` takes the samples and their rate
instead, reproduces the library's resampling and trimming step for step, and returns the
conditionals; each generation gets its own copy (:meth:`conditionals_for_call`), so
concurrent jobs never read each other's voice.
"""
from __future__ import annotations

import numpy as np
import torch
from chatterbox.models.s3gen import S3GEN_SR
from chatterbox.models.s3tokenizer import S3_SR
from chatterbox.models.t3.modules.cond_enc import T3Cond
from chatterbox.tts import Conditionals

from chatterbox_worker.audio.codec import resample


def prompt_at_model_rate(samples: np.ndarray, sample_rate: int) -> np.ndarray:
    """What ``librosa.load(path, sr=24000)`` returns for a file holding these samples.

    librosa resamples with soxr_hq (:func:`audio.codec.resample`); any other resampler
    changes the speech tokens.
    """
    return resample(samples, sample_rate, S3GEN_SR)


class ArrayConditionalsMixin:
    """Conditionals from arrays for any Chatterbox TTS class (standard, multilingual, turbo).

    Mixed in before the library class. All three variants compute conditionals the same
    way from a file; a variant that treats the prompt first (Turbo normalises loudness)
    overrides :meth:`prepare_prompt`. The class provides ``variant`` and
    ``min_prompt_seconds``.
    """

    variant: str
    min_prompt_seconds: float

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # The built-in voice as loaded. ``self.conds`` stays for library compatibility, but
        # the library's own prepare_conditionals overwrites it, so nothing here reads it.
        self.builtin_conds: Conditionals | None = self.conds

    def prepare_prompt(self, wav_24k: np.ndarray) -> np.ndarray:
        """The variant's own treatment of the 24 kHz prompt before conditioning."""
        return wav_24k

    def prepare_conditionals_from_array(
        self, samples: np.ndarray, sample_rate: int, exaggeration: float = 0.5
    ) -> Conditionals:
        """The library's ``prepare_conditionals`` on an array; returns, never stores."""
        s3gen_ref_wav = prompt_at_model_rate(samples, sample_rate)
        if len(s3gen_ref_wav) / S3GEN_SR <= self.min_prompt_seconds:
            raise ValueError(f"the {self.variant} model needs a voice prompt longer than "
                             f"{self.min_prompt_seconds:g} s")
        s3gen_ref_wav = self.prepare_prompt(s3gen_ref_wav)
        ref_16k_wav = resample(s3gen_ref_wav, S3GEN_SR, S3_SR)

        with torch.inference_mode():
            # A copy: library voices are read-only shared arrays, and torch.from_numpy (inside
            # embed_ref) warns about, and may not write to, a read-only buffer.
            gen = self.s3gen.embed_ref(
                np.array(s3gen_ref_wav[: self.DEC_COND_LEN]), S3GEN_SR, device=self.device
            )
            prompt_tokens = None
            if plen := self.t3.hp.speech_cond_prompt_len:
                prompt_tokens, _ = self.s3gen.tokenizer.forward(
                    [ref_16k_wav[: self.ENC_COND_LEN]], max_len=plen
                )
                prompt_tokens = torch.atleast_2d(prompt_tokens).to(self.device)
            ve_embed = torch.from_numpy(self.ve.embeds_from_wavs([ref_16k_wav], sample_rate=S3_SR))
            ve_embed = ve_embed.mean(axis=0, keepdim=True).to(self.device)

        t3_cond = T3Cond(
            speaker_emb=ve_embed,
            cond_prompt_speech_tokens=prompt_tokens,
            emotion_adv=exaggeration * torch.ones(1, 1, 1),
        ).to(device=self.device)
        return Conditionals(t3_cond, gen)

    def default_conditionals(self) -> Conditionals:
        if self.builtin_conds is None:
            raise ValueError("this checkpoint has no built-in voice (conds.pt); pass a voice")
        return self.builtin_conds

    def conditionals_for_call(self, conds: Conditionals, exaggeration: float) -> Conditionals:
        """A private copy for one generation.

        T3 writes ``cond_prompt_speech_emb`` into the T3Cond it is given and S3Gen casts the
        ``gen`` dict in place, so each call gets fresh containers over the shared tensors.
        Exaggeration only rebuilds the small ``emotion_adv`` tensor, as the library does.
        """
        t3 = conds.t3
        t3_call = T3Cond(
            speaker_emb=t3.speaker_emb,
            clap_emb=t3.clap_emb,
            cond_prompt_speech_tokens=t3.cond_prompt_speech_tokens,
            emotion_adv=exaggeration * torch.ones(1, 1, 1),
        ).to(device=self.device)
        return Conditionals(t3_call, dict(conds.gen))
