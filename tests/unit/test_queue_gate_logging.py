"""The queue worker's logs carry the gate's counts: each job's start and end is logged with
the jobs in flight, waiting, shed, timed out and cancelled, so that a RunPod worker's log
shows its load without ``/metrics``. RunPod's OpenAI passthrough jobs are counted the same."""
from __future__ import annotations

import asyncio
import logging
import re

import pytest

from tests.unit.test_cancellation_serving import queue_worker, until  # noqa: F401 - a fixture

WAIT_S = 10.0
SHORT_JOB_STEPS = 25  # long enough that the cancel of the other lands first
OPENAI_JOB = {"openai_route": "/v1/audio/speech",
              "openai_input": {"model": "tts-1", "voice": "alloy", "input": "Hello there.", "response_format": "wav"}}
COUNTS = re.compile(r"job (\S+) (started|ended): in flight (\d+)/2, waiting (\d+)/\d+, shed (\d+), "
                    r"queue timeouts (\d+), cancelled (\d+)$")


@pytest.fixture
def queue_handler(monkeypatch, queue_worker):
    """The queue handlers over the stepped stub of ``queue_worker``, with two slots."""
    monkeypatch.setenv("MAX_CONCURRENT_JOBS", "2")
    return queue_worker


def logged_counts(caplog) -> list[tuple]:
    """(job, started|ended, in flight, waiting, shed, queue timeouts, cancelled) per line, in order."""
    found = (COUNTS.search(r.getMessage()) for r in caplog.records if r.name == "chatterbox_worker")
    return [(m[1], m[2], *map(int, m.groups()[2:])) for m in found if m]


def test_each_queue_job_s_start_and_end_is_logged_with_the_gate_s_counts(queue_handler, caplog):
    handler, model = queue_handler
    caplog.set_level(logging.INFO, logger="chatterbox_worker")

    async def scenario():
        long_job = asyncio.create_task(handler.async_handler({"id": "long", "input": {"text": "Hello there."}}))
        await asyncio.wait_for(until(lambda: model.active == 1), WAIT_S)
        model.steps = SHORT_JOB_STEPS  # the next job is short
        passthrough = asyncio.create_task(handler.async_handler({"id": "openai", "input": OPENAI_JOB}))
        await asyncio.wait_for(until(lambda: model.active == 2), WAIT_S)
        long_job.cancel()  # as RunPod cancels a job
        with pytest.raises(asyncio.CancelledError):
            await long_job
        return await passthrough, handler.queue_gate().stats()

    result, stats = asyncio.run(scenario())
    assert result["format"] == "wav" and stats["admitted"] == 2
    assert logged_counts(caplog) == [
        ("long", "started", 1, 0, 0, 0, 0),
        ("openai", "started", 2, 0, 0, 0, 0),
        ("long", "ended", 1, 0, 0, 0, 1),
        ("openai", "ended", 0, 0, 0, 0, 1),
    ]
