"""The LRU of decoded voice clips, bounded by bytes and by voice count.

``cachetools.LRUCache`` keeps the byte bound (each value weighs its samples' ``nbytes``);
the count bound is enforced on top after each insert. Not thread-safe: the library holds
its lock around every call, together with the generation counters that keep a load that
started before a change from caching old audio.
"""
from __future__ import annotations

from typing import Any, Protocol

import numpy as np
from cachetools import LRUCache


class _HasSamples(Protocol):
    samples: np.ndarray


def _nbytes(voice: _HasSamples) -> int:
    return voice.samples.nbytes


class VoiceArrayCache(LRUCache):
    """Voice id -> decoded clip; counts what the two bounds push out in ``evictions``."""

    def __init__(self, max_voices: int, max_bytes: int):
        super().__init__(maxsize=max_bytes, getsizeof=_nbytes)
        self.max_voices = max_voices
        self.evictions = 0

    def put(self, voice_id: str, voice: _HasSamples) -> None:
        """Cache ``voice`` unless it alone breaks a bound (it is then served uncached)."""
        if self.max_voices == 0 or _nbytes(voice) > self.maxsize:
            return
        self.pop(voice_id, None)  # replacing a voice is not an eviction
        self[voice_id] = voice
        while len(self) > self.max_voices:
            self.popitem()

    def popitem(self) -> tuple[str, Any]:
        # cachetools evicts through popitem for the byte bound, as put does for the count.
        item = super().popitem()
        self.evictions += 1
        return item
