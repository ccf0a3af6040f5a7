"""RunPod entry point of the Chatterbox TTS worker: the handlers and how RunPod starts them.

Run one job:      python handler.py --test_input '{"input": {"text": "Hello"}}'
Serve on RunPod:  python -u handler.py

The worker is built by ``chatterbox_worker.serving.bootstrap``; a job is run, and its
failure rendered, by ``chatterbox_worker.serving.jobs``. The handlers below read the
worker through this module's :func:`get_worker`, so a test may replace it here.
"""
from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

from chatterbox_worker.contract.errors import ServiceUnavailableError
from chatterbox_worker.engine.cancellation import runpod_cancelled
from chatterbox_worker.serving.admission import AdmissionRefused
from chatterbox_worker.serving.async_bridge import run_blocking, stream_from_thread
from chatterbox_worker.serving.bootstrap import configure_logging, get_worker, max_concurrent_jobs
from chatterbox_worker.serving.gate import JobGate, build_gate
from chatterbox_worker.serving.jobs import run_job, stream_job
from chatterbox_worker.serving.shutdown import install_queue_shutdown
from chatterbox_worker.settings import SettingsError, get_settings

logger = logging.getLogger("chatterbox_worker")
_gate: JobGate | None = None
# Set by start(): SIGTERM is chained to the RunPod SDK's handler only in a real worker.
_under_sdk = False

__all__ = ["async_handler", "async_stream_handler", "configure_logging", "get_worker", "handle", "handler",
           "progress_reporter", "run_job", "serverless_config", "stream_handler"]


def handle(job_input: Any, progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    return run_job(job_input, get_worker, progress)


def progress_reporter(job: Any) -> Callable[[int, int], None] | None:
    """Send RunPod progress updates for long jobs, when running under the RunPod SDK."""
    serverless = getattr(sys.modules.get("runpod"), "serverless", None)
    if serverless is None or not isinstance(job, dict) or "id" not in job:
        return None
    return lambda done, total: serverless.progress_update(job, f"{done}/{total} text chunks done")


def handler(job: dict[str, Any]) -> dict[str, Any]:
    """The default handler: one dict per job, as the deployed worker's clients expect."""
    return handle(job.get("input") if isinstance(job, dict) else None, progress_reporter(job))


def stream_handler(job: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The ``STREAM_RESULTS=true`` handler: ``tts`` jobs yield audio chunks as they are made.

    Other operations yield their one result. An error is yielded as the last item.
    """
    yield from stream_job(job.get("input") if isinstance(job, dict) else None, get_worker)


def queue_gate() -> JobGate:
    """The queue worker's one gate: ``concurrency_modifier``'s bound, the time limit, SIGTERM."""
    global _gate
    if _gate is None:
        _gate = build_gate(max_concurrent_jobs())
        if _under_sdk:  # the SDK installed its signal handlers before the first job
            install_queue_shutdown(_gate, asyncio.get_running_loop(), lambda: getattr(get_worker(), "cache", None))
    return _gate


def job_id(job: Any) -> str:
    return str(job.get("id", "?")) if isinstance(job, dict) else "?"


async def async_handler(job: dict[str, Any]) -> dict[str, Any]:
    """:func:`handler` off the event loop, so that RunPod can run several jobs at once.

    The job runs inside its cancel scope: RunPod's cancel (this task cancelled) stops its
    engine work at the next decode step before ``CancelledError`` is re-raised, and
    ``REQUEST_TIMEOUT_S`` or a shutdown ends it with a clear error result."""
    gate = queue_gate()
    try:
        ticket = await gate.enter()
    except AdmissionRefused as exc:  # only while shutting down: RunPod sends no more than the bound
        return {"error": exc.message}
    logger.info("job %s started: %s", job_id(job), gate.log_line())
    try:
        return await run_blocking(handler, job, scope=ticket.scope)
    except asyncio.CancelledError:
        gate.cancel(ticket.scope, runpod_cancelled())
        raise
    finally:
        ticket.close()
        logger.info("job %s ended: %s", job_id(job), gate.log_line())


async def async_stream_handler(job: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
    """:func:`stream_handler` off the event loop; each item is posted the moment it is made."""
    gate = queue_gate()
    try:
        ticket = await gate.enter()
    except AdmissionRefused as exc:
        yield {"error": exc.message}
        return
    logger.info("job %s started: %s", job_id(job), gate.log_line())
    try:
        async for item in stream_from_thread(lambda: stream_handler(job), ticket.scope,
                                             on_leave=lambda: gate.cancel(ticket.scope, runpod_cancelled())):
            yield item
    finally:
        ticket.close()
        logger.info("job %s ended: %s", job_id(job), gate.log_line())


def serverless_config(argv: list[str]) -> dict[str, Any]:
    """The dict handler by default; the generator when STREAM_RESULTS is set. Both are async,
    and RunPod gives the worker up to ``max_concurrent_jobs()`` jobs at once.

    ``--test_input`` never iterates a generator, so a local test run uses the plain dict one.
    """
    if "--test_input" in argv:
        return {"handler": handler}
    limit = max_concurrent_jobs()
    config = {"handler": async_handler, "concurrency_modifier": lambda current: limit}
    if get_settings().stream_results:
        config.update(handler=async_stream_handler, return_aggregate_stream=True)
    return config


def start() -> None:
    """Load the worker, then hand RunPod the handlers."""
    import runpod

    global _under_sdk
    _under_sdk = True
    configure_logging()
    try:
        get_worker()  # load before the first job, so readiness means ready
    except ServiceUnavailableError:
        pass  # every job will say why, and ask RunPod to replace this worker
    try:
        config = serverless_config(sys.argv)
    except SettingsError:
        config = {"handler": handler}  # every job answers with the bad setting
    runpod.serverless.start(config)


if __name__ == "__main__":
    start()
