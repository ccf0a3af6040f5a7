"""OpenAI's error shape: the HTTP surface's rendering of :func:`contract.errors.classify`.

Every failure of an HTTP request, and of a speech stream already under way (as an SSE
``error`` event), is shown as ``{"error": {"message", "type", "param", "code"}}`` with the
status the classification gives. The HTTP layer's own refusals (bad JSON, an unknown
model, a body too large, a wrong token) are raised as :class:`OpenAIError`, classified
where they are raised.
"""
from __future__ import annotations

import logging
from typing import Any

from chatterbox_worker.contract.errors import (
    INVALID_REQUEST,
    SERVER_ERROR,
    ClassifiedError,
    Failure,
    Fault,
    classify,
    log_failure,
)

logger = logging.getLogger("chatterbox_worker.http")

# TTSRequest fields and the OpenAI request fields a client wrote them as.
_PARAM_NAMES = {"text": "input", "voice_id": "voice", "voice_name": "voice", "reference_audio": "voice",
                "language_id": "language"}
SERVICE_UNAVAILABLE_STATUS = 503


def _fault(status: int) -> Fault:
    if status == SERVICE_UNAVAILABLE_STATUS:
        return Fault.UNAVAILABLE
    return Fault.CLIENT if status < 500 else Fault.SERVER


class OpenAIError(ClassifiedError):
    """An error in OpenAI's shape, with the HTTP status that goes with it."""

    def __init__(self, status: int, message: str, *, type: str = INVALID_REQUEST,
                 param: str | None = None, code: str | None = None):
        super().__init__(Failure(_fault(status), message, message, param, status, type, code, param=param))
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    @classmethod
    def from_failure(cls, failure: Failure) -> OpenAIError:
        param = failure.param if failure.param is not None else openai_param(failure.field)
        return cls(failure.status, failure.http_message, type=failure.type, param=param, code=failure.code)

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def openai_param(field: str | None) -> str | None:
    if field is None:
        return None
    head = field.split(".", 1)[0]
    return _PARAM_NAMES.get(head, head)


def as_openai_error(exc: BaseException) -> OpenAIError:
    """Any failure of a request as an OpenAI error; a job's field becomes the ``param``."""
    if isinstance(exc, OpenAIError):
        return exc
    failure = classify(exc)
    log_failure(logger, failure, exc, "request")
    return OpenAIError.from_failure(failure)


def model_loading() -> OpenAIError:
    """The answer while the worker is still loading: retry shortly (not a failed start)."""
    return OpenAIError(SERVICE_UNAVAILABLE_STATUS, "the model is still loading; retry shortly", type=SERVER_ERROR,
                       code="model_loading")
