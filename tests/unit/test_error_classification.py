"""contract.errors.classify: every failure's fault, statuses, OpenAI type and code, and
whether RunPod is asked for a fresh worker; and the surfaces that only render it."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from chatterbox_worker.contract.errors import (
    Fault,
    JobError,
    OutOfMemoryJobError,
    ServerError,
    ServiceUnavailableError,
    ShippedVoiceError,
    VoiceLibraryError,
    VoiceNotFoundError,
    classify,
)
from chatterbox_worker.http.access import BodyTooLarge
from chatterbox_worker.http.openai_errors import OpenAIError, as_openai_error, model_loading
from chatterbox_worker.serving.jobs import error_result
from chatterbox_worker.settings import SettingsError

REPO = Path(__file__).resolve().parents[2]

# exception, fault, OpenAI status, /v1/jobs status, OpenAI type, code, refresh_worker
CASES = [
    (JobError("text", "bad"), Fault.CLIENT, 400, 400, "invalid_request_error", "invalid_value", False),
    (VoiceNotFoundError("voice_name", "no such voice"), Fault.CLIENT, 404, 400, "invalid_request_error",
     "voice_not_found", False),
    (ShippedVoiceError("voice_id", "shipped"), Fault.CLIENT, 403, 400, "permission_error", "voice_protected", False),
    (ServerError("model", "broke"), Fault.SERVER, 500, 500, "server_error", "server_error", False),
    (VoiceLibraryError("voice_id", "corrupt"), Fault.SERVER, 500, 500, "server_error", "server_error", False),
    (OutOfMemoryJobError("model", "out of GPU memory"), Fault.SERVER, 500, 500, "server_error", "server_error",
     False),
    (ServiceUnavailableError("load failed"), Fault.UNAVAILABLE, 503, 503, "server_error", "service_unavailable",
     True),
    (SettingsError("PORT: too big"), Fault.UNAVAILABLE, 503, 503, "server_error", "service_unavailable", True),
    (RuntimeError("boom"), Fault.INTERNAL, 500, 500, "server_error", "internal_error", False),
    (OpenAIError(422, "input: missing", param="input", code="invalid_value"), Fault.CLIENT, 422, 400,
     "invalid_request_error", "invalid_value", False),
    (BodyTooLarge(1024), Fault.CLIENT, 413, 400, "invalid_request_error", "request_too_large", False),
    (model_loading(), Fault.UNAVAILABLE, 503, 503, "server_error", "model_loading", False),
]


@pytest.mark.parametrize("exc, fault, status, job_status, type_, code, refresh", CASES,
                         ids=[type(case[0]).__name__ for case in CASES])
def test_every_exception_class_is_classified(exc, fault, status, job_status, type_, code, refresh):
    failure = classify(exc)
    assert (failure.fault, failure.status, failure.job_status, failure.type, failure.code,
            failure.refresh_worker) == (fault, status, job_status, type_, code, refresh)
    assert ("refresh_worker" in error_result(failure)) is refresh
    error = as_openai_error(exc)
    assert (error.status, error.type, error.code) == (status, type_, code)


@pytest.mark.parametrize("exc, queue_text, http_text", [
    (JobError("text", "bad"), "text: bad", "text: bad"),
    (ServerError("model", "broke"), "server: model: broke", "server: model: broke"),
    (RuntimeError("boom"), "internal: RuntimeError: boom", "internal: RuntimeError: boom"),
    (ServiceUnavailableError("load failed"),
     "service: this worker cannot serve jobs (load failed); it will be replaced", "this worker cannot serve requests: load failed"),
])
def test_the_texts_each_surface_shows(exc, queue_text, http_text):
    assert error_result(classify(exc))["error"] == queue_text
    assert as_openai_error(exc).message == http_text


def test_a_job_field_becomes_the_openai_param_and_an_openai_param_stays():
    assert as_openai_error(VoiceNotFoundError("voice_name", "no such voice")).param == "voice"
    assert as_openai_error(JobError("text", "empty")).param == "input"
    assert as_openai_error(OpenAIError(422, "extra", param="text")).param == "text"
    assert as_openai_error(RuntimeError("boom")).param is None


def test_server_does_not_import_handler():
    code = "import sys; import server; assert 'handler' not in sys.modules, 'handler imported'; print('ok')"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_no_error_text_is_read_to_decide_a_status():
    """Statuses come from the classification: no error-message prefix is mapped to a status."""
    sources = [REPO / "server.py", REPO / "handler.py", *(REPO / "chatterbox_worker" / "http").rglob("*.py"),
               *(REPO / "chatterbox_worker" / "serving").glob("*.py")]
    markers = ("SERVER_PREFIX", "INTERNAL_PREFIX", "SERVICE_PREFIX", '"server:', '"internal:', '"service:')
    for path in sources:
        for line in path.read_text().splitlines():
            assert not ("startswith(" in line and any(m in line for m in markers)), (path, line)
