"""The conditionals cache: content keys, LRU by bytes, the disk tier, its versions, bound and failures."""
from __future__ import annotations

import json
import os
import struct
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from chatterbox_worker.conditionals.cache import (
    ABANDONED_PARTIAL_SECONDS,
    CacheKey,
    ConditionalsCache,
    choose_evictions,
    scan_disk,
)
from chatterbox_worker.conditionals.fingerprint import model_version
from chatterbox_worker.contract.limits import MB
from chatterbox_worker.storage.atomic_files import PARTIAL_PREFIX
from chatterbox_worker.testing.stub_model import StubCodec, StubConditionals

ENTRY_BYTES = StubCodec().nbytes(None)


def key(n: int, variant: str = "standard") -> CacheKey:
    return CacheKey(variant, f"{n:064x}")


def builder(counter: list, fingerprint: str):
    def build():
        counter.append(fingerprint)
        return StubConditionals(fingerprint)
    return build


def test_lru_bounded_by_bytes(tmp_path):
    cache = ConditionalsCache(StubCodec(), max_bytes=3 * ENTRY_BYTES, disk_dir=None)
    built = []
    for n in range(3):
        cache.get_or_build(key(n), builder(built, str(n)))
    cache.get_or_build(key(0), builder(built, "0"))  # touch 0: 1 is now least recent
    cache.get_or_build(key(3), builder(built, "3"))
    assert key(0) in cache and key(1) not in cache and key(2) in cache and key(3) in cache
    stats = cache.stats()
    assert stats["bytes"] == 3 * ENTRY_BYTES <= stats["max_bytes"]
    assert stats["evictions"] == 1 and stats["hits"] == 1 and stats["misses"] == 4


def test_entry_larger_than_bound_is_served_not_kept():
    cache = ConditionalsCache(StubCodec(), max_bytes=ENTRY_BYTES - 1, disk_dir=None)
    lookup = cache.get_or_build(key(1), builder([], "1"))
    assert lookup.conditionals.fingerprint == "1" and key(1) not in cache


def test_disk_tier_survives_a_new_cache_and_skips_the_model(tmp_path):
    built = []
    first = ConditionalsCache(StubCodec(), disk_dir=tmp_path)
    first.get_or_build(key(1), builder(built, "one"))
    first.flush()
    restarted = ConditionalsCache(StubCodec(), disk_dir=tmp_path)
    lookup = restarted.get_or_build(key(1), builder(built, "never"))
    assert lookup.source == "disk" and lookup.conditionals.fingerprint == "one"
    assert built == ["one"]
    assert restarted.get_or_build(key(1), builder(built, "never")).source == "memory"


def test_corrupt_or_mismatched_file_is_rebuilt(tmp_path):
    built = []
    cache = ConditionalsCache(StubCodec(), disk_dir=tmp_path)
    cache.get_or_build(key(1), builder(built, "one"))
    cache.flush()
    path = cache.disk_path(key(1))
    path.write_text("{not json")
    fresh = ConditionalsCache(StubCodec(), disk_dir=tmp_path)
    assert fresh.get_or_build(key(1), builder(built, "rebuilt")).source == "computed"
    fresh.flush()
    assert fresh.stats()["disk_errors"] == 1
    # A file whose metadata names another key is not trusted either.
    other = cache.disk_path(key(2))
    other.write_text(path.read_text().replace(key(1).content_hash, key(3).content_hash))
    assert ConditionalsCache(StubCodec(), disk_dir=tmp_path).get_or_build(
        key(2), builder(built, "two")).source == "computed"


def test_variants_never_share_entries(tmp_path):
    cache = ConditionalsCache(StubCodec(), disk_dir=tmp_path)
    built = []
    cache.get_or_build(key(1, "standard"), builder(built, "std"))
    assert cache.get_or_build(key(1, "turbo"), builder(built, "turbo")).conditionals.fingerprint == "turbo"


def test_unwritable_disk_still_serves(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    cache = ConditionalsCache(StubCodec(), disk_dir=blocker / "sub")  # cannot mkdir under a file
    assert cache.get_or_build(key(1), builder([], "1")).source == "computed"
    assert cache.flush(timeout=5)
    assert cache.stats()["disk_errors"] == 1


def test_concurrent_requests_build_once(tmp_path):
    cache = ConditionalsCache(StubCodec(), disk_dir=None)
    built, gate = [], threading.Event()

    def slow_build():
        gate.wait(1)
        built.append(1)
        return StubConditionals("x")

    threads = [threading.Thread(target=cache.get_or_build, args=(key(9), slow_build)) for _ in range(8)]
    for t in threads:
        t.start()
    gate.set()
    for t in threads:
        t.join()
    assert built == [1]


@pytest.mark.parametrize("bad", ["../escape", "a/b", "", "x" * 200])
def test_key_parts_cannot_become_paths(bad):
    with pytest.raises(ValueError):
        CacheKey("standard", bad)


# -- versions: new weights never read what old weights computed ----------------------------


def write_checkpoint(ckpt: Path) -> None:
    """A tiny checkpoint laid out like chatterbox's: safetensors weights and a tokenizer."""
    ckpt.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    save_file({"proj.weight": rng.standard_normal((8, 4)).astype(np.float32),
               "proj.bias": np.zeros(8, np.float32)}, str(ckpt / "ve.safetensors"))
    save_file({"tfmr.weight": rng.standard_normal((16, 16)).astype(np.float32)}, str(ckpt / "t3_cfg.safetensors"))
    (ckpt / "tokenizer.json").write_text(json.dumps({"model": {"vocab": {"[START]": 0, "[STOP]": 1}}}))


def safetensors_header(path: Path) -> bytes:
    data = path.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    return data[:8 + length]


def test_new_checkpoint_never_reads_old_conditionals(tmp_path):
    ckpt, disk, built = tmp_path / "ckpt", tmp_path / "conds", []
    write_checkpoint(ckpt)
    old_version = model_version(ckpt)
    old = ConditionalsCache(StubCodec(), disk_dir=disk, model_versions={"standard": old_version})
    old.get_or_build(key(1), builder(built, "old weights"))
    assert old.flush(timeout=5)

    # Fine-tuning changes one tensor's values: names, shapes and so the header stay the same.
    weights = ckpt / "ve.safetensors"
    header = safetensors_header(weights)
    tensors = load_file(str(weights))
    tensors["proj.weight"][0, 0] += 1.0
    save_file(tensors, str(weights))
    assert safetensors_header(weights) == header
    new_version = model_version(ckpt)
    assert new_version != old_version

    new = ConditionalsCache(StubCodec(), disk_dir=disk, model_versions={"standard": new_version})
    lookup = new.get_or_build(key(1), builder(built, "new weights"))
    assert lookup.source == "computed" and lookup.conditionals.fingerprint == "new weights"
    assert new.flush(timeout=5)
    # A worker still on the old weights keeps its own entries.
    still_old = ConditionalsCache(StubCodec(), disk_dir=disk, model_versions={"standard": old_version})
    lookup = still_old.get_or_build(key(1), builder(built, "never"))
    assert lookup.source == "disk" and lookup.conditionals.fingerprint == "old weights"
    assert built == ["old weights", "new weights"]


def test_file_of_another_version_is_refused_even_at_the_right_path(tmp_path):
    old = ConditionalsCache(StubCodec(), disk_dir=tmp_path, model_versions={"standard": "v1"})
    old.get_or_build(key(1), builder([], "v1"))
    old.flush()
    new = ConditionalsCache(StubCodec(), disk_dir=tmp_path, model_versions={"standard": "v2"})
    new.disk_path(key(1)).parent.mkdir(parents=True)
    new.disk_path(key(1)).write_bytes(old.disk_path(key(1)).read_bytes())  # metadata still says v1
    assert new.get_or_build(key(1), builder([], "v2")).source == "computed"
    assert new.stats()["disk_errors"] == 1


def test_versions_must_be_plain_tokens(tmp_path):
    with pytest.raises(ValueError):
        ConditionalsCache(StubCodec(), disk_dir=tmp_path, model_versions={"standard": "../up"})


# -- the disk bound, shared by every worker on the volume --------------------------------


def entry_file_bytes(tmp_path: Path) -> int:
    """The size of one stub entry's file (all test entries have keys and values of one length)."""
    probe = ConditionalsCache(StubCodec(), disk_dir=tmp_path / "probe")
    probe.get_or_build(key(0), builder([], "f00"))
    probe.flush()
    return probe.disk_path(key(0)).stat().st_size


def stored(disk: Path) -> set[str]:
    return {p.stem for p in disk.rglob("*.safetensors") if not p.name.startswith(PARTIAL_PREFIX)}


def disk_total(disk: Path) -> int:
    return sum(p.stat().st_size for p in disk.rglob("*.safetensors"))


def test_disk_bound_evicts_least_recently_used_by_disk_hits(tmp_path):
    size, disk = entry_file_bytes(tmp_path), tmp_path / "conds"
    writer = ConditionalsCache(StubCodec(), disk_dir=disk, disk_max_bytes=4 * size)
    for n in range(4):
        writer.get_or_build(key(n), builder([], f"f{n:02d}"))
    assert writer.flush(timeout=5)
    # Distinct ages, oldest first: the filesystem's clock tick may give equal mtimes.
    past = time.time() - 1000
    for n in range(4):
        os.utime(writer.disk_path(key(n)), (past + n, past + n))
    reader = ConditionalsCache(StubCodec(), disk_dir=disk, disk_max_bytes=4 * size)
    for n in (0, 1):
        assert reader.get_or_build(key(n), builder([], "never")).source == "disk"
    assert reader.flush(timeout=5)  # the hits touched 0 and 1: 2 and 3 are now least recent
    for n in (4, 5):
        writer.get_or_build(key(n), builder([], f"f{n:02d}"))
    assert writer.flush(timeout=5)
    assert stored(disk) == {key(n).content_hash for n in (0, 1, 4, 5)}
    stats = writer.stats()
    assert stats["disk_evictions"] == 2 and stats["disk_bytes"] == disk_total(disk) <= stats["disk_max_bytes"]


def test_two_workers_share_one_bound(tmp_path):
    size, disk = entry_file_bytes(tmp_path), tmp_path / "conds"
    workers = [ConditionalsCache(StubCodec(), disk_dir=disk, disk_max_bytes=3 * size) for _ in range(2)]
    for n in range(10):
        worker = workers[n % 2]
        worker.get_or_build(key(n), builder([], f"f{n:02d}"))
        assert worker.flush(timeout=5)
        assert disk_total(disk) <= 3 * size
    assert key(9).content_hash in stored(disk) and len(stored(disk)) == 3
    assert sum(w.stats()["disk_evictions"] for w in workers) == 7


def test_other_versions_are_evicted_first(tmp_path):
    size, disk = entry_file_bytes(tmp_path), tmp_path / "conds"
    old = ConditionalsCache(StubCodec(), disk_dir=disk, model_versions={"standard": "v1"})
    for n in range(2):
        old.get_or_build(key(n), builder([], f"f{n:02d}"))
    assert old.flush(timeout=5)
    future = time.time() + 1000  # the old version's files look the most recently used
    for n in range(2):
        os.utime(old.disk_path(key(n)), (future, future))
    new = ConditionalsCache(StubCodec(), disk_dir=disk, disk_max_bytes=2 * size, model_versions={"standard": "v2"})
    for n in (2, 3):
        new.get_or_build(key(n), builder([], f"f{n:02d}"))
    assert new.flush(timeout=5)
    assert stored(disk) == {key(2).content_hash, key(3).content_hash}
    assert new.disk_path(key(2)).parent.name == "v2"


def test_scan_classifies_versions_layouts_and_partials(tmp_path):
    now = time.time()
    files = {
        "standard/v2/a.safetensors": False,       # current
        "standard/v1/b.safetensors": True,        # another version of a served variant
        "standard/c.safetensors": True,           # the layout before versions
        "turbo/t9/d.safetensors": False,          # a variant this worker does not serve
    }
    for name in [*files, "standard/v2/.tmp-young.safetensors", "standard/v2/.tmp-old.safetensors",
                 "standard/v2/notes.txt"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x" * 10)
    old = now - ABANDONED_PARTIAL_SECONDS - 1
    os.utime(tmp_path / "standard/v2/.tmp-old.safetensors", (old, old))
    entries, abandoned = scan_disk(tmp_path, {"standard": "v2"}, now=now)
    assert {str(e.path.relative_to(tmp_path)): e.stale for e in entries} == files
    assert abandoned == [tmp_path / "standard/v2/.tmp-old.safetensors"]
    victims = choose_evictions(entries, max_bytes=20)
    assert {str(v.path.relative_to(tmp_path)) for v in victims} == {"standard/v1/b.safetensors",
                                                                     "standard/c.safetensors"}


def test_disk_bound_of_zero_writes_nothing(tmp_path):
    cache = ConditionalsCache(StubCodec(), disk_dir=tmp_path, disk_max_bytes=0)
    cache.get_or_build(key(1), builder([], "1"))
    assert cache.flush(timeout=5) and not stored(tmp_path)


# -- one-off prompts ---------------------------------------------------------------------


def test_one_off_prompt_is_never_written_and_evicted_first(tmp_path):
    cache = ConditionalsCache(StubCodec(), max_bytes=3 * ENTRY_BYTES, disk_dir=tmp_path)
    built = []
    cache.get_or_build(key(0), builder(built, "library 0"))
    cache.get_or_build(key(1), builder(built, "library 1"))
    assert cache.get_or_build(key(2), builder(built, "upload"), persist=False).source == "computed"
    assert cache.flush(timeout=5)
    assert stored(tmp_path) == {key(0).content_hash, key(1).content_hash}
    # Full: the next library voice displaces the one-off entry, not the least recent voice.
    cache.get_or_build(key(3), builder(built, "library 3"))
    assert key(2) not in cache and key(0) in cache and key(1) in cache and key(3) in cache
    assert cache.stats()["evictions"] == 1
    # The same upload again is computed again: it was neither kept nor persisted.
    assert cache.get_or_build(key(2), builder(built, "upload"), persist=False).source == "computed"
    assert cache.flush(timeout=5) and key(2).content_hash not in stored(tmp_path)


def test_one_off_prompt_saved_to_the_library_is_persisted(tmp_path):
    cache = ConditionalsCache(StubCodec(), disk_dir=tmp_path)
    built = []
    cache.get_or_build(key(1), builder(built, "upload"), persist=False)
    lookup = cache.get_or_build(key(1), builder(built, "never"), persist=True)
    assert lookup.source == "memory" and built == ["upload"]
    assert cache.flush(timeout=5) and stored(tmp_path) == {key(1).content_hash}
    cache.evict(0.5)  # one entry: it is the library's now, and goes only when nothing else is left
    assert key(1) not in cache


# -- the background writer ---------------------------------------------------------------


class BlockingCodec(StubCodec):
    """A codec whose save waits for the test: a slow network volume."""

    def __init__(self):
        self.saving, self.release = threading.Event(), threading.Event()

    def save(self, conds, path, metadata):
        self.saving.set()
        self.release.wait(10)
        super().save(conds, path, metadata)


class FailingCodec(StubCodec):
    def save(self, conds, path, metadata):
        raise RuntimeError("volume gone")


def test_response_does_not_wait_for_the_disk_write(tmp_path):
    codec = BlockingCodec()
    cache = ConditionalsCache(codec, disk_dir=tmp_path)
    lookup = cache.get_or_build(key(1), builder([], "one"))
    assert lookup.source == "computed" and lookup.conditionals.fingerprint == "one"
    assert codec.saving.wait(5)  # the write has started and is blocked
    assert not cache.disk_path(key(1)).exists()
    assert cache.flush(timeout=0.05) is False
    codec.release.set()
    assert cache.flush(timeout=5) is True
    assert cache.disk_path(key(1)).is_file()


def test_write_error_is_counted_never_raised(tmp_path, caplog):
    cache = ConditionalsCache(FailingCodec(), disk_dir=tmp_path)
    assert cache.get_or_build(key(1), builder([], "one")).source == "computed"
    assert cache.flush(timeout=5)
    assert cache.stats()["disk_errors"] == 1 and "volume gone" in caplog.text
    assert not list(tmp_path.rglob("*.safetensors"))  # no partial file left behind


def test_stats_report_both_tiers(tmp_path):
    cache = ConditionalsCache(StubCodec(), max_bytes=5 * ENTRY_BYTES, disk_dir=tmp_path, disk_max_bytes=10 * MB)
    cache.get_or_build(key(1), builder([], "one"))
    cache.flush()
    stats = cache.stats()
    assert {"entries", "bytes", "max_bytes", "hits", "misses", "disk_hits", "evictions", "disk_errors",
            "disk_dir", "disk_bytes", "disk_max_bytes", "disk_evictions"} <= stats.keys()
    assert stats["disk_bytes"] == disk_total(tmp_path) and stats["disk_max_bytes"] == 10 * MB
    assert stats["disk_dir"] == str(tmp_path) and stats["entries"] == 1


def test_limits_default_to_the_settings(tmp_path, monkeypatch):
    from chatterbox_worker import settings

    monkeypatch.setenv("CONDITIONALS_CACHE_MAX_MB", "3")
    monkeypatch.setenv("CONDITIONALS_DISK_MAX_MB", "7")
    settings.reload_settings()
    try:
        cache = ConditionalsCache(StubCodec(), disk_dir=tmp_path)
        assert cache.max_bytes == 3 * MB and cache.disk_max_bytes == 7 * MB
    finally:
        monkeypatch.undo()
        settings.reload_settings()


def test_changed_voice_under_same_name_is_not_stale(run_job, library):
    from chatterbox_worker.testing.audio_payloads import make_wav_b64

    first = run_job({"operation": "upload_voice", "voice_name": "Vic", "reference_audio": make_wav_b64(6, freq=300)})
    a = run_job({"text": "One.", "voice_name": "Vic", "seed": 1})
    run_job({"operation": "upload_voice", "voice_name": "Vic", "reference_audio": make_wav_b64(6, freq=700)})
    b = run_job({"text": "One.", "voice_name": "Vic", "seed": 1})
    assert a["parameters"]["voice_id"] == b["parameters"]["voice_id"] == first["voice_info"]["voice_id"]
    assert b["metrics"]["cache_hit"] is False and a["audio"] != b["audio"]


class OutOfMemoryError(RuntimeError):
    """Named like torch.cuda.OutOfMemoryError, which the worker matches by name."""


def test_out_of_memory_evicts_and_retries_once(worker, stub_model, run_job, monkeypatch):
    run_job({"text": "Warm.", "voice_name": "Amy"})
    assert worker.cache.stats()["entries"] == 1
    real = stub_model.synthesize
    failures = iter([True])

    def flaky(text, **kwargs):
        if next(failures, False):
            raise OutOfMemoryError("CUDA out of memory")
        return real(text, **kwargs)

    monkeypatch.setattr(stub_model, "synthesize", flaky)
    result = run_job({"text": "Retried.", "voice_name": "Amy"})
    assert "audio" in result and worker.cache.stats()["entries"] == 0  # evicted, then served


def test_out_of_memory_twice_is_a_clear_error(stub_model, run_job, monkeypatch):
    real = stub_model.synthesize

    def always(text, **kwargs):
        raise OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(stub_model, "synthesize", always)
    result = run_job({"text": "No memory."})
    # Out of memory is the server's fault: the stable "server:" prefix tells clients to retry.
    assert result["error"].startswith("server: model:") and "out of GPU memory" in result["error"]
    monkeypatch.setattr(stub_model, "synthesize", real)
    assert "audio" in run_job({"text": "Serving again."})
