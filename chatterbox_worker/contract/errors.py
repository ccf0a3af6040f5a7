"""The worker's failures: the exceptions, their one classification, and the out-of-memory test.

RunPod drops a result whose ``error`` is not a string, so every failure is turned into
``{"error": "<field>: <why>"}`` at the handler boundary. The field comes first so that
clients and logs can tell at a glance which part of the job to fix.

A :class:`ServerError` is the worker's fault, not the job's (out of memory, an unwritable
library, a corrupt voice file on disk). Its text starts with :data:`SERVER_PREFIX`, a
stable marker a client can test to decide whether to retry.

:func:`classify` is the one place an exception is judged: it returns a :class:`Failure`
holding everything a surface shows (the queue handler's ``{"error": ...}``, the OpenAI
routes' error body and status, ``/v1/jobs``' status) and whether RunPod should replace the
worker. The surfaces only render it; nothing looks at an error's text to decide anything.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from enum import Enum

from chatterbox_worker.settings import SettingsError

SERVER_PREFIX = "server"
INTERNAL_PREFIX = "internal"
SERVICE_PREFIX = "service"

# OpenAI's error types.
INVALID_REQUEST = "invalid_request_error"
PERMISSION = "permission_error"
SERVER_ERROR = "server_error"


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is the device running out of memory: the one test every retry layer uses.

    torch.OutOfMemoryError (torch.cuda's too) is matched by type name, so that callers need
    no torch. Three layers act on it, from the innermost out, each once per failure:

    1. The T3 decode engine (``engine/core.py``, ``engine/scheduler.py``) replays the step.
       When a batched decode step (or a prefill) runs out of memory, the engine empties the
       CUDA cache, halves the number of jobs it decodes at once (``max_jobs``, never below
       one) and restarts every job that was in flight from its first token, under the same
       seed, at most ``MAX_OOM_RETRIES`` (1) time per job; a job out of replays gets the
       error. Each replay is counted in the job's ``memory_retries``.
    2. The S3Gen lane (``s3gen/lane.py``) halves its batch bound. When a call that decoded
       several jobs' windows together runs out of memory, every window of that call gets
       the error, and later calls take at most half as many windows (``max_batch``, never
       below one). The lane replays nothing itself: each job retries through layer 3,
       alone or in a smaller call.
    3. The speech pipeline (``pipeline/speech.py``, ``with_memory_retry``) frees and retries.
       Any step (conditionals, generation, conversion) that still fails with out of memory
       evicts the conditionals cache, releases every model's allocator, and runs once
       more; a second failure becomes :class:`OutOfMemoryJobError`, a server error. A
       stream is retried only before its first item, since a client that already has audio
       cannot be sent the start again.
    """
    return any(cls.__name__ == "OutOfMemoryError" for cls in type(exc).__mro__)


# -- the exceptions --------------------------------------------------------------------

class JobError(Exception):
    """A failure of one job, caused by its input or by data it refers to."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class ServerError(JobError):
    """A failure of one job that the worker caused; the same job may succeed on a retry."""


class VoiceNotFoundError(JobError):
    """A voice id or name that the library does not hold."""


class ShippedVoiceError(JobError):
    """A request to delete a voice the image or an old deployment ships: refused, never retried."""


class VoiceLibraryError(ServerError):
    """A voice the library lists but cannot serve, or a library it cannot write."""


class OutOfMemoryJobError(ServerError):
    """The device ran out of memory even after the worker freed what it could."""


class ServiceUnavailableError(Exception):
    """The worker cannot serve any job (for example, the model failed to load)."""


# -- the classification ----------------------------------------------------------------

class Fault(Enum):
    """Whose fault a failure is, which decides whether the same request can succeed later."""

    CLIENT = "client"  # the request must be fixed; it fails again as sent
    SERVER = "server"  # the worker's fault for this request; a retry may succeed
    UNAVAILABLE = "service"  # the worker cannot serve anything now (loading, or a failed start)
    INTERNAL = "internal"  # a bug: nothing foresaw this failure


# The status of a ``/v1/jobs`` answer: the queue contract tells no more than whose fault it is.
JOB_STATUS = {Fault.CLIENT: 400, Fault.SERVER: 500, Fault.UNAVAILABLE: 503, Fault.INTERNAL: 500}


@dataclass(frozen=True)
class Failure:
    """Everything the worker's surfaces show of one failure.

    ``message`` is the queue contract's error text; ``http_message`` the OpenAI routes'
    (the same, except that a worker that cannot serve says so in each surface's words).
    ``param`` is set only by a failure already phrased for the OpenAI routes; otherwise
    they name ``field`` in their own request's terms.
    """

    fault: Fault
    message: str
    http_message: str
    field: str | None = None
    status: int = 400  # on the OpenAI routes
    type: str = INVALID_REQUEST  # OpenAI's error type
    code: str | None = None  # OpenAI's error code
    refresh_worker: bool = False  # ask RunPod to replace this worker
    param: str | None = None

    @property
    def job_status(self) -> int:
        return JOB_STATUS[self.fault]


class ClassifiedError(Exception):
    """An error raised with its classification already made (the HTTP layer's own refusals)."""

    def __init__(self, failure: Failure):
        super().__init__(failure.message)
        self.failure = failure


def _job_failure(exc: JobError, status: int, code: str, type_: str = INVALID_REQUEST) -> Failure:
    return Failure(Fault.CLIENT, str(exc), str(exc), exc.field, status, type_, code)


def classify(exc: BaseException) -> Failure:
    """The one judgement of a failure: whose fault, and how every surface shows it."""
    if isinstance(exc, ClassifiedError):
        return exc.failure
    if isinstance(exc, (ServiceUnavailableError, SettingsError)):  # a bad variable: every job names it
        queue_text = f"{SERVICE_PREFIX}: this worker cannot serve jobs ({exc}); it will be replaced"
        return Failure(Fault.UNAVAILABLE, queue_text, f"this worker cannot serve requests: {exc}", status=503,
                       type=SERVER_ERROR, code="service_unavailable", refresh_worker=True)
    if isinstance(exc, ServerError):
        text = f"{SERVER_PREFIX}: {exc}"
        return Failure(Fault.SERVER, text, text, exc.field, 500, SERVER_ERROR, "server_error")
    if isinstance(exc, VoiceNotFoundError):
        return _job_failure(exc, 404, "voice_not_found")
    if isinstance(exc, ShippedVoiceError):
        return _job_failure(exc, 403, "voice_protected", PERMISSION)
    if isinstance(exc, JobError):
        return _job_failure(exc, 400, "invalid_value")
    text = f"{INTERNAL_PREFIX}: {type(exc).__name__}: {exc}"
    return Failure(Fault.INTERNAL, text, text, status=500, type=SERVER_ERROR, code="internal_error")


def log_failure(log: logging.Logger, failure: Failure, exc: BaseException, subject: str) -> None:
    """The worker's faults with their traceback; a client's at INFO, without one."""
    if failure.fault is Fault.SERVER:
        log.error("%s failed on the server's side", subject, exc_info=exc)
    elif failure.fault is Fault.INTERNAL:
        log.error("%s failed", subject, exc_info=exc)
    elif failure.fault is Fault.CLIENT:
        log.info("rejected %s: %s", subject, failure.message)
