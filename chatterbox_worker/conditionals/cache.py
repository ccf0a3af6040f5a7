"""The conditionals cache: a voice used before costs nothing to prepare again.

Conditionals (speaker embedding, prompt speech tokens, mel prompt, x-vector) are what a
voice really costs: about a second of model time per voice on a GPU worker, against
milliseconds to look them up. Entries are keyed by the prompt's *content* plus the model
variant, so a voice re-uploaded under an old name never gets stale conditionals, and two
variants never share them.

Two tiers:

- **memory**: an LRU bounded by the entries' measured tensor bytes. Entries of one-off
  prompts (``persist=False``: a ``reference_audio`` never saved to the library) are
  evicted before those of library voices, so a stream of one-off uploads cannot push the
  library out.
- **disk** (safetensors, no pickle), usually on the network volume that every worker
  shares, so a new or restarted worker skips the model. Its layout is
  ``<disk_dir>/<variant>/<model version>/<content hash>.safetensors``, and each file's
  metadata names the same version: new weights on the same volume never read what old
  weights computed (:mod:`~chatterbox_worker.conditionals.fingerprint` makes the version). The tier is bounded
  in bytes across all workers; entries of other model versions go first, then the least
  recently used. Only library voices are written; files are written by a background
  thread, so a job's response never waits for the volume.

This module knows nothing of torch: the model supplies a codec that sizes, saves and
loads its conditionals.
"""
from __future__ import annotations

import functools
import logging
import os
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from cachetools import LRUCache

from chatterbox_worker.settings import get_settings, mb_to_bytes
from chatterbox_worker.storage.atomic_files import PARTIAL_PREFIX, replacing

logger = logging.getLogger(__name__)

_KEY_PART = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")
CACHE_FILE_SUFFIX = ".safetensors"
# The version directory of a variant the cache was given no version for (test stubs).
UNVERSIONED = "unversioned"
# A half-written file this old belongs to a writer that died; younger ones may be in flight.
ABANDONED_PARTIAL_SECONDS = 3600.0


class ConditionalsCodecProtocol(Protocol):
    """What the cache needs of a codec (the real models' ConditionalsCodec, or a test stub)."""

    def nbytes(self, conds: Any) -> int: ...
    def save(self, conds: Any, path: Path, metadata: dict[str, str]) -> None: ...
    def load(self, path: Path, expected_metadata: dict[str, str]) -> Any: ...


def _check_key_part(part: str) -> str:
    # Key parts and versions become file names on disk: refuse anything that is not a plain token.
    if not _KEY_PART.match(part):
        raise ValueError(f"invalid cache key part {part!r}")
    return part


@dataclass(frozen=True)
class CacheKey:
    variant: str
    content_hash: str

    def __post_init__(self):
        _check_key_part(self.variant)
        _check_key_part(self.content_hash)

    def metadata(self) -> dict[str, str]:
        return {"variant": self.variant, "content_hash": self.content_hash}


@dataclass(frozen=True)
class CacheLookup:
    conditionals: Any
    source: str  # "memory", "disk" or "computed"


# -- the disk tier's bound (pure functions over a directory listing) ----------------------


@dataclass(frozen=True)
class DiskEntry:
    path: Path
    size: int
    mtime_ns: int
    stale: bool  # another model version of a variant this worker serves, or the old layout


def _list_dir(path: Path | str) -> list[os.DirEntry]:
    # Other workers create and evict entries meanwhile: a vanished directory is an empty one.
    try:
        with os.scandir(path) as entries:
            return list(entries)
    except (FileNotFoundError, NotADirectoryError):
        return []


def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir(follow_symlinks=False)
    except OSError:
        return False


def scan_disk(disk_dir: Path, versions: Mapping[str, str],
              now: float | None = None) -> tuple[list[DiskEntry], list[Path]]:
    """The cache files under ``disk_dir`` and the abandoned partial files among them.

    A file of a variant in ``versions`` under another version directory is stale, and so
    is a file in the layout before versions (directly under its variant directory).
    """
    now = time.time() if now is None else now
    entries: list[DiskEntry] = []
    abandoned: list[Path] = []

    def visit(item: os.DirEntry, stale: bool) -> None:
        if not item.name.endswith(CACHE_FILE_SUFFIX):
            return
        try:
            st = item.stat(follow_symlinks=False)
        except FileNotFoundError:  # evicted by another worker while we looked
            return
        if item.name.startswith(PARTIAL_PREFIX):
            if now - st.st_mtime > ABANDONED_PARTIAL_SECONDS:
                abandoned.append(Path(item.path))
            return
        entries.append(DiskEntry(Path(item.path), st.st_size, st.st_mtime_ns, stale))

    for variant_dir in filter(_is_dir, _list_dir(disk_dir)):
        for child in _list_dir(variant_dir.path):
            if _is_dir(child):
                stale = variant_dir.name in versions and child.name != versions[variant_dir.name]
                for item in _list_dir(child.path):
                    visit(item, stale)
            else:
                visit(child, stale=True)
    return entries, abandoned


def choose_evictions(entries: Iterable[DiskEntry], max_bytes: int, keep: Path | None = None) -> list[DiskEntry]:
    """The entries to remove so that the rest fit ``max_bytes``: stale first, then oldest mtime.

    ``keep`` (the file just written) goes last: timestamps are only as fine as the
    filesystem's clock tick, so it may tie with files written just before it.
    """
    entries = list(entries)
    total = sum(e.size for e in entries)
    victims = []
    for entry in sorted(entries, key=lambda e: (e.path == keep, not e.stale, e.mtime_ns, str(e.path))):
        if total <= max_bytes:
            break
        victims.append(entry)
        total -= entry.size
    return victims


# -- the cache -----------------------------------------------------------------------------


class ConditionalsCache:
    """Device-resident LRU of conditionals, bounded in bytes, over an optional bounded disk tier.

    ``max_bytes`` and ``disk_max_bytes`` default to the settings
    (``CONDITIONALS_CACHE_MAX_MB``, ``CONDITIONALS_DISK_MAX_MB``). ``model_versions`` maps
    each variant to its model version (:func:`~chatterbox_worker.conditionals.fingerprint.model_version`); a
    variant without one is stored as :data:`UNVERSIONED`.
    """

    def __init__(self, codec: ConditionalsCodecProtocol, max_bytes: int | None = None, disk_dir: Path | None = None,
                 disk_max_bytes: int | None = None, model_versions: Mapping[str, str] | None = None):
        settings = get_settings()
        self.codec = codec
        self.max_bytes = mb_to_bytes(settings.conditionals_cache_max_mb) if max_bytes is None else max_bytes
        self.disk_dir = None if disk_dir is None else Path(disk_dir)
        self.disk_max_bytes = (mb_to_bytes(settings.conditionals_disk_max_mb)
                               if disk_max_bytes is None else disk_max_bytes)
        self.model_versions = {variant: _check_key_part(version)
                               for variant, version in (model_versions or {}).items()}
        self._lock = threading.Lock()
        # Two LRUs under one byte bound: room is made from the one-off entries first (see
        # _make_room), so library voices give way only when no one-off entry is left. Each
        # LRU's own maxsize is the whole bound, so neither ever evicts on its own.
        self._library: LRUCache = LRUCache(maxsize=self.max_bytes, getsizeof=codec.nbytes)
        self._one_off: LRUCache = LRUCache(maxsize=self.max_bytes, getsizeof=codec.nbytes)
        # One builder per key: eight jobs asking for one new voice compute it once.
        self._key_locks: dict[CacheKey, threading.Lock] = {}
        self.hits = self.misses = self.disk_hits = self.evictions = 0
        self.disk_errors = self.disk_evictions = 0
        self.disk_bytes: int | None = None  # the whole directory's, at the last scan
        # The background disk writer: a queue of tasks drained by one daemon thread,
        # started when work arrives and ended when the queue is empty (no idle threads).
        self._tasks: deque[Callable[[], None]] = deque()
        self._pending = 0
        self._writer_running = False
        self._writer_cv = threading.Condition()

    # -- memory tier -------------------------------------------------------------------

    def _memory_bytes(self) -> int:
        return self._library.currsize + self._one_off.currsize

    def _get_memory(self, key: CacheKey, persist: bool) -> tuple[Any, bool] | None:
        """The resident entry and whether it was just promoted from one-off to library."""
        with self._lock:
            if key in self._library:
                self.hits += 1
                return self._library[key], False
            if key not in self._one_off:
                return None
            self.hits += 1
            conds = self._one_off[key]
            if not persist:
                return conds, False
            # A one-off prompt has since become a library voice: same bytes, other class.
            del self._one_off[key]
            self._library[key] = conds
            return conds, True

    def _from_memory(self, key: CacheKey, persist: bool) -> Any | None:
        found = self._get_memory(key, persist)
        if found is None:
            return None
        conds, promoted = found
        if promoted and self._writes_disk:
            self._submit(functools.partial(self._store_disk, key, conds))
        return conds

    def _make_room(self, size: int) -> None:
        """Evict until ``size`` more bytes fit: one-off entries first, each class LRU first."""
        while self._memory_bytes() + size > self.max_bytes:
            (self._one_off if self._one_off else self._library).popitem()
            self.evictions += 1

    def _put_memory(self, key: CacheKey, conds: Any, persist: bool) -> None:
        size = self.codec.nbytes(conds)
        with self._lock:
            self._library.pop(key, None)
            self._one_off.pop(key, None)
            if size > self.max_bytes:
                logger.warning("conditionals of %d bytes exceed the cache bound; not cached", size)
                return
            self._make_room(size)
            (self._library if persist else self._one_off)[key] = conds

    def evict(self, fraction: float = 1.0) -> int:
        """Drop the least recently used share of the memory tier (used on out-of-memory)."""
        with self._lock:
            entries = len(self._library) + len(self._one_off)
            count = max(1, int(entries * fraction)) if entries else 0
            for _ in range(count):
                (self._one_off if self._one_off else self._library).popitem()
                self.evictions += 1
            return count

    def __contains__(self, key: CacheKey) -> bool:
        with self._lock:
            return key in self._library or key in self._one_off

    # -- disk tier ---------------------------------------------------------------------

    @property
    def _writes_disk(self) -> bool:
        # A disk bound of 0 keeps nothing: the tier is read, never written.
        return self.disk_dir is not None and self.disk_max_bytes > 0

    def model_version(self, variant: str) -> str:
        return self.model_versions.get(variant, UNVERSIONED)

    def disk_path(self, key: CacheKey) -> Path | None:
        if self.disk_dir is None:
            return None
        return self.disk_dir / key.variant / self.model_version(key.variant) / f"{key.content_hash}{CACHE_FILE_SUFFIX}"

    def disk_metadata(self, key: CacheKey) -> dict[str, str]:
        """What a file must say to be read back: the key and the model version that computed it."""
        return {**key.metadata(), "model_version": self.model_version(key.variant)}

    def _count_disk_error(self) -> None:
        with self._lock:
            self.disk_errors += 1

    def _load_disk(self, key: CacheKey) -> Any | None:
        path = self.disk_path(key)
        if path is None or not path.is_file():
            return None
        try:
            conds = self.codec.load(path, self.disk_metadata(key))
        except FileNotFoundError:  # evicted by another worker between the check and the read
            return None
        except Exception as exc:  # any unreadable file is rebuilt, never fatal
            self._count_disk_error()
            logger.warning("ignoring unreadable cached conditionals %s (%s); rebuilding", path, exc)
            path.unlink(missing_ok=True)
            return None
        # The bound evicts by mtime, since atime is not kept on noatime volumes.
        self._submit(functools.partial(self._touch, path))
        return conds

    @staticmethod
    def _touch(path: Path) -> None:
        try:
            os.utime(path)
        except FileNotFoundError:
            pass  # another worker evicted it: nothing to keep fresh
        except OSError as exc:
            logger.debug("could not touch %s: %s", path, exc)

    def _store_disk(self, key: CacheKey, conds: Any) -> None:
        """Runs on the writer thread.

        The codec's save copies the tensors to the CPU and only reads them; the
        conditionals object is shared read-only once built (jobs get shallow copies), so
        saving it here while jobs use it is safe.
        """
        path = self.disk_path(key)
        if path is None:
            return
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # Readers on other workers see the old file or the whole new one, never a part.
            with replacing(path) as partial:
                self.codec.save(conds, partial, self.disk_metadata(key))
        except Exception as exc:  # a write failure costs a recomputation later, never the job
            self._count_disk_error()
            logger.warning("could not persist conditionals to %s: %s", path, exc)
            return
        try:
            too_large = path.stat().st_size > self.disk_max_bytes
        except FileNotFoundError:
            return  # already evicted by another worker
        if too_large:
            # Keeping it would mean evicting everything else and still exceeding the bound.
            logger.warning("conditionals file %s exceeds the disk bound; removed", path)
            path.unlink(missing_ok=True)
            return
        logger.debug("persisted conditionals to %s", path)
        self._enforce_disk_bound(keep=path)

    def _enforce_disk_bound(self, keep: Path | None = None) -> None:
        """Scan the directory that all workers share and evict down to the bound.

        Runs after every write, which is cheap enough: only library voices are written,
        once per voice and model version across all workers, and entries are 0.2-0.8 MB,
        so even a full tier is a few thousand files. Each worker enforces the bound after
        its own writes, so together they keep the shared directory within it.
        """
        if self.disk_dir is None:
            return
        entries, abandoned = scan_disk(self.disk_dir, self.model_versions)
        for path in abandoned:
            path.unlink(missing_ok=True)
        total = sum(e.size for e in entries)
        evicted = 0
        for victim in choose_evictions(entries, self.disk_max_bytes, keep):
            try:
                victim.path.unlink()
                evicted += 1
            except FileNotFoundError:
                pass  # another worker evicted it first
            except OSError as exc:
                self._count_disk_error()
                logger.warning("could not evict cached conditionals %s: %s", victim.path, exc)
                continue
            total -= victim.size
        if evicted:
            logger.info("evicted %d cached conditionals file(s) to keep %s within %d bytes",
                        evicted, self.disk_dir, self.disk_max_bytes)
        with self._lock:
            self.disk_evictions += evicted
            self.disk_bytes = total

    # -- the background writer -----------------------------------------------------------

    def _submit(self, task: Callable[[], None]) -> None:
        with self._writer_cv:
            self._tasks.append(task)
            self._pending += 1
            if not self._writer_running:
                self._writer_running = True
                threading.Thread(target=self._drain, name="conditionals-disk-writer", daemon=True).start()

    def _drain(self) -> None:
        while True:
            with self._writer_cv:
                if not self._tasks:
                    self._writer_running = False
                    return
                task = self._tasks.popleft()
            try:
                task()
            except Exception:  # never let one task end the writer with others queued
                self._count_disk_error()
                logger.exception("conditionals disk task failed")
            finally:
                with self._writer_cv:
                    self._pending -= 1
                    if not self._pending:
                        self._writer_cv.notify_all()

    def flush(self, timeout: float | None = None) -> bool:
        """Wait for queued disk writes; False if some were still pending after ``timeout`` s."""
        with self._writer_cv:
            return self._writer_cv.wait_for(lambda: not self._pending, timeout)

    # -- lookup ------------------------------------------------------------------------

    def get_or_build(self, key: CacheKey, build: Callable[[], Any], *, persist: bool = True) -> CacheLookup:
        """The key's conditionals from memory, else disk, else ``build()``.

        ``persist=False`` (a one-off prompt) keeps a built entry in memory only, first in
        line for eviction. Returns as soon as the conditionals are at hand: the disk write
        happens in the background (see :meth:`flush`).
        """
        conds = self._from_memory(key, persist)
        if conds is not None:
            return CacheLookup(conds, "memory")
        with self._lock:
            key_lock = self._key_locks.setdefault(key, threading.Lock())
        try:
            with key_lock:
                conds = self._from_memory(key, persist)
                if conds is not None:
                    return CacheLookup(conds, "memory")
                conds, source = self._load_or_build(key, build, persist)
                self._put_memory(key, conds, persist)
        finally:
            # Waiters still hold the lock object; a later caller finds the entry in memory.
            with self._lock:
                self._key_locks.pop(key, None)
        return CacheLookup(conds, source)

    def _load_or_build(self, key: CacheKey, build: Callable[[], Any], persist: bool) -> tuple[Any, str]:
        with self._lock:
            self.misses += 1
        conds = self._load_disk(key)
        if conds is not None:
            with self._lock:
                self.disk_hits += 1
            return conds, "disk"
        conds = build()
        if persist and self._writes_disk:
            self._submit(functools.partial(self._store_disk, key, conds))
        return conds, "computed"

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {
                "entries": len(self._library) + len(self._one_off),
                "bytes": self._memory_bytes(),
                "max_bytes": self.max_bytes,
                "hits": self.hits,
                "misses": self.misses,
                "disk_hits": self.disk_hits,
                "evictions": self.evictions,
                "disk_errors": self.disk_errors,
                "disk_dir": str(self.disk_dir) if self.disk_dir else None,
                "disk_bytes": self.disk_bytes,
                "disk_max_bytes": self.disk_max_bytes,
                "disk_evictions": self.disk_evictions,
            }
