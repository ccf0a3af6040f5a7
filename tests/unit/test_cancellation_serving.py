"""Work nobody waits for stops: a client that leaves (whole clip, stream), REQUEST_TIMEOUT_S,
and RunPod's cancel of the async handlers. The stepped stub leaves at its next step when its
job's cancel scope is cancelled, as the engine does; each test checks the job left the model
with the right reason, and that the worker goes on serving. A client that leaves is not the
worker's fault: nothing is logged at ERROR or with a traceback for it."""
from __future__ import annotations

import asyncio
import logging
import re
import time

import httpx
import pytest

from chatterbox_worker.testing.stepped_stub import SteppedStubModel
from chatterbox_worker.testing.stub_worker import assemble_worker
from tests.unit.test_admission_http import SPEECH, TIMEOUT_S, metric, slow_server  # noqa: F401 - a fixture

LEAVE_DEADLINE_S = 10.0
CLIENT_GIVES_UP_S = 0.3


def wait_until(condition, deadline_s: float = LEAVE_DEADLINE_S) -> bool:
    """Poll ``condition`` until it holds or the deadline passes (a wait, not a timing claim)."""
    deadline = time.monotonic() + deadline_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


@pytest.fixture
def logged_faults(caplog):
    """``logged_faults()`` starts watching (call it once the server runs: uvicorn's logging set-up
    replaces its loggers' handlers) and returns a reader of the records logged as server faults:
    ERROR or above, or with a traceback, from the worker or from uvicorn (whose loggers do not
    reach the root logger)."""
    watched: list[logging.Logger] = []

    def watch():
        caplog.set_level(logging.INFO)
        uvicorn_logger = logging.getLogger("uvicorn")
        uvicorn_logger.addHandler(caplog.handler)
        watched.append(uvicorn_logger)
        return lambda: [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]

    yield watch
    for watched_logger in watched:
        watched_logger.removeHandler(caplog.handler)


def requests_counted(url: str, outcome: str) -> float:
    """``chatterbox_requests_total{route="speech", outcome=...}``; 0 before the first such request."""
    pattern = rf'^chatterbox_requests_total{{outcome="{outcome}",route="speech"}} (\S+)$'  # labels sorted
    match = re.search(pattern, httpx.get(url + "/metrics").text, flags=re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def test_a_whole_clip_client_that_leaves_stops_its_job(slow_server, logged_faults):
    url, model = slow_server(steps=400, max_concurrent_jobs=1)
    faults = logged_faults()
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(url + "/v1/audio/speech", json=SPEECH, timeout=CLIENT_GIVES_UP_S)
    assert wait_until(lambda: model.cancelled == ["client_gone"] and model.active == 0)
    assert model.steps_run < model.steps
    model.steps = 2
    assert httpx.post(url + "/v1/audio/speech", json=SPEECH, timeout=TIMEOUT_S).status_code == 200
    assert metric(httpx.get(url + "/metrics").text, "chatterbox_cancelled_jobs_total", reason="client_gone") == 1
    assert faults() == []


def test_a_stream_client_that_leaves_after_its_first_bytes_stops_its_job(slow_server, logged_faults):
    url, model = slow_server(steps=400, max_concurrent_jobs=1)
    faults = logged_faults()
    cancelled_before = requests_counted(url, "cancelled")
    with httpx.stream("POST", url + "/v1/audio/speech", json={**SPEECH, "response_format": "pcm", "stream": True},
                      timeout=TIMEOUT_S) as stream:
        assert stream.status_code == 200
        assert next(stream.iter_bytes())
    assert wait_until(lambda: model.active == 0)
    assert model.completed == 0 and model.steps_run < model.steps
    # The server has finished with the request once the middleware has counted it.
    assert wait_until(lambda: requests_counted(url, "cancelled") > cancelled_before)
    assert faults() == []


def test_a_request_past_its_time_limit_is_stopped_with_a_clear_error(slow_server):
    url, model = slow_server(steps=400, max_concurrent_jobs=1, request_timeout_s=0.3)
    response = httpx.post(url + "/v1/audio/speech", json=SPEECH, timeout=TIMEOUT_S)
    error = response.json()["error"]
    assert response.status_code == 504 and error["code"] == "request_timeout"
    assert "REQUEST_TIMEOUT_S" in error["message"]
    assert model.cancelled == ["request_timeout"] and model.active == 0
    job = httpx.post(url + "/v1/jobs", json={"input": {"text": "Hello."}}, timeout=TIMEOUT_S)
    assert job.status_code == 503 and "REQUEST_TIMEOUT_S" in job.json()["error"]
    text = httpx.get(url + "/metrics").text
    assert metric(text, "chatterbox_cancelled_jobs_total", reason="request_timeout") == 2


@pytest.fixture
def queue_worker(monkeypatch, library, cache):
    """The queue handlers over a stepped stub, with a gate of their own."""
    import handler

    model = SteppedStubModel(step_s=0.02, steps=400)
    worker = assemble_worker(model, library, cache)
    monkeypatch.setattr(handler, "get_worker", lambda: worker)
    monkeypatch.setattr(handler, "_gate", None)
    return handler, model


async def until(condition) -> None:
    while not condition():
        await asyncio.sleep(0.01)


def test_runpod_s_cancel_stops_the_job_then_re_raises(queue_worker):
    handler, model = queue_worker

    async def scenario():
        task = asyncio.create_task(handler.async_handler({"id": "j1", "input": {"text": "Hello there."}}))
        await asyncio.wait_for(until(lambda: model.active == 1), LEAVE_DEADLINE_S)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.wait_for(until(lambda: model.active == 0), LEAVE_DEADLINE_S)
        return handler.queue_gate().stats()

    stats = asyncio.run(scenario())
    assert model.cancelled == ["cancelled"] and model.completed == 0
    assert stats["in_flight"] == 0 and stats["cancelled"] == {"cancelled": 1}


def test_runpod_s_cancel_of_a_streaming_job_stops_it(queue_worker):
    handler, model = queue_worker

    async def scenario():
        items = handler.async_stream_handler({"id": "j2", "input": {"text": "Hello there."}})
        task = asyncio.create_task(items.__anext__())
        await asyncio.wait_for(until(lambda: model.active == 1), LEAVE_DEADLINE_S)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.wait_for(until(lambda: model.active == 0), LEAVE_DEADLINE_S)

    asyncio.run(scenario())
    assert model.cancelled == ["cancelled"] and model.completed == 0


def test_a_queue_job_past_its_time_limit_answers_a_clear_error(queue_worker, monkeypatch):
    handler, model = queue_worker
    monkeypatch.setenv("REQUEST_TIMEOUT_S", "0.2")
    result = asyncio.run(handler.async_handler({"id": "j3", "input": {"text": "Hello there."}}))
    assert "REQUEST_TIMEOUT_S" in result["error"] and model.cancelled == ["request_timeout"]
