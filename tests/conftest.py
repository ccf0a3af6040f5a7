"""Shared fixtures: a worker around the stub model (no torch), over a copy of the demo library."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.stub_model import StubCodec, StubModel

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent


@pytest.fixture
def library_dir(tmp_path) -> Path:
    """A writable copy of the shipped demo library."""
    target = tmp_path / "library"
    target.mkdir()
    shutil.copy(REPO / "voice_catalog.json", target)
    if (REPO / "name_mapping.json").exists():
        shutil.copy(REPO / "name_mapping.json", target)
    shutil.copytree(REPO / "voice_embeddings", target / "voice_embeddings")
    return target


@pytest.fixture
def library(library_dir):
    from optimized_voice_library import OptimizedVoiceLibrary

    return OptimizedVoiceLibrary(library_dir)


@pytest.fixture
def stub_model() -> StubModel:
    return StubModel()


@pytest.fixture
def cache(tmp_path):
    from chatterbox_worker.conditionals.cache import ConditionalsCache

    return ConditionalsCache(StubCodec(), max_bytes=10_000, disk_dir=tmp_path / "conds")


@pytest.fixture
def worker(stub_model, library, cache):
    from chatterbox_worker.serving.worker import Worker

    return Worker({"standard": stub_model}, library, cache)


@pytest.fixture
def run_job(worker, monkeypatch):
    """Run a job's input through handler.handle with the stub worker."""
    import handler

    monkeypatch.setattr(handler, "get_worker", lambda: worker)

    def run(job_input):
        result = handler.handle(job_input)
        json.dumps(result)  # every response must be JSON as RunPod posts it
        return result

    return run


@pytest.fixture(autouse=True)
def fresh_settings(monkeypatch):
    """The worker reads its settings once; a test that sets a variable gets them read again.

    ``monkeypatch.setenv`` / ``delenv`` are wrapped so that the next ``get_settings()`` sees
    the change, as a worker started with that environment would.
    """
    from chatterbox_worker.settings import get_settings

    def rereading(change):
        def wrapped(*args, **kwargs):
            change(*args, **kwargs)
            get_settings.cache_clear()
        return wrapped

    monkeypatch.setenv = rereading(monkeypatch.setenv)
    monkeypatch.delenv = rereading(monkeypatch.delenv)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


@pytest.fixture(autouse=True)
def no_real_worker_load(monkeypatch):
    """Tests inject their worker; loading the real one (hub, torch) would be a test bug."""
    from chatterbox_worker.serving import bootstrap

    def refuse():
        raise AssertionError("a test reached bootstrap.load_worker; inject a worker instead")

    monkeypatch.setattr(bootstrap, "loader", bootstrap.WorkerLoader(refuse))
