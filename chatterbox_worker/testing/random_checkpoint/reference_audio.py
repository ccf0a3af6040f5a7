"""The synthetic reference the built-in voice (conds.pt) is computed from: speech-like audio
without any recording, so the checkpoint needs nothing from outside."""
from __future__ import annotations

from pathlib import Path

REFERENCE_SECONDS = 6.0  # Turbo's prepare_conditionals requires more than 5 s
REFERENCE_SR = 24000


def synthetic_voice(seconds: float = REFERENCE_SECONDS, sr: int = REFERENCE_SR, seed: int = 0):
    """Speech-like audio: a glottal source with a moving pitch, shaped by vowel formants that
    change every syllable, a 4 Hz syllable envelope, short pauses and some breath noise."""
    import numpy as np

    rng = np.random.default_rng(seed)
    n = int(seconds * sr)
    t = np.arange(n) / sr
    f0 = 125 + 20 * np.sin(2 * np.pi * 0.4 * t) + 8 * np.sin(2 * np.pi * 2.3 * t)
    phase = 2 * np.pi * np.cumsum(f0) / sr
    vowels = np.array([[730, 1090, 2440], [270, 2290, 3010], [530, 1840, 2480],
                       [570, 840, 2410], [300, 870, 2240], [660, 1720, 2410]], dtype=float)
    syllable = 0.25
    n_syll = int(np.ceil(seconds / syllable)) + 1
    choice = rng.integers(0, len(vowels), n_syll)
    idx = np.minimum((t / syllable).astype(int), n_syll - 2)
    frac = (t / syllable) - idx
    formants = vowels[choice[idx]] * (1 - frac[:, None]) + vowels[choice[idx + 1]] * frac[:, None]
    voiced = np.zeros(n)
    for k in range(1, 40):
        freq = k * f0
        gain = np.exp(-((freq[:, None] - formants) ** 2) / (2 * 90.0 ** 2)).sum(axis=1) / k ** 0.5
        gain *= freq < sr / 2 - 500
        voiced += gain * np.sin(k * phase)
    envelope = 0.55 - 0.45 * np.cos(2 * np.pi * t / syllable)
    pauses = np.ones(n)
    for start in rng.uniform(0.5, seconds - 0.5, 3):
        pauses[(t > start) & (t < start + 0.18)] = 0.05
    noise = rng.standard_normal(n) * 0.02
    audio = (voiced * envelope + noise) * pauses
    return (0.5 * audio / np.abs(audio).max()).astype(np.float32)


def write_wav(path: Path, samples, sr: int) -> None:
    import wave

    import numpy as np

    pcm = (np.clip(samples, -1.0, 1.0) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as handle:
        handle.setnchannels(1)
        handle.setsampwidth(2)
        handle.setframerate(sr)
        handle.writeframes(pcm.tobytes())

