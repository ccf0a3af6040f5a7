"""Start the queue handler's local test API (``--rp_serve_api``) with a stub worker.

    python -m tests.queue_launcher LIBRARY_DIR --rp_serve_api --rp_api_host 127.0.0.1 --rp_api_port N

The real ``handler.get_worker`` would load the model; this puts a worker around the stub
model over LIBRARY_DIR in its place, then starts the RunPod SDK exactly as ``handler.py``
does (the SDK reads its own flags from ``sys.argv`` and ignores the rest).
"""
from __future__ import annotations

import sys
from pathlib import Path


def main() -> None:
    import runpod

    import handler
    from chatterbox_worker.testing.stub_worker import stub_worker

    worker = stub_worker(Path(sys.argv.pop(1)))  # no disk cache: conditionals stay in memory
    handler.get_worker = lambda: worker
    handler.configure_logging()
    runpod.serverless.start(handler.serverless_config(sys.argv))


if __name__ == "__main__":
    main()
