"""Files that other workers on a shared volume read while this one writes them.

A file is written in full beside its destination under a hidden name, then renamed over
it: a reader sees the old file or the whole new one, never a part. These are the only
writes the worker makes on purpose (saved voices, the catalog, persisted conditionals,
voice usage counts); generating speech writes nothing.
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


def write_partial(directory: Path, suffix: str, data: bytes) -> Path:
    """Write ``data`` to a new fsynced hidden file in ``directory``, ready for os.replace."""
    fd, name = tempfile.mkstemp(prefix=PARTIAL_PREFIX, suffix=suffix, dir=directory)
    partial = Path(name)
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


@contextmanager
def replacing(path: Path) -> Iterator[Path]:
    """A hidden path beside ``path`` to write; renamed over ``path`` if the block succeeds."""
    fd, name = tempfile.mkstemp(prefix=PARTIAL_PREFIX, suffix=path.suffix, dir=path.parent)
    os.close(fd)
    partial = Path(name)
    try:
        yield partial
        os.chmod(partial, SHARED_FILE_MODE)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def write_replacing(path: Path, data: bytes) -> None:
    with replacing(path) as partial:
        partial.write_bytes(data)


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
