"""The container's entry point: WORKER_MODE picks the queue handler or the HTTP server.

    WORKER_MODE=queue (default)  the RunPod queue handler, exactly as ``python -u handler.py``
    WORKER_MODE=http             the HTTP server for load-balancing endpoints (``server.py``)
"""
from __future__ import annotations

import runpy
import sys

from chatterbox_worker.settings import SettingsError, get_settings


def worker_mode() -> str:
    try:
        return get_settings().worker_mode
    except SettingsError:
        return "queue"  # the queue handler answers every job with the bad setting's name


if __name__ == "__main__":
    if worker_mode() == "http":
        import server

        server.main()
    else:
        sys.argv[0] = "handler.py"
        runpy.run_module("handler", run_name="__main__", alter_sys=True)
