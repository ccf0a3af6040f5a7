"""Voice usage counts: shared between workers through one file, and what preloading follows."""
from __future__ import annotations

import json
import logging
import threading

import pytest

from chatterbox_worker import settings
from chatterbox_worker.conditionals.cache import CacheKey
from chatterbox_worker.voices.usage import USAGE_FILENAME, VoiceUsage
from tests.unit.test_atomic_files import without_flock  # noqa: F401 - a fixture


def test_counts_from_two_workers_add_up(tmp_path):
    path = tmp_path / USAGE_FILENAME
    first, second = VoiceUsage(path), VoiceUsage(path)
    for voice_id in ("aaaa1111", "aaaa1111", "bbbb2222"):
        first.record(voice_id)
    second.record("aaaa1111")
    assert first.flush() and second.flush()
    assert json.loads(path.read_text()) == {"aaaa1111": 3, "bbbb2222": 1}
    assert VoiceUsage(path).counts() == {"aaaa1111": 3, "bbbb2222": 1}  # a restarted worker sees them
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]


def test_unsaved_counts_are_counted_and_a_flush_saves_each_only_once(tmp_path):
    usage = VoiceUsage(tmp_path / USAGE_FILENAME)
    usage.record("aaaa1111")
    assert usage.counts() == {"aaaa1111": 1}
    usage.flush()
    usage.flush()
    assert usage.counts() == {"aaaa1111": 1}


def test_most_used_first_then_given_order():
    usage = VoiceUsage(None)
    for voice_id in ("cccc3333", "bbbb2222", "cccc3333"):
        usage.record(voice_id)
    assert usage.most_used(["aaaa1111", "bbbb2222", "cccc3333", "dddd4444"]) == \
        ["cccc3333", "bbbb2222", "aaaa1111", "dddd4444"]


def test_malformed_file_is_ignored_and_replaced(tmp_path, caplog):
    path = tmp_path / USAGE_FILENAME
    path.write_text("{not json")
    usage = VoiceUsage(path)
    with caplog.at_level(logging.WARNING):
        assert usage.counts() == {}
    assert "unreadable" in caplog.text
    path.write_text(json.dumps({"aaaa1111": "many", "bbbb2222": 2, "cccc3333": -1}))
    assert usage.counts() == {"bbbb2222": 2}  # only positive integer counts are read
    usage.record("aaaa1111")
    assert usage.flush()
    assert json.loads(path.read_text()) == {"aaaa1111": 1, "bbbb2222": 2}


def test_unwritable_location_keeps_counts_for_later(tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    usage = VoiceUsage(blocker / USAGE_FILENAME)  # its parent is a file: every write fails
    usage.record("aaaa1111")
    assert usage.flush() is False
    assert usage.counts() == {"aaaa1111": 1}


def test_background_flush_and_stop(tmp_path):
    path = tmp_path / USAGE_FILENAME
    usage = VoiceUsage(path)
    usage.start(interval_seconds=3600)
    usage.record("aaaa1111")
    usage.stop()  # the last counts are saved on the way out
    assert json.loads(path.read_text()) == {"aaaa1111": 1}


def test_jobs_count_library_voices_and_preload_follows_the_counts(worker, run_job, library, tmp_path):
    from chatterbox_worker.voices.preload import preload_voices

    usage = VoiceUsage(tmp_path / USAGE_FILENAME)
    worker.usage = usage
    names = [v["speaker_name"] for v in library.list_voices()]
    least, most = names[0], names[-1]
    for name in (most, most, least):
        assert "error" not in run_job({"text": "Hi.", "voice_name": name})
    assert "error" not in run_job({"text": "Hi."})  # the built-in voice is not a library voice
    most_id, least_id = library.resolve_voice_id(most), library.resolve_voice_id(least)
    assert usage.counts() == {most_id: 2, least_id: 1}

    worker.cache.evict(1.0)
    assert preload_voices(worker, "1", max_seconds=60) == 1
    assert usage.counts() == {most_id: 2, least_id: 1}  # preloading is not use
    hashes = {name: library.get_voice_audio(vid).content_hash for name, vid in
              (("most", most_id), ("least", least_id))}
    assert CacheKey("standard", hashes["most"]) in worker.cache
    assert CacheKey("standard", hashes["least"]) not in worker.cache


def test_preload_spec_that_is_not_a_number_prepares_nothing(worker, caplog):
    from chatterbox_worker.voices.preload import preload_voices

    with caplog.at_level(logging.ERROR):
        assert preload_voices(worker, "most", max_seconds=60) == 0
    assert "PRELOAD_VOICES" in caplog.text


@pytest.fixture
def fresh_settings():
    settings.get_settings.cache_clear()
    yield
    settings.get_settings.cache_clear()


def test_flush_interval_comes_from_settings_when_start_is_called(tmp_path, monkeypatch, fresh_settings):
    monkeypatch.setenv("VOICE_USAGE_FLUSH_SECONDS", "0.01")
    settings.reload_settings()
    path = tmp_path / USAGE_FILENAME
    usage = VoiceUsage(path)
    usage.record("aaaa1111")
    usage.start()
    try:
        for _ in range(500):
            if path.exists():
                break
            threading.Event().wait(0.01)
        assert json.loads(path.read_text()) == {"aaaa1111": 1}
    finally:
        usage.stop()


def test_bad_flush_interval_is_a_settings_error(tmp_path, monkeypatch, fresh_settings):
    monkeypatch.setenv("VOICE_USAGE_FLUSH_SECONDS", "soon")
    usage = VoiceUsage(tmp_path / USAGE_FILENAME)  # importing and building read nothing
    with pytest.raises(settings.SettingsError, match="VOICE_USAGE_FLUSH_SECONDS"):
        usage.start()


def test_counts_merge_where_the_filesystem_refuses_flock(tmp_path, without_flock):
    path = tmp_path / USAGE_FILENAME
    workers = [VoiceUsage(path) for _ in range(4)]
    for usage in workers:
        usage.record("aaaa1111")
    threads = [threading.Thread(target=usage.flush) for usage in workers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert json.loads(path.read_text()) == {"aaaa1111": 4}
    assert [p.name for p in tmp_path.iterdir()] == [USAGE_FILENAME]  # the soft lock is gone
