"""Running one queue job's input, as the queue handler and ``POST /v1/jobs`` both do.

:func:`execute` validates and runs a job and raises its failure; :func:`attempt`,
:func:`run_job` and :func:`stream_job` answer every failure with the queue contract's error result, the
rendering of :func:`contract.errors.classify`: ``{"error": "<field>: <why>"}``, plus
``refresh_worker: true`` when RunPod should replace the worker.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from chatterbox_worker import operations
from chatterbox_worker.contract.errors import Failure, classify, log_failure
from chatterbox_worker.http import openai_api

logger = logging.getLogger("chatterbox_worker")

WorkerSource = Callable[[], Any]
Progress = Callable[[int, int], None]


def is_openai_route(job_input: Any) -> bool:
    """A job carrying RunPod's OpenAI passthrough fields."""
    return isinstance(job_input, dict) and "openai_route" in job_input


def error_result(failure: Failure) -> dict[str, Any]:
    """The queue contract's one error shape."""
    result: dict[str, Any] = {"error": failure.message}
    if failure.refresh_worker:  # RunPod replaces a worker whose result asks for it
        result["refresh_worker"] = True
    return result


@dataclass(frozen=True)
class JobOutcome:
    """A job's result, and its failure's classification when it failed."""

    result: dict[str, Any]
    failure: Failure | None = None


def failed(exc: BaseException) -> JobOutcome:
    failure = classify(exc)
    log_failure(logger, failure, exc, "job")
    return JobOutcome(error_result(failure), failure)


def execute(job_input: Any, worker_source: WorkerSource, progress: Progress | None = None) -> dict[str, Any]:
    """Validate and run one job's input; raises its failure."""
    if is_openai_route(job_input):
        return openai_api.run_route(job_input, worker_source)
    job = operations.parse_request(job_input)
    return operations.run(worker_source(), job, progress)


def attempt(job_input: Any, worker_source: WorkerSource, progress: Progress | None = None) -> JobOutcome:
    """Validate and run one job's input; a failure is classified and rendered, never raised."""
    try:
        return JobOutcome(execute(job_input, worker_source, progress))
    except Exception as exc:  # the worker must answer every job, and keep serving
        return failed(exc)


def run_job(job_input: Any, worker_source: WorkerSource, progress: Progress | None = None) -> dict[str, Any]:
    """Validate and run one job's input; every failure becomes ``{"error": str}``."""
    return attempt(job_input, worker_source, progress).result


def stream_job(job_input: Any, worker_source: WorkerSource) -> Iterator[dict[str, Any]]:
    """A job's results as they are made: a ``tts`` job's audio chunks, then its last item.

    Other operations yield their one result. An error is yielded as the last item.
    """
    if is_openai_route(job_input):  # one result, as on the dict handler
        yield run_job(job_input, worker_source)
        return
    try:
        parsed = operations.parse_request(job_input)
        yield from operations.stream(worker_source(), parsed)
    except Exception as exc:  # the worker must answer every job, and keep serving
        yield failed(exc).result
