"""Shared fixtures: a worker around the stub model (no torch), over a copy of the demo library."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from chatterbox_worker.testing.demo_library import copy_demo_library
from chatterbox_worker.testing.stub_model import StubModel
from tests.browser.chromium import browser_missing, launched


@pytest.fixture
def library_dir(tmp_path) -> Path:
    """A writable copy of the shipped demo library."""
    return copy_demo_library(tmp_path / "library")


@pytest.fixture
def library(library_dir):
    from optimized_voice_library import OptimizedVoiceLibrary

    return OptimizedVoiceLibrary(library_dir)


@pytest.fixture
def stub_model() -> StubModel:
    return StubModel()


@pytest.fixture
def cache(tmp_path):
    from chatterbox_worker.testing.stub_worker import stub_cache

    return stub_cache(tmp_path / "conds")


@pytest.fixture
def worker(stub_model, library, cache):
    """The stub worker over the fixtures' parts, so a test can inspect each of them."""
    from chatterbox_worker.testing.stub_worker import assemble_worker

    return assemble_worker(stub_model, library, cache)


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


# Module scope, not session: Playwright's sync API runs its event loop on this thread while
# it is open, so ``asyncio.run`` in any later test would fail with "cannot be called from a
# running event loop". Closing it with the module that used it gives the thread back.
@pytest.fixture(scope="module")
def browser():
    """One headless Chromium per test module; skipped, with the reason, without one."""
    reason = browser_missing()
    if reason:
        pytest.skip(reason)
    with launched() as chromium:
        yield chromium
