"""Write-then-rename with fsync, and the cross-process locks that work on a network volume."""
from __future__ import annotations

import errno
import fcntl
import logging
import os
from pathlib import Path

import filelock
import pytest

from chatterbox_worker.storage import atomic_files, file_locks
from chatterbox_worker.storage.atomic_files import PARTIAL_PREFIX, replacing, write_partial, write_replacing


@pytest.fixture
def sync_log(monkeypatch) -> list[tuple[str, str]]:
    """Every fsync (with the path its descriptor names) and every rename, in order."""
    events: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        return real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", str(src)))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    return events


def partials(directory: Path) -> list[Path]:
    return [p for p in directory.iterdir() if p.name.startswith(PARTIAL_PREFIX)]


def assert_synced_then_renamed(events: list[tuple[str, str]], directory: Path) -> None:
    kinds = [kind for kind, _ in events]
    assert kinds == ["fsync", "replace", "fsync"]
    (_, data_file), (_, renamed), (_, synced_dir) = events
    assert Path(data_file).name.startswith(PARTIAL_PREFIX) and data_file == renamed
    assert synced_dir == str(directory)


def test_replacing_fsyncs_the_partial_before_the_rename(tmp_path, sync_log):
    target = tmp_path / "conds.pt"
    with replacing(target) as partial:
        assert partial.parent == tmp_path and partial.name.startswith(PARTIAL_PREFIX)
        partial.write_bytes(b"payload")  # as a codec writes it, by path
    assert target.read_bytes() == b"payload"
    assert_synced_then_renamed(sync_log, tmp_path)
    assert oct(target.stat().st_mode & 0o777) == oct(atomic_files.SHARED_FILE_MODE)
    assert not partials(tmp_path)


def test_write_replacing_fsyncs_the_data_and_the_directory(tmp_path, sync_log):
    target = tmp_path / "voice_usage.json"
    target.write_text("old")
    write_replacing(target, b"new")
    assert target.read_bytes() == b"new"
    assert_synced_then_renamed(sync_log, tmp_path)
    assert not partials(tmp_path)


def test_write_partial_is_fsynced_and_readable_by_others(tmp_path, sync_log):
    partial = write_partial(tmp_path, ".json", b"{}")
    assert sync_log == [("fsync", str(partial))]
    assert partial.read_bytes() == b"{}" and partial.stat().st_mode & 0o777 == atomic_files.SHARED_FILE_MODE


def test_a_failed_block_keeps_the_old_file_and_leaves_nothing(tmp_path):
    target = tmp_path / "data.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with replacing(target) as partial:
            partial.write_bytes(b"half")
            raise RuntimeError("codec failed")
    assert target.read_bytes() == b"old" and not partials(tmp_path)


def test_a_failed_fsync_keeps_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "data.bin"
    target.write_bytes(b"old")

    def failing_fsync(fd):
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(OSError):
        write_replacing(target, b"new")
    with pytest.raises(OSError):
        with replacing(target) as partial:
            partial.write_bytes(b"new")
    assert target.read_bytes() == b"old" and not partials(tmp_path)


def test_a_directory_that_cannot_be_synced_is_no_error(tmp_path, monkeypatch):
    real_fsync = os.fsync

    def fsync(fd):
        if os.path.isdir(os.readlink(f"/proc/self/fd/{fd}")):
            raise OSError(errno.EINVAL, "not on this filesystem")
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    write_replacing(tmp_path / "a.json", b"1")
    assert (tmp_path / "a.json").read_bytes() == b"1"


# ---------------------------------------------------------------------------- locks


@pytest.fixture(autouse=True)
def _fresh_probes():
    file_locks.forget_probes()
    yield
    file_locks.forget_probes()


def refuse_flock(monkeypatch, code: int) -> None:
    def flock(fd, operation):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(fcntl, "flock", flock)


@pytest.fixture
def without_flock(monkeypatch):
    """A filesystem that refuses flock (ENOLCK: a network mount without a lock daemon)."""
    file_locks.forget_probes()
    refuse_flock(monkeypatch, errno.ENOLCK)
    yield
    file_locks.forget_probes()


def test_flock_lock_excludes_a_second_holder(tmp_path):
    path = tmp_path / "sub" / "data.lock"
    lock = file_locks.volume_lock(path)
    assert isinstance(lock, filelock.FileLock) and not isinstance(lock, filelock.SoftFileLock)
    with lock:
        with pytest.raises(filelock.Timeout):
            file_locks.volume_lock(path, timeout=0.05).acquire()
    with file_locks.volume_lock(path, timeout=0.05):
        pass


@pytest.mark.parametrize("code", [errno.ENOSYS, errno.ENOLCK, errno.EOPNOTSUPP])
def test_filesystem_without_flock_gets_a_soft_lock_and_one_warning(tmp_path, monkeypatch, caplog, code):
    refuse_flock(monkeypatch, code)
    path = tmp_path / "data.lock"
    with caplog.at_level(logging.WARNING, logger="file_locks"):
        lock = file_locks.volume_lock(path, timeout=1)
        assert isinstance(lock, filelock.SoftFileLock)
        assert not path.exists()  # the probe's own file must not look like a held lock
        with lock:
            assert path.exists()
            with pytest.raises(filelock.Timeout):
                file_locks.volume_lock(path, timeout=0.05).acquire()
        assert not path.exists()
        with file_locks.volume_lock(path, timeout=1):
            pass
    assert caplog.text.count("refuses flock") == 1


def test_a_lock_held_by_another_process_is_not_taken_for_missing_flock(tmp_path):
    path = tmp_path / "data.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # another open file description: as another worker
        lock = file_locks.volume_lock(path, timeout=0.05)
        assert not isinstance(lock, filelock.SoftFileLock)
        with pytest.raises(filelock.Timeout):
            lock.acquire()
    finally:
        os.close(fd)
