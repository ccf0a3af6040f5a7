"""The settings object: every variable typed and bounded, named in errors, listed in the README."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from chatterbox_worker.settings import Settings, SettingsError, get_settings

REPO = Path(__file__).resolve().parents[2]
# The worker's code and its testing kit (scripts, benchmarks and tests may set variables).
WORKER_CODE = sorted([*REPO.glob("*.py"), *REPO.glob("chatterbox_worker/**/*.py")])
ENV_READ = re.compile(r"os\.environ|os\.getenv|getenv\(")


def env_names() -> set[str]:
    return {Settings.env_name(name) for name in Settings.model_fields}


def readme_configuration_rows() -> set[str]:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^\| `([A-Z][A-Z0-9_]*)` \|", section, flags=re.MULTILINE))


def test_readme_lists_exactly_the_settings():
    assert readme_configuration_rows() == env_names()


def test_every_setting_has_a_description():
    for name, field in Settings.model_fields.items():
        assert field.description and "\n" not in field.description, name


def test_only_the_settings_module_reads_the_environment():
    readers = [p.name for p in WORKER_CODE if p.name != "settings.py" and ENV_READ.search(p.read_text())]
    assert readers == []


def test_defaults_load():
    settings = get_settings()
    assert settings.models == ["standard"] and settings.reject_unknown_fields is True


@pytest.mark.parametrize("name, value", [
    ("MAX_RESULT_MB", "lots"),
    ("MAX_RESULT_MB", "-1"),
    ("CHATTERBOX_MODELS", "standard,huge"),
    ("CHATTERBOX_MAX_NEW_TOKENS", "5000"),
    ("REJECT_UNKNOWN_FIELDS", "maybe"),
    ("PRELOAD_VOICES", "most"),
    ("LOG_LEVEL", "LOUD"),
    ("VOICE_CACHE_MAX_VOICES", "lots"),
    ("TTS_CHUNK_MAX_CHARS", "3"),
    ("S3GEN_MAX_BATCH", "0"),
    ("S3GEN_MAX_BATCH", "many"),
    ("PLAYGROUND", "maybe"),
    ("JOB_CHUNK_SLOTS", "0"),
    ("STREAM_LOOKAHEAD_CHUNKS", "9"),
    ("MAX_QUEUED_REQUESTS", "-1"),
    ("QUEUE_TIMEOUT_S", "0"),
    ("REQUEST_TIMEOUT_S", "lots"),
    ("SHUTDOWN_GRACE_S", "-1"),
])
def test_a_bad_value_names_the_variable(monkeypatch, name, value):
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError) as info:
        get_settings()
    assert str(info.value).startswith(f"{name}: ")


def test_values_are_parsed(monkeypatch):
    monkeypatch.setenv("CHATTERBOX_MODELS", " Turbo, standard,turbo ")
    monkeypatch.setenv("STREAM_RESULTS", "yes")
    monkeypatch.setenv("CONDITIONALS_CACHE_DIR", "off")
    monkeypatch.setenv("PRELOAD_VOICES", "ALL")
    settings = get_settings()
    assert settings.models == ["turbo", "standard"]
    assert settings.stream_results is True and settings.conditionals_disk_dir is None
    assert settings.preload_voices == "all"


def test_a_bad_value_fails_every_job_with_its_name(monkeypatch):
    import handler

    monkeypatch.setenv("CHATTERBOX_MODELS", "huge")
    for _ in range(2):
        result = handler.handler({"input": {"text": "x"}})
        assert "CHATTERBOX_MODELS: " in result["error"] and result["refresh_worker"] is True, result
