"""How often each library voice is asked for, shared by workers through one JSON file.

Start-up preloading (``PRELOAD_VOICES=N``) prepares the N most-used voices first, so the
counts must outlive a worker and add up across the workers of an endpoint. Jobs only bump
an in-memory counter; a background thread merges the counts into ``voice_usage.json``
beside the voice catalog every ``VOICE_USAGE_FLUSH_SECONDS``, under a cross-process lock
(``file_locks``) and with an atomic rename (``atomic_files``), so a job never waits on, or
writes to, the file system.
"""
from __future__ import annotations

import json
import logging
import threading
from collections import Counter
from pathlib import Path

from chatterbox_worker.contract.limits import MB
from chatterbox_worker.settings import get_settings
from chatterbox_worker.storage.atomic_files import write_replacing
from chatterbox_worker.storage.file_locks import volume_lock

logger = logging.getLogger(__name__)

USAGE_FILENAME = "voice_usage.json"
LOCK_SUFFIX = ".lock"
# Counts are small integers per voice; a file larger than this is not ours.
MAX_USAGE_FILE_BYTES = 4 * MB


def _read_counts(path: Path) -> Counter:
    """The counts on disk; a missing, oversized or malformed file counts as empty."""
    try:
        if path.stat().st_size > MAX_USAGE_FILE_BYTES:
            logger.warning("ignoring %s: larger than %d bytes", path, MAX_USAGE_FILE_BYTES)
            return Counter()
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return Counter()
    except (OSError, ValueError) as exc:
        logger.warning("ignoring unreadable %s: %s", path, exc)
        return Counter()
    if not isinstance(data, dict):
        return Counter()
    return Counter({k: v for k, v in data.items() if isinstance(k, str) and isinstance(v, int) and v > 0})


class VoiceUsage:
    """Per-voice job counts: this worker's unsaved ones plus what all workers have saved."""

    def __init__(self, path: Path | None):
        self.path = Path(path) if path is not None else None
        self._pending: Counter = Counter()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def record(self, voice_id: str) -> None:
        with self._lock:
            self._pending[voice_id] += 1

    def counts(self) -> Counter:
        with self._lock:
            pending = Counter(self._pending)
        return (_read_counts(self.path) if self.path else Counter()) + pending

    def most_used(self, voice_ids: list[str]) -> list[str]:
        """``voice_ids`` by descending use; unused voices keep their given order, last."""
        counts = self.counts()
        order = {voice_id: i for i, voice_id in enumerate(voice_ids)}
        return sorted(voice_ids, key=lambda v: (-counts.get(v, 0), order[v]))

    def flush(self) -> bool:
        """Merge this worker's new counts into the file; False (counts kept) if it cannot."""
        if self.path is None:
            return False
        with self._lock:
            delta, self._pending = self._pending, Counter()
        if not delta:
            return True
        try:
            # Other workers on the volume merge one at a time.
            with volume_lock(self.path.with_name(self.path.name + LOCK_SUFFIX)):
                merged = _read_counts(self.path) + delta
                write_replacing(self.path, json.dumps(dict(merged), sort_keys=True).encode("utf-8"))
            return True
        except OSError as exc:
            logger.warning("could not save voice usage to %s: %s", self.path, exc)
            with self._lock:
                self._pending.update(delta)  # try again at the next flush
            return False

    def start(self, interval_seconds: float | None = None) -> None:
        """Flush every ``interval_seconds`` (default ``VOICE_USAGE_FLUSH_SECONDS``) in a daemon thread."""
        if self.path is None or self._thread is not None:
            return
        if interval_seconds is None:
            interval_seconds = get_settings().voice_usage_flush_seconds

        def loop():
            while not self._stop.wait(interval_seconds):
                self.flush()

        self._thread = threading.Thread(target=loop, name="voice-usage-flush", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self.flush()
