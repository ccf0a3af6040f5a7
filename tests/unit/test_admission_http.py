"""Admission in HTTP mode, against a real server on loopback with a stub model that takes time.

Beyond the wait a request is answered 429 at once with ``Retry-After`` in OpenAI's error
shape; a request that waits past ``QUEUE_TIMEOUT_S`` gets the same; ``/v1/jobs`` takes its
slot from the same gate, RunPod's OpenAI passthrough jobs (``openai_route``) included;
``/metrics`` shows in-flight, waiting and shed counts.
"""
from __future__ import annotations

import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from chatterbox_worker.testing.stepped_stub import SteppedStubModel
from chatterbox_worker.testing.stub_worker import assemble_worker
from tests.http_servers import running_app, wait_ready

SPEECH = {"model": "tts-1", "voice": "alloy", "input": "Hello there.", "response_format": "wav", "stream": False}
# The same speech as RunPod's load balancer passes it through to a queue job.
OPENAI_JOB = {"input": {"openai_route": "/v1/audio/speech",
                        "openai_input": {k: SPEECH[k] for k in ("model", "voice", "input", "response_format")}}}
TIMEOUT_S = 30
HOLD_DEADLINE_S = 10.0


@pytest.fixture
def slow_server(monkeypatch, library, cache):
    """``slow_server(steps=..., **settings)`` -> (base URL, the stepped stub model)."""
    import server

    stack = []

    def start(steps: int = 20, step_s: float = 0.05, **settings):
        for name, value in settings.items():
            monkeypatch.setenv(name.upper(), str(value))
        model = SteppedStubModel(step_s=step_s, steps=steps)
        worker = assemble_worker(model, library, cache)
        ctx = running_app(server.create_app(lambda: worker))
        url = ctx.__enter__()
        stack.append(ctx)
        wait_ready(url)
        return url, model

    yield start
    for ctx in reversed(stack):
        ctx.__exit__(None, None, None)


def post_all(url: str, n: int, path: str = "/v1/audio/speech", body: dict | None = None) -> list[httpx.Response]:
    barrier = threading.Barrier(n)

    def post(_):
        barrier.wait()
        return httpx.post(url + path, json=body or SPEECH, timeout=TIMEOUT_S)

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(post, range(n)))


def metric(text: str, name: str, **labels) -> float:
    label_text = ",".join(f'{k}="{v}"' for k, v in labels.items())
    match = re.search(rf"^{name}{{{label_text}}} (\S+)$", text, flags=re.MULTILINE)
    assert match, f"{name}{{{label_text}}} not in /metrics"
    return float(match.group(1))


def test_beyond_the_wait_answers_429_with_retry_after(slow_server):
    url, model = slow_server(steps=30, max_concurrent_jobs=1, max_queued_requests=1)
    responses = post_all(url, 5)
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200, 200, 429, 429, 429]
    for refused in (r for r in responses if r.status_code == 429):
        assert int(refused.headers["Retry-After"]) >= 1
        error = refused.json()["error"]
        assert error["code"] == "overloaded" and error["type"] == "rate_limit_error"
        assert "retry later" in error["message"]
    assert model.completed == 2  # the refused requests never reached the model
    text = httpx.get(url + "/metrics").text
    assert metric(text, "chatterbox_admission", stat="shed") == 3
    assert metric(text, "chatterbox_admission", stat="admitted") == 2
    assert metric(text, "chatterbox_admission", stat="in_flight") == 0


def test_a_request_that_waits_past_the_queue_timeout_gets_429(slow_server):
    url, model = slow_server(steps=40, max_concurrent_jobs=1, max_queued_requests=4, queue_timeout_s=0.2)
    responses = post_all(url, 2)
    refused = [r for r in responses if r.status_code == 429]
    assert sorted(r.status_code for r in responses) == [200, 429]
    assert refused[0].json()["error"]["code"] == "queue_timeout" and "Retry-After" in refused[0].headers
    assert metric(httpx.get(url + "/metrics").text, "chatterbox_admission", stat="timed_out") == 1


def test_queue_jobs_over_http_share_the_speech_gate(slow_server):
    url, model = slow_server(steps=40, max_concurrent_jobs=1, max_queued_requests=0)
    job = {"input": {"text": "Hello there."}}
    with ThreadPoolExecutor(2) as pool:
        speech = pool.submit(httpx.post, url + "/v1/audio/speech", json=SPEECH, timeout=TIMEOUT_S)
        while model.active == 0:
            pass  # wait for the speech request to hold the one slot
        queued = httpx.post(url + "/v1/jobs", json=job, timeout=TIMEOUT_S)
        assert speech.result().status_code == 200
    assert queued.status_code == 429 and queued.json()["error"]["code"] == "overloaded"
    assert "Retry-After" in queued.headers
    # With the slot free again the same job runs.
    assert httpx.post(url + "/v1/jobs", json=job, timeout=TIMEOUT_S).status_code == 200


def until_the_model_holds_a_job(model: SteppedStubModel) -> None:
    """Wait (a wait, not a timing claim) until a job holds the model, so the one slot is taken."""
    deadline = time.monotonic() + HOLD_DEADLINE_S
    while model.active == 0:
        assert time.monotonic() < deadline, "no job reached the model"
        time.sleep(0.01)


def test_an_openai_passthrough_job_is_refused_by_the_same_gate_and_counted(slow_server):
    url, model = slow_server(steps=40, max_concurrent_jobs=1, max_queued_requests=0)
    with ThreadPoolExecutor(1) as pool:
        speech = pool.submit(httpx.post, url + "/v1/audio/speech", json=SPEECH, timeout=TIMEOUT_S)
        until_the_model_holds_a_job(model)
        refused = httpx.post(url + "/v1/jobs", json=OPENAI_JOB, timeout=TIMEOUT_S)
        assert speech.result().status_code == 200
    assert refused.status_code == 429 and int(refused.headers["Retry-After"]) >= 1
    error = refused.json()["error"]
    assert error["code"] == "overloaded" and error["type"] == "rate_limit_error" and "retry later" in error["message"]
    assert model.completed == 1  # the refused job never reached the model
    assert metric(httpx.get(url + "/metrics").text, "chatterbox_admission", stat="shed") == 1
    served = httpx.post(url + "/v1/jobs", json=OPENAI_JOB, timeout=TIMEOUT_S)
    assert served.status_code == 200 and served.json()["format"] == "wav" and model.completed == 2
    text = httpx.get(url + "/metrics").text
    assert metric(text, "chatterbox_admission", stat="admitted") == 2 and metric(text, "chatterbox_admission",
                                                                                 stat="in_flight") == 0


def test_a_streamed_response_holds_its_slot_until_its_last_piece(slow_server):
    url, model = slow_server(steps=20, max_concurrent_jobs=1, max_queued_requests=0)
    with httpx.stream("POST", url + "/v1/audio/speech", json={**SPEECH, "response_format": "pcm", "stream": True},
                      timeout=TIMEOUT_S) as stream:
        assert stream.status_code == 200
        chunks = stream.iter_bytes()
        first = next(chunks)
        refused = httpx.post(url + "/v1/audio/speech", json=SPEECH, timeout=TIMEOUT_S)
        rest = b"".join(chunks)
    assert first and rest and refused.status_code == 429
    assert httpx.post(url + "/v1/audio/speech", json=SPEECH, timeout=TIMEOUT_S).status_code == 200
