"""A stub of OptimizedChatterboxTTS for tests and soak runs: same interface, no torch.

Each voice "speaks" a tone at a frequency derived from its conditionals, so a job that
got another job's voice is visible in its audio.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from chatterbox_worker.audio.codec import audio_fingerprint
from chatterbox_worker.contract.limits import SPEECH_TOKENS_PER_SECOND
from chatterbox_worker.models.options import GenerationOptions

STUB_SR = 24000
# Stub audio length per character of text, so longer text gives longer audio.
STUB_SECONDS_PER_CHAR = 0.01


@dataclass(frozen=True)
class StubConditionals:
    """Stands in for chatterbox's Conditionals: identifies the voice it came from."""

    fingerprint: str
    exaggeration: float = 0.5


class StubCodec:
    """Sizes and stores stub conditionals the way the real codec stores tensors."""

    def nbytes(self, conds: StubConditionals) -> int:
        return 1000

    def save(self, conds: StubConditionals, path: Path, metadata: dict[str, str]) -> None:
        path.write_text(json.dumps({"fingerprint": conds.fingerprint, **metadata}))

    def load(self, path: Path, expected_metadata: dict[str, str]) -> StubConditionals:
        data = json.loads(path.read_text())
        if any(data.get(k) != v for k, v in expected_metadata.items()):
            raise ValueError("metadata mismatch")
        return StubConditionals(data["fingerprint"])


def voice_tone(fingerprint: str) -> float:
    """Each voice speaks at its own frequency, so a swapped voice is visible in the audio."""
    return 100.0 + int(fingerprint[:6], 16) % 800


class StubModel:
    """The OptimizedChatterboxTTS interface the speech pipeline uses, without torch."""

    sr = STUB_SR
    variant = "standard"

    def __init__(self):
        self.conditionals_calls = 0
        self.generations: list[tuple[str, str]] = []  # (text, voice fingerprint)
        self.exact_seeds: list[bool] = []  # per generation: did the job name its seed?

    def prepare_conditionals_from_array(self, samples, sample_rate, exaggeration=0.5):
        self.conditionals_calls += 1
        return StubConditionals(audio_fingerprint(samples, sample_rate), exaggeration)

    def default_conditionals(self):
        return StubConditionals("0" * 64)

    def _audio(self, text, conds, seed, seconds=None):
        n = int((seconds or max(0.1, len(text) * STUB_SECONDS_PER_CHAR)) * self.sr)
        t = np.arange(n) / self.sr
        rng = np.random.default_rng(seed)
        wav = 0.5 * np.sin(2 * np.pi * voice_tone(conds.fingerprint) * t) + 0.01 * rng.standard_normal(n)
        return wav.astype(np.float32)

    def synthesize(self, text, *, conditionals, options: GenerationOptions | None = None):
        options = options or GenerationOptions()
        self.generations.append((text, conditionals.fingerprint))
        self.exact_seeds.append(options.exact_seed)
        return self._audio(text, conditionals, options.seed)

    def stream(self, text, *, conditionals, options: GenerationOptions | None = None, chunk_size=50,
               first_chunk_size=None):
        wav = self.synthesize(text, conditionals=conditionals, options=options)
        samples_per_token = self.sr // SPEECH_TOKENS_PER_SECOND
        start, size = 0, first_chunk_size or chunk_size
        while start < len(wav):
            step = max(1, size * samples_per_token)
            yield wav[start:start + step]
            start, size = start + step, chunk_size

    def convert_voice(self, samples, sample_rate, target, *, watermark=True, seed=None, exact_seed=True):
        self.generations.append(("<conversion>", target.fingerprint))
        self.exact_seeds.append(exact_seed)
        return self._audio("", target, seed, seconds=len(samples) / sample_rate)

    def release_memory(self):
        pass
