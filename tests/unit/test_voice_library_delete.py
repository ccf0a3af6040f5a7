"""delete_voice: saved voices go, shipped and legacy voices stay, the catalog stays valid."""
from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest

from chatterbox_worker.contract.errors import ShippedVoiceError, VoiceNotFoundError
from optimized_voice_library import OptimizedVoiceLibrary
from tests.unit.test_voice_library import build_legacy_library, make_audio, temp_files

SR = 24000
SUMMARY_KEYS = {"voice_id", "speaker_name", "gender", "duration", "original_file", "type", "deletable"}


def catalog(root: Path) -> dict:
    return json.loads((root / "voice_catalog.json").read_text())


def mapping(root: Path) -> dict:
    return json.loads((root / "name_mapping.json").read_text())


def test_saved_voice_is_deleted_everywhere(tmp_path):
    lib = OptimizedVoiceLibrary(tmp_path)
    keep = lib.save_voice("Keep", make_audio(1), SR)
    gone = lib.save_voice("Gone", make_audio(2), SR, gender="male")
    other_worker = OptimizedVoiceLibrary(tmp_path)
    other_worker.get_voice_audio(gone["voice_id"])  # cached there
    lib.get_voice_audio(gone["voice_id"])

    removed = lib.delete_voice(gone["voice_id"].upper())
    assert set(removed) == SUMMARY_KEYS
    assert removed["voice_id"] == gone["voice_id"] and removed["speaker_name"] == "Gone"
    assert removed["gender"] == "male"

    for library in (lib, other_worker, OptimizedVoiceLibrary(tmp_path)):
        assert [v["voice_id"] for v in library.list_voices()] == [keep["voice_id"]]
        with pytest.raises(VoiceNotFoundError):
            library.get_voice_audio(gone["voice_id"])
        with pytest.raises(VoiceNotFoundError):
            library.resolve_voice_id("Gone")
        assert library.get_stats()["cache_size"] == 0
    assert set(catalog(tmp_path)) == {keep["voice_id"]} and mapping(tmp_path) == {"Keep": keep["voice_id"]}
    assert not (tmp_path / gone["embedding_file"]).exists() and (tmp_path / keep["embedding_file"]).is_file()
    assert not temp_files(tmp_path)
    # The name is free again and gets a voice of its own.
    again = lib.save_voice("Gone", make_audio(3), SR)
    np.testing.assert_allclose(lib.get_voice_audio_by_name("gone").samples, make_audio(3), atol=2**-23)
    assert lib.delete_voice(again["voice_id"])["voice_id"] == again["voice_id"]


def test_legacy_and_demo_voices_are_never_deleted(tmp_path, library, library_dir):
    build_legacy_library(tmp_path / "legacy", [("de16e46c", "Amy", "female")], mapping={"Amy": "de16e46c"})
    for root, lib in ((tmp_path / "legacy", OptimizedVoiceLibrary(tmp_path / "legacy")), (library_dir, library)):
        before = (root / "voice_catalog.json").read_bytes()
        for voice in lib.list_voices():
            with pytest.raises(ShippedVoiceError) as info:
                lib.delete_voice(voice["voice_id"])
            assert info.value.field == "voice_id"
            assert f"'{voice['voice_id']}' ({voice['speaker_name']}) is a shipped voice and cannot be deleted" \
                in str(info.value)
        assert (root / "voice_catalog.json").read_bytes() == before
        assert lib.get_voice_audio_by_name("Amy").voice_id == "de16e46c"


def test_a_shipped_voice_saved_over_stays_shipped(tmp_path):
    root = tmp_path / "legacy"
    build_legacy_library(root, [("de16e46c", "Amy", "female")])
    lib = OptimizedVoiceLibrary(root)
    assert lib.save_voice("amy", make_audio(4), SR)["voice_id"] == "de16e46c"
    with pytest.raises(ShippedVoiceError, match="shipped voice"):
        lib.delete_voice("de16e46c")
    demo = lib.save_voice("Demo", make_audio(5), SR, deletable=False)
    with pytest.raises(ShippedVoiceError, match="shipped voice"):
        lib.delete_voice(demo["voice_id"])


@pytest.mark.parametrize("voice_id", ["deadbeef", "../etc/x", None])
def test_unknown_or_malformed_ids_are_refused(tmp_path, voice_id):
    lib = OptimizedVoiceLibrary(tmp_path)
    lib.save_voice("Keep", make_audio(1), SR)
    before = (tmp_path / "voice_catalog.json").read_bytes()
    with pytest.raises(VoiceNotFoundError) as info:
        lib.delete_voice(voice_id)
    assert info.value.field == "voice_id"
    assert (tmp_path / "voice_catalog.json").read_bytes() == before


def test_concurrent_saves_and_deletes_keep_the_catalog_valid(tmp_path):
    workers = [OptimizedVoiceLibrary(tmp_path), OptimizedVoiceLibrary(tmp_path)]  # two workers, one volume
    doomed = [workers[0].save_voice(f"Old {i}", make_audio(i, seconds=0.1), SR)["voice_id"] for i in range(6)]
    errors: list[Exception] = []

    def run(action, *args):
        try:
            action(*args)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(workers[i % 2].delete_voice, v)) for i, v in enumerate(doomed)]
    threads += [threading.Thread(target=run, args=(workers[i % 2].save_voice, f"New {i}",
                                                   make_audio(10 + i, seconds=0.1), SR)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    entries = catalog(tmp_path)
    assert sorted(e["speaker_name"] for e in entries.values()) == [f"New {i}" for i in range(6)]
    assert sorted(p.name for p in (tmp_path / "voice_embeddings").iterdir()) == sorted(f"{v}.flac" for v in entries)
    assert mapping(tmp_path) == {e["speaker_name"]: v for v, e in entries.items()}
    assert not temp_files(tmp_path)
    for lib in workers:
        assert {v["voice_id"] for v in lib.list_voices()} == set(entries)
        for voice_id in entries:
            assert lib.get_voice_audio(voice_id).duration == pytest.approx(0.1)
