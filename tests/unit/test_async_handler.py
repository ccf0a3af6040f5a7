"""The async handlers RunPod runs: several jobs at once, blocking work off the event loop."""
from __future__ import annotations

import asyncio
import threading
import time

import pytest

# How long a held job waits for the event loop to release it: a deadline against hanging,
# not a timing claim (a blocked loop shows as the wrong order, after this wait).
EVENT_WAIT_S = 30.0


@pytest.fixture
def served(worker, monkeypatch):
    import handler

    monkeypatch.setattr(handler, "get_worker", lambda: worker)
    return handler


def test_concurrency_follows_the_setting_and_the_device(served, monkeypatch):
    from chatterbox_worker.settings import CPU_CONCURRENT_JOBS

    assert served.max_concurrent_jobs() == CPU_CONCURRENT_JOBS
    monkeypatch.setenv("MAX_CONCURRENT_JOBS", "5")
    config = served.serverless_config([])
    assert config["concurrency_modifier"](1) == 5


def test_jobs_overlap_on_the_event_loop(served, stub_model, monkeypatch):
    gate, running = threading.Barrier(2, timeout=5), []
    real = stub_model.synthesize

    def slow(text, **kwargs):
        running.append(text)
        gate.wait()  # both jobs must be inside the model at once, or this times out
        return real(text, **kwargs)

    monkeypatch.setattr(stub_model, "synthesize", slow)

    async def both():
        return await asyncio.gather(served.async_handler({"input": {"text": "One."}}),
                                    served.async_handler({"input": {"text": "Two."}}))

    results = asyncio.run(both())
    assert all("audio" in r for r in results) and sorted(running) == ["One.", "Two."]


def test_the_loop_stays_free_while_a_job_runs(served, stub_model, monkeypatch):
    real, order = stub_model.synthesize, []
    inside, release = threading.Event(), threading.Event()

    def held(text, **kwargs):
        inside.set()
        release.wait(EVENT_WAIT_S)  # only the loop's ticker lets the job go on
        order.append("job done")
        return real(text, **kwargs)

    monkeypatch.setattr(stub_model, "synthesize", held)

    async def ticker():
        while not inside.is_set():
            await asyncio.sleep(0.01)
        for i in range(5):  # the loop runs while the job is held inside the model
            order.append(f"tick {i}")
            await asyncio.sleep(0)
        release.set()

    async def main():
        return await asyncio.gather(served.async_handler({"input": {"text": "Held."}}),
                                    asyncio.wait_for(ticker(), EVENT_WAIT_S))

    result, _ = asyncio.run(main())
    assert "audio" in result and order == [f"tick {i}" for i in range(5)] + ["job done"]


def test_async_stream_yields_chunks_as_they_are_made(served):
    async def collect():
        return [item async for item in served.async_stream_handler({"input": {
            "text": "Streamed through the event loop, chunk by chunk.", "mode": "streaming", "chunk_size": 5}})]

    items = asyncio.run(collect())
    chunks, final = items[:-1], items[-1]
    assert len(chunks) > 1 and [c["chunk_index"] for c in chunks] == list(range(len(chunks)))
    assert final["streaming_metrics"]["total_chunks"] == len(chunks)


def test_async_stream_reports_errors_and_keeps_serving(served):
    async def collect(job):
        return [item async for item in served.async_stream_handler(job)]

    bad = asyncio.run(collect({"input": {"text": "x", "temperature": -1}}))
    assert bad == [{"error": bad[0]["error"]}] and bad[0]["error"].startswith("temperature:")
    assert "metrics" in asyncio.run(collect({"input": {"text": "Fine.", "mode": "streaming"}}))[-1]


def test_a_client_that_leaves_early_stops_the_stream(served, stub_model, monkeypatch):
    made = []
    real = stub_model.stream

    def counted(text, **kwargs):
        for wav in real(text, **kwargs):
            made.append(1)
            yield wav

    monkeypatch.setattr(stub_model, "stream", counted)

    async def first_only():
        stream = served.async_stream_handler({"input": {"text": "A long text. " * 20, "mode": "streaming",
                                                        "chunk_size": 2}})
        first = await stream.__anext__()
        await stream.aclose()
        return first

    assert "chunk_index" in asyncio.run(first_only())
    time.sleep(0.5)
    settled = len(made)
    time.sleep(0.3)
    assert len(made) == settled  # the producer thread has stopped
