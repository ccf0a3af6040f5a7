"""Audio payloads as clients send them: base64 audio files in, decoded arrays out."""
from __future__ import annotations

import base64
import io

import numpy as np
import soundfile as sf

PROMPT_SR = 16000
TONE_HZ = 220.0
TONE_AMPLITUDE = 0.3
NOISE_AMPLITUDE = 0.01


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def make_wav_b64(seconds: float = 6.0, sr: int = PROMPT_SR, freq: float = TONE_HZ, subtype: str = "PCM_16",
                 container: str = "WAV", channels: int = 1) -> str:
    """A base64 audio file of a tone with a little noise: a valid, non-silent voice prompt.

    ``container`` and ``subtype`` are soundfile's format names; with two channels the second
    is the first at half level.
    """
    t = np.arange(int(seconds * sr)) / sr
    noise = np.random.default_rng(int(freq)).standard_normal(t.size)
    wav = (TONE_AMPLITUDE * np.sin(2 * np.pi * freq * t) + NOISE_AMPLITUDE * noise).astype(np.float32)
    if channels == 2:
        wav = np.stack([wav, 0.5 * wav], axis=1)
    buf = io.BytesIO()
    sf.write(buf, wav, sr, format=container, subtype=subtype)
    return b64(buf.getvalue())


def float_wav_b64(samples: np.ndarray, sr: int = PROMPT_SR) -> str:
    """A 32-bit float WAV keeps NaN, inf and exact zeros as they are, as a broken client's
    file could."""
    buf = io.BytesIO()
    sf.write(buf, np.asarray(samples, dtype=np.float32), sr, format="WAV", subtype="FLOAT")
    return b64(buf.getvalue())


def decode_b64_audio(data: str) -> tuple[np.ndarray, int]:
    return sf.read(io.BytesIO(base64.b64decode(data)), dtype="float32")
