"""Voice library: saving voices atomically, the layouts it reads, and its listings."""
from __future__ import annotations

import errno
import json
import os
import threading
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

import optimized_voice_library as ovl
from chatterbox_worker.contract.errors import JobError, VoiceLibraryError, VoiceNotFoundError
from chatterbox_worker.voices.catalog_store import LOCK_FILENAME
from chatterbox_worker.voices.validation import VOICE_ID_PATTERN
from optimized_voice_library import OptimizedVoiceLibrary
from tests.unit.test_voice_library import (  # noqa: F401 - fixtures and helpers shared with the read side
    _no_env,
    build_legacy_library,
    legacy_entry,
    legacy_lib,
    make_audio,
    temp_files,
)

SR = 24000
PCM24_STEP = 1.0 / 2**23



REPO_ROOT = Path(__file__).resolve().parents[2]

# ------------------------------------------------------------------------- saving


def test_save_then_reload_in_a_new_instance(tmp_path):
    audio = make_audio(5, seconds=1.0)
    entry = OptimizedVoiceLibrary(tmp_path).save_voice(
        "Nova", audio, SR, description="calm narrator", gender="female", original_file="nova.wav")
    assert set(entry) == {"voice_id", "speaker_name", "gender", "original_file", "embedding_file", "duration",
                          "sample_rate", "created_at", "type", "description"}
    assert VOICE_ID_PATTERN.match(entry["voice_id"])
    assert entry["embedding_file"] == f"voice_embeddings/{entry['voice_id']}.flac"
    assert entry["type"] == "flac_audio" and entry["sample_rate"] == SR and entry["duration"] == 1.0
    info = sf.info(str(tmp_path / entry["embedding_file"]))
    assert info.format == "FLAC" and info.subtype == "PCM_24"

    lib = OptimizedVoiceLibrary(tmp_path)
    by_name = lib.get_voice_audio_by_name("nova")
    by_id = lib.get_voice_audio(entry["voice_id"])
    assert by_name.voice_id == by_id.voice_id == entry["voice_id"]
    np.testing.assert_allclose(by_id.samples, audio, atol=PCM24_STEP)
    assert lib.get_voice_info(entry["voice_id"]) == entry
    assert json.loads((tmp_path / "name_mapping.json").read_text()) == {"Nova": entry["voice_id"]}
    assert not temp_files(tmp_path)


def test_save_is_lossless_for_16bit_audio(tmp_path):
    audio = (np.random.default_rng(0).integers(-32768, 32767, SR // 4) / 32768).astype(np.float32)
    lib = OptimizedVoiceLibrary(tmp_path)
    entry = lib.save_voice("Pcm", audio, SR)
    np.testing.assert_array_equal(lib.get_voice_audio(entry["voice_id"]).samples, audio)


def test_resave_same_name_keeps_id_and_drops_stale_cache(legacy_lib):
    root, audios = legacy_lib
    lib = OptimizedVoiceLibrary(root)
    old = lib.get_voice_audio_by_name("Amy")
    np.testing.assert_array_equal(old.samples, audios["de16e46c"])
    new_audio = make_audio(77, seconds=0.75)
    entry = lib.save_voice("amy", new_audio, SR, gender="female")
    assert entry["voice_id"] == "de16e46c"
    # Legacy deployment: the new file sits beside the old ones, in embeddings/.
    assert entry["embedding_file"] == "embeddings/de16e46c.flac"
    fresh = lib.get_voice_audio_by_name("Amy")
    assert fresh.content_hash != old.content_hash and fresh.duration == pytest.approx(0.75)
    np.testing.assert_allclose(fresh.samples, new_audio, atol=PCM24_STEP)
    catalog = json.loads((root / "voice_catalog.json").read_text())
    assert len(catalog) == 3 and catalog["de16e46c"]["type"] == "flac_audio"
    # The other legacy entries are written back untouched.
    assert catalog["0a1b2c3d"] == legacy_entry("0a1b2c3d", "Aaron", "male")
    mapping = json.loads((root / "name_mapping.json").read_text())
    assert mapping["amy"] == "de16e46c" and "Amy" not in mapping


def test_fixed_voice_id_is_validated(tmp_path):
    lib = OptimizedVoiceLibrary(tmp_path)
    assert lib.save_voice("Amy", make_audio(0), SR, voice_id="DE16E46C")["voice_id"] == "de16e46c"
    with pytest.raises(JobError, match="voice_id"):
        lib.save_voice("Bob", make_audio(0), SR, voice_id="../x")
    with pytest.raises(JobError, match="already belongs"):
        lib.save_voice("Bob", make_audio(0), SR, voice_id="de16e46c")


@pytest.mark.parametrize("bad", ["", "   ", "x" * 101, "Amy\nSmith", "tab\there", "nul\x00"])
def test_invalid_names_are_rejected(tmp_path, bad):
    with pytest.raises(JobError) as info:
        OptimizedVoiceLibrary(tmp_path).save_voice(bad, make_audio(0), SR)
    assert info.value.field == "voice_name"
    assert not (tmp_path / "voice_catalog.json").exists()


def test_file_name_never_comes_from_the_client_name(tmp_path):
    entry = OptimizedVoiceLibrary(tmp_path).save_voice("../../etc/passwd", make_audio(0), SR)
    assert entry["embedding_file"] == f"voice_embeddings/{entry['voice_id']}.flac"
    assert sorted(p.name for p in (tmp_path / "voice_embeddings").iterdir()) == [f"{entry['voice_id']}.flac"]


def test_save_creates_a_missing_library_dir(tmp_path):
    root = tmp_path / "volume" / "voices"
    entry = OptimizedVoiceLibrary(root).save_voice("Nova", make_audio(0), SR)
    assert (root / entry["embedding_file"]).is_file() and (root / "voice_catalog.json").is_file()


def test_save_beside_top_level_files_and_never_outside(tmp_path):
    (tmp_path / "lib").mkdir()
    sf.write(tmp_path / "lib" / "a.wav", make_audio(0), SR)
    catalog = {
        "aaaaaaaa": legacy_entry("aaaaaaaa", "Top", embedding_file="a.wav"),
        "bbbbbbbb": legacy_entry("bbbbbbbb", "Out1", embedding_file="../elsewhere/b.pkl.gz"),
        "cccccccc": legacy_entry("cccccccc", "Out2", embedding_file="../elsewhere/c.pkl.gz"),
    }
    (tmp_path / "lib" / "voice_catalog.json").write_text(json.dumps(catalog))
    entry = OptimizedVoiceLibrary(tmp_path / "lib").save_voice("Nova", make_audio(1), SR)
    assert entry["embedding_file"] == f"{entry['voice_id']}.flac"
    assert not (tmp_path / "elsewhere").exists()


def test_concurrent_saves_leave_a_valid_catalog(tmp_path):
    lib = OptimizedVoiceLibrary(tmp_path)
    errors = []

    def save(name: str, seed: int) -> None:
        try:
            lib.save_voice(name, make_audio(seed, seconds=0.2), SR)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=save, args=(f"Voice {i}", i)) for i in range(8)]
    threads += [threading.Thread(target=save, args=("Shared", 100 + i)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    catalog = json.loads((tmp_path / "voice_catalog.json").read_text())
    assert sorted(e["speaker_name"] for e in catalog.values()) == sorted([f"Voice {i}" for i in range(8)] + ["Shared"])
    files = sorted(p.name for p in (tmp_path / "voice_embeddings").iterdir())
    assert files == sorted(f"{v}.flac" for v in catalog)
    assert not temp_files(tmp_path)
    fresh = OptimizedVoiceLibrary(tmp_path)
    for voice_id in catalog:
        assert fresh.get_voice_audio(voice_id).duration == pytest.approx(0.2)
    assert set(json.loads((tmp_path / "name_mapping.json").read_text()).values()) == set(catalog)


def test_disk_full_gives_a_clear_error_and_no_leftovers(legacy_lib, monkeypatch):
    root, _ = legacy_lib
    lib = OptimizedVoiceLibrary(root)
    catalog_before = (root / "voice_catalog.json").read_bytes()
    files_before = sorted(p.relative_to(root) for p in root.rglob("*") if p.name != LOCK_FILENAME)

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "replace", no_space)
    with pytest.raises(VoiceLibraryError) as info:
        lib.save_voice("Nova", make_audio(0), SR)
    message = str(info.value)
    assert info.value.field == "save_to_library"
    assert str(root.resolve()) in message and "VOICE_LIBRARY_DIR" in message and "writable" in message
    assert not temp_files(root)
    assert (root / "voice_catalog.json").read_bytes() == catalog_before
    assert sorted(p.relative_to(root) for p in root.rglob("*") if p.name != LOCK_FILENAME) == files_before
    monkeypatch.undo()
    with pytest.raises(VoiceNotFoundError):
        lib.resolve_voice_id("Nova")


def test_failed_temp_write_leaves_nothing(tmp_path, monkeypatch):
    lib = OptimizedVoiceLibrary(tmp_path)
    real_fsync = os.fsync
    calls = []

    def failing_fsync(fd):
        calls.append(fd)
        if len(calls) == 2:  # the catalog temp file, after the audio temp file
            raise OSError(errno.EIO, "I/O error")
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(VoiceLibraryError, match="save_to_library"):
        lib.save_voice("Nova", make_audio(0), SR)
    assert not temp_files(tmp_path)
    assert not (tmp_path / "voice_catalog.json").exists()
    assert not any((tmp_path / "voice_embeddings").iterdir())


# --------------------------------------------------------- layouts and listings


def test_legacy_deployment_folder_as_library_dir(tmp_path):
    deployment = tmp_path / "runpod-volume" / "voice_embeddings"
    audios = build_legacy_library(deployment, [("de16e46c", "Amy", "female"), ("0a1b2c3d", "Aaron", "male")],
                                  mapping={"Amy": "de16e46c", "Aaron": "0a1b2c3d"})
    (deployment / "quick_index.json").write_text(json.dumps({"amy": "de16e46c"}))
    (deployment / "stats.json").write_text("{}")
    lib = OptimizedVoiceLibrary(deployment)
    np.testing.assert_array_equal(lib.get_voice_audio_by_name("Aaron").samples, audios["0a1b2c3d"])
    entry = lib.save_voice("Cleo", make_audio(8), SR)
    assert entry["embedding_file"] == f"embeddings/{entry['voice_id']}.flac"
    assert (deployment / "embeddings" / f"{entry['voice_id']}.flac").is_file()


def test_shipped_demo_library_loads():
    lib = OptimizedVoiceLibrary(REPO_ROOT)
    voices = lib.list_voices()
    assert 5 <= len(voices) <= 6
    assert lib.resolve_voice_id("Amy") == "de16e46c"
    amy = lib.get_voice_audio_by_name("Amy")
    assert amy.sample_rate == SR and 8.0 <= amy.duration <= 12.0
    assert np.max(np.abs(amy.samples)) == pytest.approx(0.9, abs=1e-3)
    assert lib.get_voice_info("de16e46c")["gender"] == "female"
    genders = {v["gender"] for v in voices}
    assert genders == {"female", "male"}
    total = sum((REPO_ROOT / lib.get_voice_info(v["voice_id"])["embedding_file"]).stat().st_size for v in voices)
    assert total < 10 * 1024 * 1024
    assert not (REPO_ROOT / LOCK_FILENAME).exists()


def test_list_search_and_stats_shapes(legacy_lib):
    root, _ = legacy_lib
    lib = OptimizedVoiceLibrary(root)
    # A fixed id: a random one could contain "aa" and match the id search below.
    lib.save_voice("zed", make_audio(1), SR, description="Deep gravelly narrator", gender="male",
                   voice_id="12345678")
    keys = {"voice_id", "speaker_name", "gender", "duration", "original_file", "type", "deletable"}
    voices = lib.list_voices()
    assert [v["speaker_name"] for v in voices] == ["Aaron", "Amy", "Bella", "zed"]
    assert all(set(v) == keys for v in voices)

    assert [v["speaker_name"] for v in lib.search_voices(gender="FEMALE")] == ["Amy", "Bella"]
    assert [v["speaker_name"] for v in lib.search_voices("aa", gender="male")] == ["Aaron"]
    assert [v["speaker_name"] for v in lib.search_voices("gravelly")] == ["zed"]
    assert [v["voice_id"] for v in lib.search_voices("DE16")] == ["de16e46c"]
    assert lib.search_voices("nobody") == []
    assert len(lib.search_voices()) == 4

    lib.get_voice_audio("de16e46c")
    stats = lib.get_stats()
    assert set(stats) == {"total_voices", "gender_distribution", "average_duration", "cache_size", "max_cache_size",
                          "cache_bytes", "max_cache_bytes", "hits", "misses", "evictions", "library_dir"}
    assert stats["total_voices"] == 4
    assert stats["gender_distribution"] == {"female": 2, "male": 2}
    assert stats["average_duration"] == pytest.approx(0.5)
    assert stats["cache_size"] == 1 and stats["misses"] == 1 and stats["library_dir"] == str(root.resolve())
    assert stats["max_cache_size"] == ovl.DEFAULT_CACHE_MAX_VOICES
    assert stats["max_cache_bytes"] == ovl.DEFAULT_CACHE_MAX_MB * 1024 * 1024
    info = lib.get_voice_info("de16e46c")
    info["speaker_name"] = "changed"
    assert lib.get_voice_info("de16e46c")["speaker_name"] == "Amy"


def test_module_does_not_import_torch():
    source = (REPO_ROOT / "optimized_voice_library.py").read_text()
    assert "import torch" not in source and "pickle.load(" not in source and "pickle.loads(" not in source
