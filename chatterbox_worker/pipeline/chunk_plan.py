"""A job's text as a plan: sentence chunks to speak and exact silences, in text order.

Pause tags (:mod:`pause_tags`) cut the text into runs of speech and silences; each run is
split into chunks within the model variant's bound (:mod:`text_chunking`,
``VariantSpec.max_chunk_chars``). :class:`Joiner` then turns the chunks' audio, handed to
it in text order, into the job's audio block by block, with the same joins as
``audio.codec.join_audio_chunks``: each chunk edge that meets another part fades to zero,
then a short pause between two chunks, or exactly the tag's silence where a pause tag
stood. No torch here.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from chatterbox_worker.audio.codec import CROSSFADE_MS, PAUSE_MS
from chatterbox_worker.contract.limits import MAX_SEED, MS_PER_SECOND
from chatterbox_worker.models.registry import variant_spec
from chatterbox_worker.pipeline.pause_tags import Silence, Speech, parse_segments, require_speech
from chatterbox_worker.pipeline.text_chunking import split_text
from chatterbox_worker.settings import get_settings

# An odd constant near 2**32 / golden ratio: consecutive chunk indexes land far apart in
# seed space, and chunk 0 keeps the job's own seed (a one-chunk job is unchanged).
_SEED_STRIDE = 0x9E3779B1


@dataclass(frozen=True)
class Chunk:
    """Text to speak in one model call; ``index`` counts only the plan's chunks."""

    text: str
    index: int


PlanItem = Chunk | Silence


def chunk_seed(seed: int, index: int) -> int:
    """Chunk ``index``'s seed, derived from the job's alone: a seeded job's audio does not
    depend on which chunks run beside which, nor on other jobs."""
    return (seed + index * _SEED_STRIDE) % (MAX_SEED + 1)


def chunk_chars(variant: str) -> int:
    """The longest chunk for ``variant``: its registry bound, lowered by TTS_CHUNK_MAX_CHARS."""
    return min(variant_spec(variant).max_chunk_chars, get_settings().tts_chunk_max_chars)


def chunk_token_cap(variant: str, max_new_tokens: int | None) -> int:
    """Speech-token cap per chunk: the job's (or CHATTERBOX_MAX_NEW_TOKENS), at most the variant's."""
    asked = max_new_tokens or get_settings().chatterbox_max_new_tokens
    return min(asked, variant_spec(variant).max_chunk_tokens)


def plan_text(text: str, max_chars: int) -> list[PlanItem]:
    """Chunks and silences in text order. Raises ``JobError('text', ...)`` on a bad pause
    tag, or when nothing is left to speak."""
    segments = parse_segments(text)
    require_speech(segments)
    items: list[PlanItem] = []
    for segment in segments:
        if isinstance(segment, Silence):
            items.append(segment)
            continue
        assert isinstance(segment, Speech)
        for piece in split_text(segment.text, max_chars) or [segment.text]:
            items.append(Chunk(piece, sum(isinstance(i, Chunk) for i in items)))
    return items


def chunks_of(plan: list[PlanItem]) -> list[Chunk]:
    return [item for item in plan if isinstance(item, Chunk)]


def silence(seconds: float, sample_rate: int) -> np.ndarray:
    """Exactly ``round(seconds * sample_rate)`` zero samples."""
    return np.zeros(int(round(seconds * sample_rate)), dtype=np.float32)


class Joiner:
    """The job's audio, block by block, from its chunks' audio handed over in text order.

    ``add(wav)`` takes the next chunk's audio and yields the blocks that are now final
    (silences before it, the pause, the faded chunk). Blocks are never held back, so a
    caller that writes them out holds one chunk at a time.
    """

    def __init__(self, plan: list[PlanItem], sample_rate: int):
        self._plan = plan
        self._sr = sample_rate
        self._position = 0  # next plan item
        self._spoken = 0  # chunks with audio so far (empty ones are skipped, as the codec does)
        self._fade = int(sample_rate * CROSSFADE_MS / MS_PER_SECOND)
        self._pause = np.zeros(int(sample_rate * PAUSE_MS / MS_PER_SECOND), dtype=np.float32)
        self._after_silence = False

    def _silences(self) -> Iterator[np.ndarray]:
        while self._position < len(self._plan) and isinstance(self._plan[self._position], Silence):
            item = self._plan[self._position]
            assert isinstance(item, Silence)
            self._position += 1
            self._after_silence = True
            yield silence(item.seconds, self._sr)

    def _is_last_audio(self) -> bool:
        return not any(isinstance(i, Chunk) for i in self._plan[self._position:]) and not any(
            isinstance(i, Silence) for i in self._plan[self._position:])

    def add(self, wav: np.ndarray) -> Iterator[np.ndarray]:
        """The blocks up to and including the next chunk's audio ``wav``."""
        yield from self._silences()
        self._position += 1  # the chunk itself
        wav = np.asarray(wav, dtype=np.float32)
        if wav.size:
            starts_joined = self._spoken > 0 or self._after_silence
            if self._spoken > 0 and not self._after_silence:
                yield self._pause
            yield self._faded(wav, fade_in=starts_joined, fade_out=not self._is_last_audio())
            self._spoken += 1
            self._after_silence = False
        yield from self._silences()

    def finish(self) -> Iterator[np.ndarray]:
        """Silences after the last chunk (a text that ends with a pause tag)."""
        yield from self._silences()

    def _faded(self, wav: np.ndarray, *, fade_in: bool, fade_out: bool) -> np.ndarray:
        n = min(self._fade, len(wav) // 2)
        if not n or not (fade_in or fade_out):
            return wav
        wav = wav.copy()
        ramp = np.linspace(0.0, 1.0, n + 1, dtype=np.float32)[1:]
        if fade_in:
            wav[:n] *= ramp
        if fade_out:
            wav[-n:] *= ramp[::-1]
        return wav
