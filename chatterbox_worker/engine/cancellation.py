"""Cancelling a job that nobody waits for: a scope that reaches the job's engine requests.

A job runs on a thread of its own, and the event loop that owns its client (the RunPod
task, the HTTP connection) cannot stop a thread. So the loop opens a :class:`CancelScope`
and runs the job inside it (:func:`scope_context`, or ``contextvars`` copied into the
thread: ``asyncio.to_thread`` does that itself). Whatever the job starts inside the
scope registers a way to stop it (:meth:`CancelScope.on_cancel`): the T3 engine aborts
the job's request, which leaves the batch at the engine's next step and wakes the job's
thread with the scope's error. Work between engine calls (an S3Gen window) checks
:meth:`CancelScope.raise_if_cancelled` before it starts.

Contract:

* ``cancel(error)`` is thread-safe and idempotent: the first error wins, every callback
  registered before or after runs once, with that error.
* ``raise_if_cancelled()`` raises the scope's error, a :class:`JobCancelled`.
* :func:`current_scope` is the scope of the running thread or task, or None outside one.

No torch here, so that the serving layer and torch-free tests use it.
"""
from __future__ import annotations

import contextlib
import contextvars
import logging
import threading
from collections.abc import Callable, Iterator

from chatterbox_worker.contract.errors import SERVER_ERROR, ClassifiedError, Failure, Fault

logger = logging.getLogger(__name__)

_CURRENT: contextvars.ContextVar[CancelScope | None] = contextvars.ContextVar("chatterbox_cancel_scope",
                                                                              default=None)
TIMEOUT_STATUS = 504
CLIENT_CLOSED_STATUS = 499  # nginx's convention; nobody reads it, the client has gone
UNAVAILABLE_STATUS = 503
SHUTTING_DOWN = "shutting_down"  # the reason of a job cancelled at shutdown, after the grace period


class JobCancelled(ClassifiedError):
    """A job stopped before its end; ``reason`` says why (``client_gone``, ``timeout``, ...)."""

    def __init__(self, reason: str, message: str, status: int, fault: Fault = Fault.UNAVAILABLE):
        # UNAVAILABLE: nothing is logged as a fault of the worker, and no worker replacement.
        super().__init__(Failure(fault, message, message, status=status, type=SERVER_ERROR, code=reason))
        self.reason = reason


def client_gone() -> JobCancelled:
    return JobCancelled("client_gone", "server: the client closed the connection; the job was stopped",
                        CLIENT_CLOSED_STATUS)


def timed_out(limit_s: float) -> JobCancelled:
    return JobCancelled("request_timeout", f"server: the request ran past REQUEST_TIMEOUT_S={limit_s:g} s and "
                        "was stopped; send shorter text or retry", TIMEOUT_STATUS)


def runpod_cancelled() -> JobCancelled:
    return JobCancelled("cancelled", "server: the job was cancelled", UNAVAILABLE_STATUS)


def shutting_down(grace_s: float) -> JobCancelled:
    return JobCancelled(SHUTTING_DOWN, f"server: the worker is shutting down and the job did not finish within "
                        f"SHUTDOWN_GRACE_S={grace_s:g} s; retry it", UNAVAILABLE_STATUS)


class CancelScope:
    """One job's cancellation: the first :meth:`cancel` wins; callbacks run once each."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._callbacks: list[Callable[[JobCancelled], None]] = []
        self.error: JobCancelled | None = None

    @property
    def cancelled(self) -> bool:
        return self.error is not None

    def cancel(self, error: JobCancelled) -> bool:
        """Stop the job with ``error``; False when it was already cancelled."""
        with self._lock:
            if self.error is not None:
                return False
            self.error = error
            callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            _run_callback(callback, error)
        return True

    def on_cancel(self, callback: Callable[[JobCancelled], None]) -> Callable[[], None]:
        """Run ``callback(error)`` on cancel (at once if already cancelled); returns an unregister."""
        with self._lock:
            error = self.error
            if error is None:
                self._callbacks.append(callback)
        if error is not None:
            _run_callback(callback, error)

        def unregister() -> None:
            with self._lock, contextlib.suppress(ValueError):
                self._callbacks.remove(callback)
        return unregister

    def raise_if_cancelled(self) -> None:
        if self.error is not None:
            raise self.error


def _run_callback(callback: Callable[[JobCancelled], None], error: JobCancelled) -> None:
    try:
        callback(error)
    except Exception:  # one part failing to stop must not keep the others running
        logger.exception("a cancel callback failed")


def current_scope() -> CancelScope | None:
    return _CURRENT.get()


def raise_if_cancelled() -> None:
    """Raise the current scope's error, if the job has been cancelled (no-op outside a scope)."""
    scope = _CURRENT.get()
    if scope is not None:
        scope.raise_if_cancelled()


@contextlib.contextmanager
def scope_context(scope: CancelScope | None) -> Iterator[CancelScope | None]:
    """Make ``scope`` the current one for this thread or task while the block runs."""
    token = _CURRENT.set(scope)
    try:
        yield scope
    finally:
        _CURRENT.reset(token)
