"""Files that other workers on a shared volume read while this one writes them.

A file is written in full beside its destination under a hidden name, fsynced, then
renamed over it, and the directory is fsynced after the rename: a reader sees the old
file or the whole new one, never a part, and a crash or power loss right after a save
cannot leave a renamed but empty file. Every file the worker writes on purpose (saved
voices, the catalog, persisted conditionals, voice usage counts) goes this one way;
generating speech writes nothing.
"""
from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# Half-written files start with this, so a crash leaves something recognisable.
PARTIAL_PREFIX = ".tmp-"
# mkstemp creates 0600; other workers on a shared volume must read the file.
SHARED_FILE_MODE = 0o644


def _new_partial(directory: Path, suffix: str) -> tuple[int, Path]:
    fd, name = tempfile.mkstemp(prefix=PARTIAL_PREFIX, suffix=suffix, dir=directory)
    return fd, Path(name)


def _seal(partial: Path) -> None:
    """Flush a partial file written by someone else (a codec) to disk and share it."""
    fd = os.open(partial, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.chmod(partial, SHARED_FILE_MODE)


def write_partial(directory: Path, suffix: str, data: bytes) -> Path:
    """Write ``data`` to a new fsynced hidden file in ``directory``, ready for :func:`commit`.

    Writers that swap several files at once write every partial first, so a full disk
    stops them before anything is replaced.
    """
    fd, partial = _new_partial(directory, suffix)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(partial, SHARED_FILE_MODE)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return partial


def commit(partial: Path, path: Path) -> None:
    """Rename a sealed partial over ``path`` and make the rename durable."""
    os.replace(partial, path)
    fsync_dir(path.parent)


@contextmanager
def replacing(path: Path) -> Iterator[Path]:
    """A hidden path beside ``path`` to write; fsynced and renamed over ``path`` if the block succeeds."""
    fd, partial = _new_partial(path.parent, path.suffix)
    os.close(fd)
    try:
        yield partial
        _seal(partial)
        commit(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def write_replacing(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically and durably."""
    partial = write_partial(path.parent, path.suffix, data)
    try:
        commit(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def fsync_dir(directory: Path) -> None:
    """Make a rename in ``directory`` durable; not every filesystem lets a directory be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
