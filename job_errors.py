"""The one error shape every job failure takes.

RunPod drops a result whose ``error`` is not a string, so every failure a client can
cause is raised as :class:`JobError` and turned into ``{"error": "<field>: <why>"}``
at the handler boundary. The field comes first so that clients and logs can tell at
a glance which part of the job to fix.
"""
from __future__ import annotations


class JobError(Exception):
    """A failure of one job, caused by its input or by data it refers to."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message

    def to_response(self) -> dict[str, str]:
        return {"error": str(self)}


class VoiceNotFoundError(JobError):
    """A voice id or name that the library does not hold."""


class VoiceLibraryError(JobError):
    """A voice the library lists but cannot serve (missing, corrupt or unsafe file)."""


class ServiceUnavailableError(Exception):
    """The worker cannot serve any job (for example, the model failed to load)."""
