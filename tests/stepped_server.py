"""Run the HTTP mode exactly as ``server.py`` does, over a stepped stub worker (no torch).

    python -m tests.stepped_server LIBRARY_DIR CONDITIONALS_DIR PORT STEPS STEP_S [HEALTH_PORT]

For the shutdown tests and the stub mode of the load script: the real app, the real
``serve`` (signals, grace period, cache flush), a model that takes time and stops when
cancelled. Settings come from the environment, as in a real worker.
"""
from __future__ import annotations

import asyncio
import sys
from pathlib import Path


def main() -> None:
    from chatterbox_worker.http.app import create_app, serve
    from chatterbox_worker.serving.bootstrap import configure_logging
    from chatterbox_worker.testing.stepped_stub import SteppedStubModel
    from chatterbox_worker.testing.stub_worker import stub_worker

    library_dir, conditionals_dir, port, steps, step_s = sys.argv[1:6]
    health_port = sys.argv[6] if len(sys.argv) > 6 else port
    configure_logging()
    model = SteppedStubModel(step_s=float(step_s), steps=int(steps))
    worker = stub_worker(Path(library_dir), Path(conditionals_dir), model=model)
    app = create_app(lambda: worker)
    asyncio.run(serve(app, app.state.worker_state, host="127.0.0.1", port=int(port), health_port=int(health_port)))


if __name__ == "__main__":
    main()
