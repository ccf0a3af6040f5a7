"""Start the queue handler's local test API (``--rp_serve_api``) with a stub worker.

    python -m tests.queue_launcher LIBRARY_DIR --rp_serve_api --rp_api_host 127.0.0.1 --rp_api_port N

The real ``handler.get_worker`` would load the model; this puts a worker around the stub
model over LIBRARY_DIR in its place, then starts the RunPod SDK exactly as ``handler.py``
does (the SDK reads its own flags from ``sys.argv`` and ignores the rest).
"""
from __future__ import annotations

import sys
from pathlib import Path


def stub_worker(library_dir: Path):
    from chatterbox_worker.conditionals.cache import ConditionalsCache
    from optimized_voice_library import OptimizedVoiceLibrary
    from tests.stub_model import StubCodec, StubModel
    from chatterbox_worker.serving.worker import Worker

    cache = ConditionalsCache(StubCodec(), max_bytes=10_000, disk_dir=None)
    return Worker({"standard": StubModel()}, OptimizedVoiceLibrary(library_dir), cache)


def main() -> None:
    import runpod

    import handler

    worker = stub_worker(Path(sys.argv.pop(1)))
    handler.get_worker = lambda: worker
    handler.configure_logging()
    runpod.serverless.start(handler.serverless_config(sys.argv))


if __name__ == "__main__":
    main()
