"""Cross-process locks that also work on a network volume.

Workers of one endpoint share the voice library and the usage counts through a volume,
so their writers take a lock file beside the data. ``filelock.FileLock`` (flock) is the
lock; a filesystem that refuses flock gets ``filelock.SoftFileLock`` on the same path,
which only relies on exclusive file creation. Whether flock works is asked once per
lock path and process.
"""
from __future__ import annotations

import errno
import fcntl
import logging
import os
import threading
from pathlib import Path

from filelock import BaseFileLock, FileLock, SoftFileLock

logger = logging.getLogger(__name__)

# Long enough for any writer (a voice save takes well under a second); short enough that
# a soft lock left by a crashed worker turns into an error instead of a hung job.
LOCK_TIMEOUT_S = 60.0
LOCK_FILE_MODE = 0o644
# flock answers these when another process holds the lock: flock itself works.
_HELD_ELSEWHERE = (errno.EAGAIN, errno.EWOULDBLOCK)

_flock_works: dict[Path, bool] = {}
_probe_lock = threading.Lock()


def _probe_flock(path: Path) -> bool:
    """Whether the filesystem of ``path`` grants flock.

    filelock turns only ENOSYS into NotImplementedError; any other refusal (ENOLCK from a
    network mount without a lock daemon, EOPNOTSUPP, ...) it takes for "held by someone
    else" and waits until it times out. So the filesystem is asked directly, once.
    """
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, LOCK_FILE_MODE)
        created = True
    except FileExistsError:
        fd = os.open(path, os.O_RDWR)
        created = False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        works = exc.errno in _HELD_ELSEWHERE
        if not works:
            logger.warning("%s: the filesystem refuses flock (%s); using a lock file that is created "
                           "and removed instead. A worker that crashes holding it leaves %s behind, "
                           "which must then be deleted by hand.", path, os.strerror(exc.errno or 0), path)
    else:
        works = True
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
    # A soft lock is "the file exists": the probe's own file must not look held.
    if created and not works:
        path.unlink(missing_ok=True)
    return works


def volume_lock(path: Path, timeout: float | None = None) -> BaseFileLock:
    """An exclusive lock on ``path`` for ``with``; creates the folder if needed.

    Acquiring raises ``filelock.Timeout`` (an OSError) after ``timeout`` seconds
    (default ``LOCK_TIMEOUT_S``).
    """
    path = Path(path)
    if timeout is None:
        timeout = LOCK_TIMEOUT_S
    path.parent.mkdir(parents=True, exist_ok=True)
    with _probe_lock:
        works = _flock_works.get(path)
        if works is None:
            works = _flock_works[path] = _probe_flock(path)
    lock_class = FileLock if works else SoftFileLock
    # A new object per use: each holds its own descriptor, so the threads of this process
    # exclude each other as other processes do.
    return lock_class(path, timeout=timeout, mode=LOCK_FILE_MODE)


def forget_probes() -> None:
    """Ask the filesystem again on next use (tests simulate filesystems without flock)."""
    with _probe_lock:
        _flock_works.clear()
