"""The conditionals cache: content keys, LRU by bytes, the disk tier and its failures."""
from __future__ import annotations

import threading

import pytest
from stub_model import StubCodec, StubConditionals

from conditionals_cache import CacheKey, ConditionalsCache

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
    ConditionalsCache(StubCodec(), disk_dir=tmp_path).get_or_build(key(1), builder(built, "one"))
    restarted = ConditionalsCache(StubCodec(), disk_dir=tmp_path)
    lookup = restarted.get_or_build(key(1), builder(built, "never"))
    assert lookup.source == "disk" and lookup.conditionals.fingerprint == "one"
    assert built == ["one"]
    assert restarted.get_or_build(key(1), builder(built, "never")).source == "memory"


def test_corrupt_or_mismatched_file_is_rebuilt(tmp_path):
    built = []
    cache = ConditionalsCache(StubCodec(), disk_dir=tmp_path)
    cache.get_or_build(key(1), builder(built, "one"))
    path = tmp_path / "standard" / f"{key(1).content_hash}.safetensors"
    path.write_text("{not json")
    fresh = ConditionalsCache(StubCodec(), disk_dir=tmp_path)
    assert fresh.get_or_build(key(1), builder(built, "rebuilt")).source == "computed"
    assert fresh.stats()["disk_errors"] == 1
    # A file whose metadata names another key is not trusted either.
    other = tmp_path / "standard" / f"{key(2).content_hash}.safetensors"
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


def test_changed_voice_under_same_name_is_not_stale(run_job, library):
    from audio_samples import make_wav_b64

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
    assert result["error"].startswith("model:") and "out of GPU memory" in result["error"]
    monkeypatch.setattr(stub_model, "synthesize", real)
    assert "audio" in run_job({"text": "Serving again."})
