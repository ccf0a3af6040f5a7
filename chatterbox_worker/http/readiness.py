"""The HTTP server's worker: loaded once on a background thread, and how far it has got.

The server answers ``/ping`` (204) while the model loads, so RunPod sees the worker start;
routes reach the worker through :func:`worker_state` and :meth:`WorkerState.require`.
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request

from chatterbox_worker.contract.errors import ServiceUnavailableError
from chatterbox_worker.http.openai_errors import model_loading

logger = logging.getLogger("chatterbox_worker.http")

PING_PATH = "/ping"  # RunPod's health check: open without the bearer token
WorkerSource = Callable[[], Any]


@dataclass
class WorkerState:
    """Loads the worker once, in the background, and says how far it has got."""

    source: WorkerSource
    worker: Any = None
    error: str | None = None
    _started: threading.Event = field(default_factory=threading.Event)
    _done: threading.Event = field(default_factory=threading.Event)

    def start_loading(self) -> None:
        if self._started.is_set():
            return
        self._started.set()
        threading.Thread(target=self._load, name="load-worker", daemon=True).start()

    def _load(self) -> None:
        try:
            self.worker = self.source()
        except Exception as exc:  # reported by /ping and every request
            self.error = str(exc)
            logger.error("the worker could not start: %s", exc)
        finally:
            self._done.set()

    def wait(self, timeout: float | None = None) -> bool:
        return self._done.wait(timeout)

    @property
    def status(self) -> str:
        if not self._done.is_set():
            return "loading"
        return "ready" if self.worker is not None else "failed"

    def require(self) -> Any:
        if self.worker is not None:
            return self.worker
        if self.error is not None:
            raise ServiceUnavailableError(self.error)
        raise model_loading()


async def worker_state(request: Request) -> WorkerState:
    """The app's :class:`WorkerState` (a route dependency)."""
    return request.app.state.worker_state
