"""Start the queue handler under the RunPod SDK with a stub worker, in one of two ways.

    python -m tests.queue_launcher LIBRARY_DIR --rp_serve_api --rp_api_host 127.0.0.1 --rp_api_port N
    python -m tests.queue_launcher --sdk-loop LIBRARY_DIR CONDITIONALS_DIR STEPS STEP_S FSYNC_DELAY_S

The real ``handler.get_worker`` would load the model; each way puts a worker around a stub
model over LIBRARY_DIR in its place.

* The first starts the SDK's local test API exactly as ``handler.py`` would (the SDK reads
  its own flags from ``sys.argv`` and ignores the rest).
* ``--sdk-loop`` runs ``handler.start()`` itself: the SDK's own job loop and signal
  handlers, taking jobs from ``RUNPOD_WEBHOOK_GET_JOB`` and posting results to
  ``RUNPOD_WEBHOOK_POST_OUTPUT`` (a test points both at a stand-in on loopback). The model
  is a stepped stub (STEPS steps of STEP_S seconds, cancellable at each), the conditionals
  cache writes to CONDITIONALS_DIR, and every fsync takes FSYNC_DELAY_S longer, as on a slow
  network volume, so that a save is still pending when a test sends SIGTERM.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

SDK_LOOP_FLAG = "--sdk-loop"


def serve_api() -> None:
    import runpod

    import handler
    from chatterbox_worker.testing.stub_worker import stub_worker

    worker = stub_worker(Path(sys.argv.pop(1)))  # no disk cache: conditionals stay in memory
    handler.get_worker = lambda: worker
    handler.configure_logging()
    runpod.serverless.start(handler.serverless_config(sys.argv))


def slow_volume(delay_s: float) -> None:
    """Every fsync waits ``delay_s`` first: a write stays a hidden partial file that long."""
    fsync = os.fsync

    def slow_fsync(fd: int) -> None:
        time.sleep(delay_s)
        fsync(fd)
    os.fsync = slow_fsync


def run_sdk_loop(library_dir: str, conditionals_dir: str, steps: str, step_s: str, fsync_delay_s: str) -> None:
    import handler
    from chatterbox_worker.testing.stepped_stub import SteppedStubModel
    from chatterbox_worker.testing.stub_worker import stub_worker

    slow_volume(float(fsync_delay_s))
    model = SteppedStubModel(step_s=float(step_s), steps=int(steps))
    worker = stub_worker(Path(library_dir), Path(conditionals_dir), model=model)
    handler.get_worker = lambda: worker
    handler.start()


def main() -> None:
    if sys.argv[1:2] == [SDK_LOOP_FLAG]:
        args, sys.argv[1:] = sys.argv[2:7], []  # the SDK parses sys.argv: leave it nothing of ours
        run_sdk_loop(*args)
    else:
        serve_api()


if __name__ == "__main__":
    main()
