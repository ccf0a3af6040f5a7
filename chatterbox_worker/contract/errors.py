"""The one error shape every job failure takes, and whose fault it was.

RunPod drops a result whose ``error`` is not a string, so every failure is turned into
``{"error": "<field>: <why>"}`` at the handler boundary. The field comes first so that
clients and logs can tell at a glance which part of the job to fix.

A :class:`ServerError` is the worker's fault, not the job's (out of memory, an unwritable
library, a corrupt voice file on disk). Its message starts with :data:`SERVER_PREFIX`, a
stable marker a client can test to decide whether to retry; the worker itself only ever
looks at the exception's type.
"""
from __future__ import annotations

SERVER_PREFIX = "server"


def is_out_of_memory(exc: BaseException) -> bool:
    # torch.OutOfMemoryError (torch.cuda's too), matched by type name so that callers need no torch.
    return any(cls.__name__ == "OutOfMemoryError" for cls in type(exc).__mro__)


class JobError(Exception):
    """A failure of one job, caused by its input or by data it refers to."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message

    def to_response(self) -> dict[str, str]:
        return {"error": str(self)}


class ServerError(JobError):
    """A failure of one job that the worker caused; the same job may succeed on a retry."""

    def to_response(self) -> dict[str, str]:
        return {"error": f"{SERVER_PREFIX}: {self}"}


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
