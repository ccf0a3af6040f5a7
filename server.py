"""HTTP mode's entry point: the worker as its own server, for RunPod load-balancing endpoints.

    WORKER_MODE=http python -u main.py      (or: python server.py)

The app, its routers and middleware live in ``chatterbox_worker.http`` (``app.create_app``).
"""
from __future__ import annotations

import asyncio
import logging

from chatterbox_worker.http.app import create_app, health_app, serve
from chatterbox_worker.http.readiness import WorkerState
from chatterbox_worker.serving.bootstrap import configure_logging
from chatterbox_worker.settings import SettingsError, get_settings

__all__ = ["WorkerState", "create_app", "health_app", "main", "serve"]

logger = logging.getLogger("chatterbox_worker.http")
BAD_CONFIGURATION_EXIT = 2


def main() -> None:
    configure_logging()
    try:
        settings = get_settings()
    except SettingsError as exc:
        logger.error("bad configuration: %s", exc)
        raise SystemExit(BAD_CONFIGURATION_EXIT) from None
    app = create_app()
    state: WorkerState = app.state.worker_state
    asyncio.run(serve(app, state, host=settings.http_host, port=settings.port, health_port=settings.health_port))


if __name__ == "__main__":
    main()
