"""A worker around the stub model: the real speech pipeline, voice library and conditionals
cache, with no torch and no weights. Tests, the soak run and the queue launcher share it."""
from __future__ import annotations

from pathlib import Path

from chatterbox_worker.conditionals.cache import ConditionalsCache
from chatterbox_worker.serving.worker import Worker
from chatterbox_worker.testing.stub_model import StubCodec, StubModel

# Stub conditionals are 1000 bytes each: a small cache makes evictions happen in tests.
STUB_CACHE_MAX_BYTES = 10_000


def stub_cache(disk_dir: Path | None) -> ConditionalsCache:
    """A small conditionals cache of stub conditionals, on disk under ``disk_dir`` if given."""
    return ConditionalsCache(StubCodec(), max_bytes=STUB_CACHE_MAX_BYTES, disk_dir=disk_dir)


def assemble_worker(model, library, cache: ConditionalsCache | None) -> Worker:
    """The worker over parts the caller keeps hold of (a test inspects them afterwards)."""
    return Worker({"standard": model}, library, cache)


def stub_worker(library_dir: Path, conditionals_dir: Path | None = None, *,
                model: StubModel | None = None) -> Worker:
    """A stub worker over the library in ``library_dir`` and a small cache (on disk under
    ``conditionals_dir`` when given)."""
    from optimized_voice_library import OptimizedVoiceLibrary

    return assemble_worker(model or StubModel(), OptimizedVoiceLibrary(library_dir), stub_cache(conditionals_dir))
