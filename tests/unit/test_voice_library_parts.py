"""The voice library's parts on their own: readers, the array cache, the catalog store."""
from __future__ import annotations

import gzip
import json
import os
import pickle
import threading
from pathlib import Path

import filelock
import numpy as np
import pytest
import soundfile as sf

from chatterbox_worker.contract.errors import VoiceLibraryError
from chatterbox_worker.storage import file_locks
from chatterbox_worker.voices import catalog_store, readers
from chatterbox_worker.voices.array_cache import VoiceArrayCache
from chatterbox_worker.voices.catalog_store import LOCK_FILENAME, CatalogStore
from optimized_voice_library import OptimizedVoiceLibrary, VoiceAudio
from tests.unit.test_atomic_files import without_flock  # noqa: F401 - a fixture

REPO_ROOT = Path(__file__).resolve().parents[2]
SR = 24000


def make_audio(seed: int, n: int = 2400) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-0.5, 0.5, n).astype(np.float32)


def voice(voice_id: str, n: int) -> VoiceAudio:
    return VoiceAudio(voice_id, voice_id, np.zeros(n, np.float32), SR, voice_id)


class Evil:
    def __reduce__(self):
        return (os.system, ("true",))


# ------------------------------------------------------------------------- readers


def test_pickle_reader_reads_gzipped_and_plain_pickles(tmp_path):
    audio = make_audio(0)
    payload = {"audio": audio, "sample_rate": 22050}
    (tmp_path / "a.pkl.gz").write_bytes(gzip.compress(pickle.dumps(payload, protocol=4)))
    (tmp_path / "b.pkl").write_bytes(pickle.dumps({"audio": audio.astype(np.float64)}))
    samples, rate = readers.read_voice_file(tmp_path / "a.pkl.gz", "a.pkl.gz")
    assert rate == 22050 and samples.dtype == np.float32
    np.testing.assert_array_equal(samples, audio)
    samples, rate = readers.read_pickle_voice(tmp_path / "b.pkl", "b.pkl", default_rate=16000)
    assert rate == 16000  # no rate in the payload: the catalog's
    np.testing.assert_allclose(samples, audio)


def test_pickle_reader_refuses_any_other_global(tmp_path):
    (tmp_path / "x.pkl").write_bytes(pickle.dumps({"audio": make_audio(0), "x": Evil()}))
    with pytest.raises(VoiceLibraryError, match=f"^voice_id: {readers.REFUSAL_PREFIX} x.pkl: it references"):
        readers.read_pickle_voice(tmp_path / "x.pkl", "x.pkl")


def test_npz_reader_uses_the_default_rate_and_refuses_object_arrays(tmp_path):
    audio = make_audio(1)
    np.savez(tmp_path / "a.npz", audio=audio)
    samples, rate = readers.read_voice_file(tmp_path / "a.npz", "a.npz", default_rate=16000)
    assert rate == 16000
    np.testing.assert_array_equal(samples, audio)
    np.savez(tmp_path / "b.npz", audio=np.array([audio, "x"], dtype=object))
    with pytest.raises(ValueError):  # allow_pickle=False: never unpickled
        readers.read_npz_voice(tmp_path / "b.npz", "b.npz")
    np.savez(tmp_path / "c.npz", other=audio)
    with pytest.raises(VoiceLibraryError, match="no 'audio' array"):
        readers.read_npz_voice(tmp_path / "c.npz", "c.npz")


def test_soundfile_reader_mixes_stereo_down(tmp_path):
    left, right = make_audio(2), make_audio(3)
    sf.write(tmp_path / "s.wav", np.stack([left, right], axis=1), 16000, subtype="FLOAT")
    samples, rate = readers.read_soundfile_voice(tmp_path / "s.wav", "s.wav")
    assert rate == 16000 and samples.ndim == 1
    np.testing.assert_allclose(samples, (left + right) / 2, atol=1e-7)


def test_unsupported_suffix_is_refused(tmp_path):
    (tmp_path / "v.mp4").write_bytes(b"")
    with pytest.raises(VoiceLibraryError, match="unsupported file type"):
        readers.read_voice_file(tmp_path / "v.mp4", "v.mp4")


def test_no_part_of_the_library_uses_plain_pickle_or_torch():
    sources = [REPO_ROOT / "optimized_voice_library.py", *sorted((REPO_ROOT / "chatterbox_worker" / "voices").glob("*.py"))]
    for source in sources:
        text = source.read_text()
        assert "import torch" not in text and "pickle.load(" not in text and "pickle.loads(" not in text, source


# --------------------------------------------------------------------- array cache


def test_array_cache_count_bound_evicts_least_recent():
    cache = VoiceArrayCache(max_voices=2, max_bytes=10**9)
    cache.put("a", voice("a", 10))
    cache.put("b", voice("b", 10))
    assert cache.get("a") is not None  # a is now the most recent
    cache.put("c", voice("c", 10))
    assert sorted(cache) == ["a", "c"] and cache.evictions == 1


def test_array_cache_byte_bound_is_the_sum_of_nbytes():
    cache = VoiceArrayCache(max_voices=100, max_bytes=3 * 400)
    for key in "abcd":
        cache.put(key, voice(key, 100))  # 400 bytes each
    assert sorted(cache) == ["b", "c", "d"] and cache.currsize == 1200 and cache.evictions == 1
    cache.put("e", voice("e", 150))  # 600 bytes: two of the others must go
    assert sorted(cache) == ["d", "e"] and cache.currsize == 1000 and cache.evictions == 3


def test_array_cache_replacement_is_not_an_eviction_and_oversize_is_skipped():
    cache = VoiceArrayCache(max_voices=1, max_bytes=1000)
    cache.put("a", voice("a", 100))
    cache.put("a", voice("a", 200))
    assert len(cache) == 1 and cache.currsize == 800 and cache.evictions == 0
    cache.put("b", voice("b", 251))  # 1004 bytes: served, never cached
    assert list(cache) == ["a"] and cache.evictions == 0
    off = VoiceArrayCache(max_voices=0, max_bytes=1000)
    off.put("a", voice("a", 1))
    assert len(off) == 0


def test_library_lru_holds_both_bounds(tmp_path):
    lib = OptimizedVoiceLibrary(tmp_path, max_cache_voices=3, max_cache_bytes=2 * 2400 * 4 + 1)
    ids = [lib.save_voice(f"V{i}", make_audio(i), SR)["voice_id"] for i in range(4)]
    for voice_id in ids:
        lib.get_voice_audio(voice_id)
    stats = lib.get_stats()
    assert (stats["cache_size"], stats["cache_bytes"], stats["evictions"]) == (2, 2 * 2400 * 4, 2)
    lib = OptimizedVoiceLibrary(tmp_path, max_cache_voices=3, max_cache_bytes=10**9)
    for voice_id in ids:
        lib.get_voice_audio(voice_id)
    stats = lib.get_stats()
    assert (stats["cache_size"], stats["cache_bytes"], stats["evictions"]) == (3, 3 * 2400 * 4, 1)


def test_a_load_that_started_before_a_save_is_not_cached(tmp_path):
    lib = OptimizedVoiceLibrary(tmp_path)
    voice_id = lib.save_voice("Amy", make_audio(0), SR)["voice_id"]
    real_load = lib._load_voice

    def load_while_another_worker_saves(*args):
        loaded = real_load(*args)
        OptimizedVoiceLibrary(tmp_path).save_voice("Amy", make_audio(1), SR)
        lib.list_voices()  # this worker notices the change while the load is in flight
        return loaded

    lib._load_voice = load_while_another_worker_saves
    old = lib.get_voice_audio(voice_id)
    lib._load_voice = real_load
    assert lib.get_stats()["cache_size"] == 0
    fresh = lib.get_voice_audio(voice_id)
    assert fresh.content_hash != old.content_hash
    np.testing.assert_allclose(fresh.samples, make_audio(1), atol=2**-23)


# ------------------------------------------------------------------- catalog store


def test_store_reads_valid_entries_and_reports_changes(tmp_path):
    entry = {"speaker_name": "Amy", "embedding_file": "a.flac"}
    (tmp_path / "voice_catalog.json").write_text(json.dumps({"DE16E46C": entry, "nothex!!": entry, "0a1b2c3d": 5}))
    store = CatalogStore(tmp_path)
    state, changed = store.refresh()
    assert list(state.entries) == ["de16e46c"] and state.mapping == {} and changed == set()
    assert store.refresh() == (state, set())  # unchanged on disk: the same state, no re-read
    (tmp_path / "voice_catalog.json").write_text(json.dumps({"de16e46c": {**entry, "speaker_name": "Amy B"}}))
    _, changed = store.refresh()
    assert changed == {"de16e46c"}


def test_store_write_swaps_every_file_and_leaves_no_partials(tmp_path):
    store = CatalogStore(tmp_path)
    audio_path = tmp_path / "voice_embeddings" / "de16e46c.flac"
    audio_path.parent.mkdir()
    entries = {"de16e46c": {"speaker_name": "Amy", "embedding_file": "voice_embeddings/de16e46c.flac"}}
    with store.locked():
        state = store.write(entries, {"Amy": "de16e46c"}, audio=(audio_path, b"flac"))
    assert audio_path.read_bytes() == b"flac" and state.entries == entries
    assert state.mapping == {"Amy": "de16e46c"} and store.read() == state
    with store.locked():
        store.write({}, {}, remove=audio_path)
    assert not audio_path.exists() and json.loads((tmp_path / "voice_catalog.json").read_text()) == {}
    assert not [p for p in tmp_path.rglob(".tmp-*")]


def test_public_entries_leave_out_the_origin_mark(tmp_path):
    lib = OptimizedVoiceLibrary(tmp_path)
    entry = lib.save_voice("Amy", make_audio(0), SR)
    on_disk = json.loads((tmp_path / "voice_catalog.json").read_text())[entry["voice_id"]]
    assert on_disk[catalog_store.ORIGIN_FIELD] == catalog_store.SAVED_ORIGIN
    assert catalog_store.ORIGIN_FIELD not in entry
    assert catalog_store.ORIGIN_FIELD not in lib.get_voice_info(entry["voice_id"])


def test_saves_work_where_the_filesystem_refuses_flock(tmp_path, without_flock):
    lib = OptimizedVoiceLibrary(tmp_path)
    threads = [threading.Thread(target=lib.save_voice, args=(f"V{i}", make_audio(i), SR)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(json.loads((tmp_path / "voice_catalog.json").read_text())) == 4
    assert not (tmp_path / LOCK_FILENAME).exists()  # a soft lock is removed on release


def test_a_stuck_lock_is_a_clear_save_error(tmp_path, monkeypatch):
    monkeypatch.setattr(file_locks, "LOCK_TIMEOUT_S", 0.05)
    holder = filelock.FileLock(tmp_path / LOCK_FILENAME)
    with holder:
        with pytest.raises(VoiceLibraryError) as info:
            OptimizedVoiceLibrary(tmp_path).save_voice("Amy", make_audio(0), SR)
    assert info.value.field == "save_to_library" and "locked by another writer" in str(info.value)
