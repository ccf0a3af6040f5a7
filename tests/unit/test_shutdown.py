"""Graceful SIGTERM: a subprocess serving the HTTP mode over a stepped stub.

New requests get 503 with ``Retry-After``; the job in flight finishes within the grace
period, or is cancelled with a clear error after it; the conditionals disk tier is flushed
with no partial file; the process exits 0. The queue mode's shutdown runs the same gate
steps, checked in-process here; SIGTERM to a queue worker process under the RunPod SDK's
own loop is ``test_queue_sigterm.py``.
"""
from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import pytest

from chatterbox_worker.storage.atomic_files import PARTIAL_PREFIX
from chatterbox_worker.testing.stepped_stub import SteppedStubModel
from chatterbox_worker.testing.stub_worker import assemble_worker
from tests.http_servers import free_port
from tests.unit.test_admission_http import SPEECH
from tests.unit.test_cancellation_serving import wait_until

REPO = Path(__file__).resolve().parents[2]
EXIT_DEADLINE_S = 30
CLIENT_TIMEOUT_S = 60


def start_server(library_dir: Path, conds_dir: Path, steps: int, grace_s: float) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**os.environ, "SHUTDOWN_GRACE_S": str(grace_s), "MAX_CONCURRENT_JOBS": "1", "MAX_QUEUED_REQUESTS": "2"}
    proc = subprocess.Popen([sys.executable, "-m", "tests.stepped_server", str(library_dir), str(conds_dir),
                             str(port), str(steps), "0.05"], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    if not wait_until(lambda: ready(url) or proc.poll() is not None, CLIENT_TIMEOUT_S) or proc.poll() is not None:
        proc.kill()
        pytest.fail(f"the server did not start:\n{proc.communicate()[0]}")
    return proc, url


def ready(url: str) -> bool:
    try:
        return httpx.get(url + "/ping", timeout=2).status_code == 200
    except httpx.TransportError:  # not listening yet
        return False


def in_background(call) -> tuple[threading.Thread, dict]:
    out: dict = {}

    def run():
        try:
            out["response"] = call()
        except Exception as exc:  # a connection error is what the test must not see
            out["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    return thread, out


def in_flight(url: str) -> bool:
    """A job holds the slot (before the first request the gate, and so its metric, does not exist yet)."""
    return 'chatterbox_admission{stat="in_flight"} 1.0' in httpx.get(url + "/metrics").text


def partial_files(directory: Path) -> list[Path]:
    return [p for p in directory.rglob("*") if p.name.startswith(PARTIAL_PREFIX)]


def terminate(proc: subprocess.Popen) -> tuple[int, str]:
    proc.send_signal(signal.SIGTERM)
    try:
        output, _ = proc.communicate(timeout=EXIT_DEADLINE_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        output, _ = proc.communicate()
        pytest.fail(f"the server did not exit after SIGTERM:\n{output}")
    return proc.returncode, output


@pytest.mark.parametrize("steps, grace_s, finishes", [(40, 20.0, True), (2000, 0.5, False)],
                         ids=["finishes-within-grace", "cancelled-after-grace"])
def test_sigterm_refuses_new_work_settles_the_job_in_flight_and_exits_0(library_dir, tmp_path, steps, grace_s,
                                                                        finishes):
    conds = tmp_path / "conds"
    proc, url = start_server(library_dir, conds, steps, grace_s)
    try:
        thread, out = in_background(lambda: httpx.post(url + "/v1/audio/speech", json=SPEECH, timeout=CLIENT_TIMEOUT_S))
        assert wait_until(lambda: in_flight(url), CLIENT_TIMEOUT_S)
        proc.send_signal(signal.SIGTERM)
        assert wait_until(lambda: httpx.post(url + "/v1/audio/speech", json=SPEECH).status_code == 503)
        refused = httpx.post(url + "/v1/audio/speech", json=SPEECH)
        thread.join(CLIENT_TIMEOUT_S)
    finally:
        code, output = terminate(proc) if proc.poll() is None else (proc.wait(), proc.stdout.read())
    assert refused.status_code == 503 and "Retry-After" in refused.headers
    assert refused.json()["error"]["code"] == "shutting_down"
    assert "error" not in out, out
    response = out["response"]
    if finishes:
        assert response.status_code == 200 and response.content[:4] == b"RIFF"
    else:
        assert response.status_code == 503 and "SHUTDOWN_GRACE_S" in response.json()["error"]["message"]
    assert code == 0, output
    assert "shutdown complete" in output
    assert list(conds.rglob("*.safetensors")) and partial_files(conds) == []  # the save was flushed, whole


def test_queue_mode_shutdown_cancels_what_outlives_the_grace_period(monkeypatch, library, cache):
    import handler

    monkeypatch.setenv("SHUTDOWN_GRACE_S", "0.3")
    model = SteppedStubModel(step_s=0.02, steps=2000)
    worker = assemble_worker(model, library, cache)
    monkeypatch.setattr(handler, "get_worker", lambda: worker)
    monkeypatch.setattr(handler, "_gate", None)

    async def scenario():
        from chatterbox_worker.serving.shutdown import shut_down

        job = asyncio.create_task(handler.async_handler({"id": "j", "input": {"text": "Hello there."}}))
        while model.active == 0:
            await asyncio.sleep(0.01)
        cancelled = await shut_down(handler.queue_gate(), lambda: worker.cache)
        late = await handler.async_handler({"id": "late", "input": {"text": "Hello."}})
        return cancelled, await job, late

    cancelled, result, late = asyncio.run(scenario())
    assert cancelled == 1 and "SHUTDOWN_GRACE_S" in result["error"]
    assert "shutting down" in late["error"] and model.active == 0


def test_a_shutdown_cut_short_by_the_loop_s_end_still_flushes_and_says_so(monkeypatch, library, cache, caplog):
    """In queue mode the SDK's loop may end, cancelling the shutdown task, while the gate still
    waits for the grace period: the cache is flushed and the last line logged all the same."""
    import logging

    import handler

    monkeypatch.setenv("SHUTDOWN_GRACE_S", "30")
    model = SteppedStubModel(step_s=0.02, steps=50)
    worker = assemble_worker(model, library, cache)
    monkeypatch.setattr(handler, "get_worker", lambda: worker)
    monkeypatch.setattr(handler, "_gate", None)
    flushes = []
    flush = worker.cache.flush
    monkeypatch.setattr(worker.cache, "flush", lambda timeout: flushes.append(timeout) or flush(timeout))

    async def scenario():
        from chatterbox_worker.serving.shutdown import shut_down

        job = asyncio.create_task(handler.async_handler({"id": "j", "input": {"text": "Hello there."}}))
        while model.active == 0:
            await asyncio.sleep(0.01)
        gate = handler.queue_gate()
        shutdown = asyncio.create_task(shut_down(gate, lambda: worker.cache))
        while not gate.admission.stats().closed:
            await asyncio.sleep(0.01)
        shutdown.cancel()  # what asyncio.run does to the tasks left when its loop ends
        with pytest.raises(asyncio.CancelledError):
            await shutdown
        return await job

    with caplog.at_level(logging.INFO, logger="chatterbox_worker"):
        result = asyncio.run(scenario())
    assert "error" not in result  # the job itself was not cut off
    assert len(flushes) == 1
    assert "shutdown complete: 0 job(s) cancelled" in caplog.text
