"""The conditionals cache: a voice used before costs nothing to prepare again.

Conditionals (speaker embedding, prompt speech tokens, mel prompt, x-vector) are what a
voice really costs: about a second of model time per voice on a GPU worker, against
milliseconds to look them up. Entries are keyed by the prompt's *content* plus the model
variant, so a voice re-uploaded under an old name never gets stale conditionals, and two
variants never share them. Memory is an LRU bounded by the entries' measured tensor
bytes; a disk tier (safetensors, no pickle) lets a restarted worker skip the model.

This module knows nothing of torch: the model supplies a codec that sizes, saves and
loads its conditionals.
"""
from __future__ import annotations

import logging
import os
import re
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from atomic_files import replacing

logger = logging.getLogger(__name__)

MB = 1024 * 1024
DEFAULT_MAX_MB = 512.0
# Where RunPod mounts a network volume; a cache there survives worker replacement.
RUNPOD_VOLUME = Path("/runpod-volume")
_KEY_PART = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")
CACHE_FILE_SUFFIX = ".safetensors"


class ConditionalsCodec(Protocol):
    def nbytes(self, conds: Any) -> int: ...
    def save(self, conds: Any, path: Path, metadata: dict[str, str]) -> None: ...
    def load(self, path: Path, expected_metadata: dict[str, str]) -> Any: ...


@dataclass(frozen=True)
class CacheKey:
    variant: str
    content_hash: str

    def __post_init__(self):
        # Both parts become a file name on disk: refuse anything that is not a plain token.
        for part in (self.variant, self.content_hash):
            if not _KEY_PART.match(part):
                raise ValueError(f"invalid cache key part {part!r}")

    def metadata(self) -> dict[str, str]:
        return {"variant": self.variant, "content_hash": self.content_hash}


@dataclass(frozen=True)
class CacheLookup:
    conditionals: Any
    source: str  # "memory", "disk" or "computed"

    @property
    def hit(self) -> bool:
        return self.source != "computed"


def default_cache_dir() -> Path | None:
    """``CONDITIONALS_CACHE_DIR``; "off" disables the disk tier."""
    configured = os.environ.get("CONDITIONALS_CACHE_DIR")
    if configured:
        return None if configured.lower() in ("off", "none", "0", "false") else Path(configured)
    if RUNPOD_VOLUME.is_dir():
        return RUNPOD_VOLUME / "chatterbox-worker" / "conditionals"
    return Path.home() / ".cache" / "chatterbox-worker" / "conditionals"


def default_max_bytes() -> int:
    return int(float(os.environ.get("CONDITIONALS_CACHE_MAX_MB", DEFAULT_MAX_MB)) * MB)


class ConditionalsCache:
    """Device-resident LRU of conditionals, bounded in bytes, over an optional disk tier."""

    def __init__(self, codec: ConditionalsCodec, max_bytes: int | None = None, disk_dir: Path | None = None):
        self.codec = codec
        self.max_bytes = default_max_bytes() if max_bytes is None else max_bytes
        self.disk_dir = disk_dir
        self._entries: OrderedDict[CacheKey, tuple[Any, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        # One builder per key: eight jobs asking for one new voice compute it once.
        self._key_locks: dict[CacheKey, threading.Lock] = {}
        self.hits = self.misses = self.disk_hits = self.evictions = 0
        self.disk_errors = 0

    # -- memory tier -------------------------------------------------------------------

    def _get_memory(self, key: CacheKey) -> Any | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            return entry[0]

    def _put_memory(self, key: CacheKey, conds: Any) -> None:
        size = self.codec.nbytes(conds)
        with self._lock:
            if key in self._entries:
                self._bytes -= self._entries.pop(key)[1]
            if size > self.max_bytes:
                logger.warning("conditionals of %d bytes exceed the cache bound; not cached", size)
                return
            self._entries[key] = (conds, size)
            self._bytes += size
            while self._bytes > self.max_bytes:
                _, (_, evicted) = self._entries.popitem(last=False)
                self._bytes -= evicted
                self.evictions += 1

    def evict(self, fraction: float = 1.0) -> int:
        """Drop the least recently used share of the memory tier (used on out-of-memory)."""
        with self._lock:
            count = max(1, int(len(self._entries) * fraction)) if self._entries else 0
            for _ in range(count):
                _, (_, size) = self._entries.popitem(last=False)
                self._bytes -= size
                self.evictions += 1
            return count

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._bytes = 0

    def __contains__(self, key: CacheKey) -> bool:
        with self._lock:
            return key in self._entries

    # -- disk tier ---------------------------------------------------------------------

    def _path(self, key: CacheKey) -> Path | None:
        if self.disk_dir is None:
            return None
        return self.disk_dir / key.variant / f"{key.content_hash}{CACHE_FILE_SUFFIX}"

    def _load_disk(self, key: CacheKey) -> Any | None:
        path = self._path(key)
        if path is None or not path.is_file():
            return None
        try:
            return self.codec.load(path, key.metadata())
        except Exception as exc:  # any unreadable file is rebuilt, never fatal
            self.disk_errors += 1
            logger.warning("ignoring unreadable cached conditionals %s (%s); rebuilding", path, exc)
            path.unlink(missing_ok=True)
            return None

    def _store_disk(self, key: CacheKey, conds: Any) -> None:
        path = self._path(key)
        if path is None:
            return
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # Readers on other workers see the old file or the whole new one, never a part.
            with replacing(path) as partial:
                self.codec.save(conds, partial, key.metadata())
        except OSError as exc:
            self.disk_errors += 1
            logger.warning("could not persist conditionals to %s: %s", path, exc)

    # -- lookup ------------------------------------------------------------------------

    def get_or_build(self, key: CacheKey, build: Callable[[], Any]) -> CacheLookup:
        conds = self._get_memory(key)
        if conds is not None:
            return CacheLookup(conds, "memory")
        with self._lock:
            key_lock = self._key_locks.setdefault(key, threading.Lock())
        with key_lock:
            conds = self._get_memory(key)
            if conds is not None:
                return CacheLookup(conds, "memory")
            with self._lock:
                self.misses += 1
            source = "disk"
            conds = self._load_disk(key)
            if conds is None:
                source = "computed"
                conds = build()
                self._store_disk(key, conds)
            else:
                self.disk_hits += 1
            self._put_memory(key, conds)
        with self._lock:
            self._key_locks.pop(key, None)
        return CacheLookup(conds, source)

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {
                "entries": len(self._entries),
                "bytes": self._bytes,
                "max_bytes": self.max_bytes,
                "hits": self.hits,
                "misses": self.misses,
                "disk_hits": self.disk_hits,
                "evictions": self.evictions,
                "disk_errors": self.disk_errors,
                "disk_dir": str(self.disk_dir) if self.disk_dir else None,
            }
