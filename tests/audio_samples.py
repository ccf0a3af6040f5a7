"""Audio payloads for tests: base64 files in, decoded arrays out."""
from __future__ import annotations

import base64
import io

import numpy as np
import soundfile as sf


def make_wav_b64(seconds: float = 6.0, sr: int = 16000, freq: float = 220.0, subtype: str = "PCM_16") -> str:
    """A base64 WAV of a tone with a little noise: a valid, non-silent voice prompt."""
    t = np.arange(int(seconds * sr)) / sr
    wav = 0.3 * np.sin(2 * np.pi * freq * t) + 0.01 * np.random.default_rng(int(freq)).standard_normal(t.size)
    buf = io.BytesIO()
    sf.write(buf, wav.astype(np.float32), sr, format="WAV", subtype=subtype)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def decode_b64_audio(data: str) -> tuple[np.ndarray, int]:
    return sf.read(io.BytesIO(base64.b64decode(data)), dtype="float32")
