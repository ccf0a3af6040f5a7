"""Voice library: legacy format, safe loading, lookups, LRU cache and atomic saves."""
from __future__ import annotations

import gzip
import json
import os
import pathlib
import pickle
import threading
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

import optimized_voice_library as ovl
from chatterbox_worker import settings
from chatterbox_worker.audio.codec import audio_fingerprint
from chatterbox_worker.contract.errors import VoiceLibraryError, VoiceNotFoundError
from chatterbox_worker.storage.atomic_files import PARTIAL_PREFIX
from chatterbox_worker.voices import readers
from optimized_voice_library import OptimizedVoiceLibrary, VoiceAudio

REPO_ROOT = Path(__file__).resolve().parents[2]

SR = 24000
PCM24_STEP = 1.0 / 2**23


# --------------------------------------------------------------------------- helpers


def make_audio(seed: int, seconds: float = 0.5) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.uniform(-0.5, 0.5, int(SR * seconds))).astype(np.float32)


def legacy_payload(audio: np.ndarray) -> dict:
    return {"audio": audio, "sample_rate": SR, "duration": float(len(audio) / SR), "format": "chattts_compatible"}


def write_pickle_gz(path: Path, obj: object, protocol: int = 4) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(pickle.dumps(obj, protocol=protocol)))


def legacy_entry(voice_id: str, name: str, gender: str = "female", audio_len: int = SR // 2,
                 embedding_file: str | None = None) -> dict:
    return {
        "voice_id": voice_id,
        "speaker_name": name,
        "gender": gender,
        "original_file": f"{name.lower()}.wav",
        "embedding_file": embedding_file or f"embeddings/{voice_id}.pkl.gz",
        "duration": audio_len / SR,
        "sample_rate": SR,
        "created_at": "2024-03-01T12:00:00.000000",
        "type": "chattts_embedding",
    }


def build_legacy_library(root: Path, voices: list[tuple[str, str, str]], mapping: dict | None = None,
                         seconds: float = 0.5) -> dict[str, np.ndarray]:
    """A legacy deployment folder: catalog, optional mapping, embeddings/<id>.pkl.gz."""
    root.mkdir(parents=True, exist_ok=True)
    catalog, audios = {}, {}
    for i, (voice_id, name, gender) in enumerate(voices):
        audio = make_audio(i, seconds)
        write_pickle_gz(root / "embeddings" / f"{voice_id}.pkl.gz", legacy_payload(audio))
        catalog[voice_id] = legacy_entry(voice_id, name, gender, len(audio))
        audios[voice_id] = audio
    (root / "voice_catalog.json").write_text(json.dumps(catalog, indent=2))
    if mapping is not None:
        (root / "name_mapping.json").write_text(json.dumps(mapping))
    return audios


def temp_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.startswith(PARTIAL_PREFIX)]


class RunCommand:
    """A pickle that, if ever unpickled by plain pickle, runs a shell command."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


class TouchFile:
    def __init__(self, path: Path):
        self.path = pathlib.Path(path)

    def __reduce__(self):
        return (pathlib.Path.touch, (self.path,))


@pytest.fixture
def legacy_lib(tmp_path: Path) -> tuple[Path, dict[str, np.ndarray]]:
    root = tmp_path / "voice_embeddings"
    audios = build_legacy_library(
        root,
        [("de16e46c", "Amy", "female"), ("0a1b2c3d", "Aaron", "male"), ("11223344", "Bella", "female")],
        mapping={"Amy": "de16e46c", "Aaron": "0a1b2c3d", "Bella": "11223344"},
    )
    return root, audios


@pytest.fixture(autouse=True)
def _no_env(monkeypatch: pytest.MonkeyPatch):
    for name in (ovl.LIBRARY_DIR_ENV, ovl.CACHE_MAX_VOICES_ENV, ovl.CACHE_MAX_MB_ENV):
        monkeypatch.delenv(name, raising=False)
    settings.get_settings.cache_clear()
    yield
    settings.get_settings.cache_clear()


# ------------------------------------------------------------------ legacy format


def test_legacy_pickle_is_read_exactly_and_read_only(legacy_lib):
    root, audios = legacy_lib
    lib = OptimizedVoiceLibrary(root)
    voice = lib.get_voice_audio("de16e46c")
    assert isinstance(voice, VoiceAudio)
    assert voice.voice_id == "de16e46c" and voice.speaker_name == "Amy" and voice.sample_rate == SR
    assert voice.samples.dtype == np.float32 and voice.samples.ndim == 1
    assert voice.samples.flags.c_contiguous
    np.testing.assert_array_equal(voice.samples, audios["de16e46c"])
    assert voice.duration == pytest.approx(0.5)
    with pytest.raises(ValueError):
        voice.samples[0] = 1.0
    assert voice.content_hash == audio_fingerprint(audios["de16e46c"], SR)


def test_numpy2_pickle_spelling_is_accepted(tmp_path):
    audio = make_audio(3)
    data = pickle.dumps(legacy_payload(audio), protocol=3)  # unframed, so bytes can be edited
    old = b"cnumpy.core.multiarray\n_reconstruct\n"
    assert old in data
    data = data.replace(old, b"cnumpy._core.multiarray\n_reconstruct\n")
    (tmp_path / "embeddings").mkdir()
    (tmp_path / "embeddings" / "de16e46c.pkl.gz").write_bytes(gzip.compress(data))
    (tmp_path / "voice_catalog.json").write_text(json.dumps({"de16e46c": legacy_entry("de16e46c", "Amy")}))
    np.testing.assert_array_equal(OptimizedVoiceLibrary(tmp_path).get_voice_audio("de16e46c").samples, audio)


@pytest.mark.parametrize("payload_kind", ["os_system", "path_touch"])
def test_malicious_pickle_is_refused_and_never_runs(tmp_path, payload_kind):
    marker = tmp_path / "MARKER"
    if payload_kind == "os_system":
        evil = RunCommand(f"touch {marker}")
        expected_ref = f"{os.system.__module__}.system"
    else:
        evil = TouchFile(marker)
        expected_ref = "pathlib.Path.touch"
    # Hidden inside an otherwise valid payload, as an attacker would do.
    payload = legacy_payload(make_audio(0))
    payload["extra"] = evil
    write_pickle_gz(tmp_path / "embeddings" / "de16e46c.pkl.gz", payload)
    (tmp_path / "voice_catalog.json").write_text(json.dumps({"de16e46c": legacy_entry("de16e46c", "Amy")}))

    lib = OptimizedVoiceLibrary(tmp_path)
    with pytest.raises(VoiceLibraryError) as info:
        lib.get_voice_audio("de16e46c")
    assert info.value.field == "voice_id"
    assert "refusing to load embeddings/de16e46c.pkl.gz" in str(info.value)
    assert expected_ref in str(info.value)
    assert not marker.exists()
    assert lib.get_stats()["cache_size"] == 0


def test_gzip_bomb_is_capped(tmp_path, monkeypatch):
    write_pickle_gz(tmp_path / "embeddings" / "de16e46c.pkl.gz", legacy_payload(make_audio(0, seconds=1.0)))
    (tmp_path / "voice_catalog.json").write_text(json.dumps({"de16e46c": legacy_entry("de16e46c", "Amy")}))
    monkeypatch.setattr(readers, "MAX_DECOMPRESSED_BYTES", 1000)
    with pytest.raises(VoiceLibraryError, match="larger than"):
        OptimizedVoiceLibrary(tmp_path).get_voice_audio("de16e46c")


@pytest.mark.parametrize(
    "payload, reason",
    [
        ([1, 2, 3], "not a voice file"),
        ({"sample_rate": SR}, "not a voice file"),
        ({"audio": np.zeros((2, 100), np.float32)}, "2-D"),
        ({"audio": np.array([0.1, np.nan], np.float32)}, "NaN"),
        ({"audio": np.zeros(0, np.float32)}, "empty"),
        ({"audio": np.arange(10, dtype=np.int16)}, "float"),
    ],
)
def test_bad_payloads_are_clear_library_errors(tmp_path, payload, reason):
    write_pickle_gz(tmp_path / "embeddings" / "de16e46c.pkl.gz", payload)
    (tmp_path / "voice_catalog.json").write_text(json.dumps({"de16e46c": legacy_entry("de16e46c", "Amy")}))
    with pytest.raises(VoiceLibraryError, match=reason) as info:
        OptimizedVoiceLibrary(tmp_path).get_voice_audio("de16e46c")
    assert "'de16e46c' (Amy)" in str(info.value)


def test_corrupt_file_names_the_voice(tmp_path):
    (tmp_path / "embeddings").mkdir()
    (tmp_path / "embeddings" / "de16e46c.pkl.gz").write_bytes(b"\x1f\x8b not really gzip")
    (tmp_path / "voice_catalog.json").write_text(json.dumps({"de16e46c": legacy_entry("de16e46c", "Amy")}))
    with pytest.raises(VoiceLibraryError) as info:
        OptimizedVoiceLibrary(tmp_path).get_voice_audio("de16e46c")
    assert info.value.field == "voice_id"
    assert "'de16e46c' (Amy)" in str(info.value) and "embeddings/de16e46c.pkl.gz" in str(info.value)


def test_wav_flac_and_npz_files_are_read(tmp_path):
    audio = np.round(make_audio(1) * 32767) / 32767
    stereo = np.stack([audio, audio], axis=1)
    sf.write(tmp_path / "a.wav", stereo, SR, subtype="PCM_16")
    sf.write(tmp_path / "b.flac", audio, 16000, subtype="PCM_24")
    np.savez(tmp_path / "c.npz", audio=audio.astype(np.float32), sample_rate=np.int64(22050))
    catalog = {
        "aaaaaaaa": legacy_entry("aaaaaaaa", "Wav", embedding_file="a.wav"),
        "bbbbbbbb": legacy_entry("bbbbbbbb", "Flac", embedding_file="b.flac"),
        "cccccccc": legacy_entry("cccccccc", "Npz", embedding_file="c.npz"),
    }
    (tmp_path / "voice_catalog.json").write_text(json.dumps(catalog))
    lib = OptimizedVoiceLibrary(tmp_path)
    for voice_id, rate in (("aaaaaaaa", SR), ("bbbbbbbb", 16000), ("cccccccc", 22050)):
        voice = lib.get_voice_audio(voice_id)
        assert voice.sample_rate == rate and voice.samples.ndim == 1 and voice.samples.dtype == np.float32
        np.testing.assert_allclose(voice.samples, audio, atol=1 / 32767)


# ------------------------------------------------------------------- voice ids


@pytest.mark.parametrize("bad", ["../etc", "de16e46", "de16e46c0", "de16e46g", "", "de16e46c/..", "de16 46c", None, 123])
def test_invalid_voice_ids_are_rejected(legacy_lib, bad):
    lib = OptimizedVoiceLibrary(legacy_lib[0])
    with pytest.raises(VoiceNotFoundError) as info:
        lib.get_voice_audio(bad)
    assert info.value.field == "voice_id"
    with pytest.raises(VoiceNotFoundError):
        lib.get_voice_info(bad)


def test_uppercase_voice_id_is_accepted(legacy_lib):
    lib = OptimizedVoiceLibrary(legacy_lib[0])
    assert lib.get_voice_audio("DE16E46C").voice_id == "de16e46c"


def test_unknown_voice_id(legacy_lib):
    with pytest.raises(VoiceNotFoundError, match="'deadbeef' not found"):
        OptimizedVoiceLibrary(legacy_lib[0]).get_voice_audio("deadbeef")


# ------------------------------------------------------------------- path safety


@pytest.mark.parametrize("escape", ["../../x.pkl.gz", "embeddings/../../x.pkl.gz", "ABSOLUTE"])
def test_embedding_file_outside_library_is_refused(tmp_path, escape):
    outside = tmp_path / "x.pkl.gz"
    write_pickle_gz(outside, legacy_payload(make_audio(0)))
    root = tmp_path / "lib" / "deep"
    root.mkdir(parents=True)
    rel = str(outside) if escape == "ABSOLUTE" else escape
    (root / "voice_catalog.json").write_text(
        json.dumps({"de16e46c": legacy_entry("de16e46c", "Amy", embedding_file=rel)}))
    with pytest.raises(VoiceLibraryError, match="points outside the voice library") as info:
        OptimizedVoiceLibrary(root).get_voice_audio("de16e46c")
    assert info.value.field == "voice_id"


def test_symlink_out_of_library_is_refused(tmp_path):
    outside = tmp_path / "outside.pkl.gz"
    write_pickle_gz(outside, legacy_payload(make_audio(0)))
    root = tmp_path / "lib"
    (root / "embeddings").mkdir(parents=True)
    (root / "embeddings" / "de16e46c.pkl.gz").symlink_to(outside)
    (root / "voice_catalog.json").write_text(json.dumps({"de16e46c": legacy_entry("de16e46c", "Amy")}))
    with pytest.raises(VoiceLibraryError, match="outside"):
        OptimizedVoiceLibrary(root).get_voice_audio("de16e46c")


def test_missing_file_names_the_voice(legacy_lib):
    root, _ = legacy_lib
    (root / "embeddings" / "0a1b2c3d.pkl.gz").unlink()
    with pytest.raises(VoiceLibraryError) as info:
        OptimizedVoiceLibrary(root).get_voice_audio("0a1b2c3d")
    assert str(info.value) == (
        "voice_id: voice '0a1b2c3d' (Aaron) is listed but its file embeddings/0a1b2c3d.pkl.gz is missing")


# ------------------------------------------------------------------------ catalog


def test_missing_catalog_is_an_empty_library(tmp_path, caplog):
    lib = OptimizedVoiceLibrary(tmp_path)
    assert lib.list_voices() == []
    assert lib.get_stats()["total_voices"] == 0
    assert "No voice catalog" in caplog.text
    with pytest.raises(VoiceNotFoundError):
        lib.get_voice_audio_by_name("Amy")


def test_invalid_catalog_raises_when_used_and_recovers(tmp_path):
    (tmp_path / "voice_catalog.json").write_text("{not json")
    lib = ovl.initialize_optimized_voice_library(tmp_path)  # must not raise
    with pytest.raises(VoiceLibraryError) as info:
        lib.list_voices()
    assert info.value.field == "voice_library"
    with pytest.raises(VoiceLibraryError):
        lib.get_voice_audio("de16e46c")
    build_legacy_library(tmp_path, [("de16e46c", "Amy", "female")])
    assert lib.get_voice_audio("de16e46c").speaker_name == "Amy"


def test_catalog_is_reread_when_another_worker_saves(legacy_lib):
    root, _ = legacy_lib
    reader = OptimizedVoiceLibrary(root)
    assert len(reader.list_voices()) == 3
    writer = OptimizedVoiceLibrary(root)
    entry = writer.save_voice("Zoe", make_audio(9), SR)
    assert reader.resolve_voice_id("Zoe") == entry["voice_id"]
    assert len(reader.list_voices()) == 4


def test_replacement_by_another_worker_drops_the_cached_audio(legacy_lib):
    root, _ = legacy_lib
    reader = OptimizedVoiceLibrary(root)
    old = reader.get_voice_audio_by_name("Amy")
    new_audio = make_audio(42)
    OptimizedVoiceLibrary(root).save_voice("Amy", new_audio, SR)
    fresh = reader.get_voice_audio_by_name("Amy")
    assert fresh.voice_id == old.voice_id == "de16e46c"
    assert fresh.content_hash != old.content_hash
    np.testing.assert_allclose(fresh.samples, new_audio, atol=PCM24_STEP)


# -------------------------------------------------------------------- name lookup


def test_name_lookup_order(tmp_path):
    build_legacy_library(
        tmp_path,
        [("aaaaaaaa", "Amy", "female"), ("bbbbbbbb", "Amy Smith", "female"), ("cccccccc", "Christopher", "male"),
         ("dddddddd", "Dana Jones", "female"), ("eeeeeeee", "Dana Brown", "female")],
        # The mapping wins over speaker names; a stale entry falls through.
        mapping={"Amy": "bbbbbbbb", "Chris": "cccccccc", "Christopher": "99999999"},
    )
    lib = OptimizedVoiceLibrary(tmp_path)
    assert lib.resolve_voice_id("Amy") == "bbbbbbbb"  # mapping, exact key
    assert lib.resolve_voice_id("amy") == "bbbbbbbb"  # mapping, any case
    assert lib.resolve_voice_id("CHRIS") == "cccccccc"
    assert lib.resolve_voice_id("Christopher") == "cccccccc"  # stale mapping -> speaker name
    assert lib.resolve_voice_id("  amy smith ") == "bbbbbbbb"  # exact speaker name, any case
    assert lib.resolve_voice_id("topher") == "cccccccc"  # unique partial
    assert lib.resolve_voice_id("jones") == "dddddddd"
    assert lib.get_voice_audio_by_name("dana b").voice_id == "eeeeeeee"

    with pytest.raises(VoiceNotFoundError) as info:
        lib.resolve_voice_id("dana")
    assert info.value.field == "voice_name"
    assert "is ambiguous: matches Dana Brown, Dana Jones" in str(info.value)

    with pytest.raises(VoiceNotFoundError) as info:
        lib.resolve_voice_id("Dena Jone")
    assert "not found; close matches: Dana Jones" in str(info.value)

    with pytest.raises(VoiceNotFoundError, match="no close matches"):
        lib.resolve_voice_id("Zyxwvut")
    with pytest.raises(VoiceNotFoundError):
        lib.resolve_voice_id("   ")


def test_exact_speaker_name_beats_partial(tmp_path):
    build_legacy_library(tmp_path, [("aaaaaaaa", "Amy", "female"), ("bbbbbbbb", "Amy Smith", "female")])
    lib = OptimizedVoiceLibrary(tmp_path)
    assert lib.resolve_voice_id("AMY") == "aaaaaaaa"
    assert lib.resolve_voice_id("smith") == "bbbbbbbb"


# -------------------------------------------------------------------------- cache


def lib_with_voices(tmp_path: Path, count: int, **kwargs) -> tuple[OptimizedVoiceLibrary, list[str]]:
    ids = [f"{i:08x}" for i in range(1, count + 1)]
    build_legacy_library(tmp_path, [(v, f"Voice {v}", "female") for v in ids], seconds=0.1)
    return OptimizedVoiceLibrary(tmp_path, **kwargs), ids


def test_lru_count_bound_and_touch_protects(tmp_path):
    lib, (a, b, c, d) = lib_with_voices(tmp_path, 4, max_cache_voices=3, max_cache_bytes=10**9)
    for v in (a, b, c):
        lib.get_voice_audio(v)
    first_a = lib.get_voice_audio(a)  # hit: a is now the most recent
    lib.get_voice_audio(d)  # evicts b, the least recent
    stats = lib.get_stats()
    assert (stats["cache_size"], stats["evictions"], stats["hits"], stats["misses"]) == (3, 1, 1, 4)
    assert lib.get_voice_audio(a) is first_a  # still cached
    assert lib.get_stats()["hits"] == 2
    lib.get_voice_audio(b)  # was evicted -> miss
    stats = lib.get_stats()
    assert stats["misses"] == 5 and stats["evictions"] == 2
    assert stats["cache_bytes"] == 3 * int(0.1 * SR) * 4


def test_lru_byte_bound(tmp_path):
    per_voice = int(0.1 * SR) * 4
    lib, ids = lib_with_voices(tmp_path, 4, max_cache_voices=100, max_cache_bytes=2 * per_voice + 10)
    for v in ids:
        lib.get_voice_audio(v)
    stats = lib.get_stats()
    assert stats["cache_size"] == 2 and stats["cache_bytes"] == 2 * per_voice
    assert stats["evictions"] == 2 and stats["max_cache_bytes"] == 2 * per_voice + 10
    lib.get_voice_audio(ids[-1])
    assert lib.get_stats()["hits"] == 1


def test_entry_larger_than_byte_bound_is_served_but_not_cached(tmp_path):
    lib, ids = lib_with_voices(tmp_path, 1, max_cache_bytes=100)
    voice = lib.get_voice_audio(ids[0])
    assert len(voice.samples) == int(0.1 * SR)
    lib.get_voice_audio(ids[0])
    stats = lib.get_stats()
    assert stats["cache_size"] == 0 and stats["misses"] == 2 and stats["evictions"] == 0


def test_cache_limits_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv(ovl.CACHE_MAX_VOICES_ENV, "5")
    monkeypatch.setenv(ovl.CACHE_MAX_MB_ENV, "1.5")
    settings.reload_settings()
    stats = OptimizedVoiceLibrary(tmp_path).get_stats()
    assert stats["max_cache_size"] == 5 and stats["max_cache_bytes"] == int(1.5 * 1024 * 1024)
    # A bad value stops start-up with an error naming the variable (no silent default).
    monkeypatch.setenv(ovl.CACHE_MAX_VOICES_ENV, "lots")
    settings.get_settings.cache_clear()
    with pytest.raises(settings.SettingsError, match=ovl.CACHE_MAX_VOICES_ENV):
        OptimizedVoiceLibrary(tmp_path)


def test_library_dir_from_environment(tmp_path, monkeypatch, legacy_lib):
    monkeypatch.setenv(ovl.LIBRARY_DIR_ENV, str(legacy_lib[0]))
    settings.reload_settings()
    assert OptimizedVoiceLibrary().library_dir == legacy_lib[0].resolve()
    monkeypatch.delenv(ovl.LIBRARY_DIR_ENV)
    settings.reload_settings()
    assert OptimizedVoiceLibrary().library_dir == REPO_ROOT


def test_concurrent_reads_share_one_cache(legacy_lib):
    lib = OptimizedVoiceLibrary(legacy_lib[0])
    results, errors = [], []

    def read():
        try:
            for _ in range(20):
                results.append(lib.get_voice_audio_by_name("Bella").content_hash)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=read) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(set(results)) == 1 and len(results) == 160
    stats = lib.get_stats()
    assert stats["hits"] + stats["misses"] == 160 and stats["cache_size"] == 1
