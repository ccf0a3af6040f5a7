"""Graceful shutdown on SIGTERM (RunPod's scale-down), the same steps in both modes.

1. Stop admitting: the gate refuses new jobs (HTTP 503 with ``Retry-After``; a queue job
   gets an error result, though the SDK stops taking jobs itself).
2. Let the jobs in flight finish within ``SHUTDOWN_GRACE_S``; cancel the rest with a clear
   error (their engine rows leave at the next decode step) and wait briefly for them to answer.
3. Flush the conditionals disk tier: its writes are atomic (temp file, then rename), so a
   write is either complete or absent, never half-written.
4. Then the process ends normally (exit 0): the HTTP servers are told to exit; in queue
   mode the RunPod SDK's own handler, which this one chains, ends its loop.
"""
from __future__ import annotations

import asyncio
import logging
import signal
import threading
from collections.abc import Callable
from typing import Any

from chatterbox_worker.engine.cancellation import SHUTTING_DOWN
from chatterbox_worker.serving.gate import JobGate

logger = logging.getLogger("chatterbox_worker")

CACHE_FLUSH_TIMEOUT_S = 30.0  # a stuck volume must not hang shutdown
SHUTDOWN_SIGNALS = (signal.SIGTERM, signal.SIGINT)
CacheSource = Callable[[], Any]
_tasks: set[asyncio.Task] = set()  # the running shutdowns, kept from the garbage collector


def flush_cache(cache_source: CacheSource) -> None:
    """Wait for the conditionals cache's pending disk writes (bounded)."""
    try:
        cache = cache_source()
    except Exception:  # a worker that never loaded has nothing to flush
        return
    if cache is not None and not cache.flush(CACHE_FLUSH_TIMEOUT_S):
        logger.warning("conditionals disk writes still pending after %g s; leaving them", CACHE_FLUSH_TIMEOUT_S)


def finish(cache_source: CacheSource, cancelled: int) -> None:
    """Step 3 and the last word, on a thread of their own: in queue mode the SDK's loop ends
    once its jobs have answered, and may cancel the shutdown task before this is done; the
    loop's end still waits for the thread, so the flush and the log line are never cut off."""
    flush_cache(cache_source)
    logger.info("shutdown complete: %d job(s) cancelled after the grace period", cancelled)


async def shut_down(gate: JobGate | None, cache_source: CacheSource) -> int:
    """Steps 1-3 of the module: returns how many jobs had to be cancelled."""
    try:
        if gate is not None:
            await gate.shutdown()
    finally:
        # In queue mode the SDK's loop ends as soon as its jobs have answered, and cancels this
        # task if the gate's wait has not returned by then: flush and say so all the same.
        cancelled = gate.cancelled[SHUTTING_DOWN] if gate is not None else 0
        await asyncio.to_thread(finish, cache_source, cancelled)
    return cancelled


def start_shutdown(gate: JobGate | None, cache_source: CacheSource, then: Callable[[], None] | None = None) -> None:
    """Run :func:`shut_down` on the running loop once per gate, then ``then()`` (e.g. stop the servers)."""
    if gate is not None:
        if gate.admission.stats().closed:
            return  # already shutting down (a second signal)
        gate.admission.close()  # at once: nothing more is admitted while the task starts

    async def run() -> None:
        try:
            await shut_down(gate, cache_source)
        finally:
            if then is not None:
                then()

    task = asyncio.ensure_future(run())
    _tasks.add(task)
    task.add_done_callback(_tasks.discard)


def install_queue_shutdown(gate: JobGate, loop: asyncio.AbstractEventLoop, cache_source: CacheSource) -> bool:
    """Chain SIGTERM and SIGINT in queue mode: the SDK's handler (installed before the first
    job) stops taking jobs and waits for the running ones; this one drains the gate within
    the grace period and flushes the cache. False where signals cannot be caught (not the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        return False
    for sig in SHUTDOWN_SIGNALS:
        previous = signal.getsignal(sig)

        def on_signal(signum, frame, previous=previous) -> None:
            logger.info("signal %d: shutting down", signum)
            loop.call_soon_threadsafe(start_shutdown, gate, cache_source)
            if callable(previous):
                previous(signum, frame)
        signal.signal(sig, on_signal)
    return True

