"""Client faults and server faults: the same shape, told apart by a stable prefix and the log."""
from __future__ import annotations

import logging

import numpy as np

from chatterbox_worker.contract.errors import SERVER_PREFIX


class OutOfMemoryError(RuntimeError):
    """Named like torch.OutOfMemoryError, which the worker matches by type name."""


def test_a_bad_field_is_the_clients_fault(run_job, caplog):
    with caplog.at_level(logging.INFO):
        result = run_job({"text": "x", "temperature": -1})
    assert result["error"].startswith("temperature: ")
    records = [r for r in caplog.records if "rejected job" in r.getMessage()]
    assert records and all(r.levelno == logging.INFO and r.exc_info is None for r in records)


def test_a_corrupt_voice_file_is_the_servers_fault(run_job, library, caplog):
    amy = library.get_voice_info(library.resolve_voice_id("Amy"))
    (library.library_dir / amy["embedding_file"]).write_bytes(b"not audio at all")
    with caplog.at_level(logging.INFO):
        result = run_job({"text": "x", "voice_name": "Amy"})
    assert set(result) == {"error"}
    assert result["error"].startswith(f"{SERVER_PREFIX}: voice_id: "), result
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert errors and errors[0].exc_info is not None  # logged with its traceback
    assert "audio" in run_job({"text": "Still serving.", "voice_name": "Bella"})


def test_an_unwritable_library_is_the_servers_fault(run_job, library, monkeypatch):
    from chatterbox_worker.testing.audio_payloads import make_wav_b64

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("chatterbox_worker.storage.atomic_files.os.replace", refuse)
    result = run_job({"operation": "upload_voice", "voice_name": "Nova", "reference_audio": make_wav_b64(seconds=6.0)})
    assert result["error"].startswith(f"{SERVER_PREFIX}: save_to_library: "), result


def test_out_of_memory_is_the_servers_fault_after_one_retry(run_job, stub_model, monkeypatch):
    calls = []

    def exhausted(text, **kwargs):
        calls.append(text)
        raise OutOfMemoryError("no memory left")

    monkeypatch.setattr(stub_model, "synthesize", exhausted)
    result = run_job({"text": "x"})
    assert result["error"].startswith(f"{SERVER_PREFIX}: model: out of GPU memory")
    assert len(calls) == 2


def test_a_job_reports_its_out_of_memory_retries_and_the_next_job_starts_at_zero(run_job, stub_model,
                                                                               monkeypatch):
    real, failures = stub_model.synthesize, []

    def fails_once(text, **kwargs):
        if not failures:
            failures.append(text)
            raise OutOfMemoryError("no memory left")
        return real(text, **kwargs)

    monkeypatch.setattr(stub_model, "synthesize", fails_once)
    assert run_job({"text": "x"})["metrics"]["memory_retries"] == 1
    assert run_job({"text": "y"})["metrics"]["memory_retries"] == 0


def test_the_engine_s_replays_reach_the_job_s_metrics_through_the_async_handler(worker, stub_model,
                                                                               monkeypatch):
    """A model notes the decode engine's replays of its call (as optimized_chatterbox does with
    TokenStream.retries); concurrent jobs each see only their own."""
    import asyncio

    import handler
    from chatterbox_worker.pipeline.job_metrics import note_memory_retries

    real = stub_model.synthesize

    def replayed(text, **kwargs):
        note_memory_retries(int(text))
        return real(text, **kwargs)

    monkeypatch.setattr(stub_model, "synthesize", replayed)
    monkeypatch.setattr(handler, "get_worker", lambda: worker)

    async def both():
        return await asyncio.gather(handler.async_handler({"input": {"text": "2"}}),
                                    handler.async_handler({"input": {"text": "0"}}))

    replays, none = asyncio.run(both())
    assert replays["metrics"]["memory_retries"] == 2 and none["metrics"]["memory_retries"] == 0


def test_streaming_retries_out_of_memory_before_its_first_chunk(worker, stub_model, monkeypatch):
    import handler

    real_stream, failures = stub_model.stream, []

    def flaky(text, **kwargs):
        if not failures:
            failures.append(text)
            raise OutOfMemoryError("no memory left")
        yield from real_stream(text, **kwargs)

    monkeypatch.setattr(stub_model, "stream", flaky)
    monkeypatch.setattr(handler, "get_worker", lambda: worker)
    items = list(handler.stream_handler({"input": {"text": "A streamed sentence.", "mode": "streaming",
                                                   "chunk_size": 5}}))
    assert len(failures) == 1 and "metrics" in items[-1] and len(items) >= 2


def test_streaming_after_audio_left_fails_instead_of_repeating_it(worker, stub_model, monkeypatch):
    import handler

    def dies_midway(text, **kwargs):
        yield np.zeros(1000, dtype=np.float32) + 0.1
        raise OutOfMemoryError("no memory left")

    monkeypatch.setattr(stub_model, "stream", dies_midway)
    monkeypatch.setattr(handler, "get_worker", lambda: worker)
    items = list(handler.stream_handler({"input": {"text": "A streamed sentence.", "mode": "streaming"}}))
    assert "chunk_index" in items[0]
    assert items[-1]["error"].startswith(f"{SERVER_PREFIX}: model: out of GPU memory")


def test_a_short_voice_is_reported_against_the_field_the_job_used(run_job, stub_model, library, monkeypatch):
    monkeypatch.setattr(stub_model, "min_prompt_seconds", 1000.0, raising=False)
    amy_id = library.resolve_voice_id("Amy")
    assert run_job({"text": "x", "voice_id": amy_id})["error"].startswith("voice_id: is ")
    assert run_job({"text": "x", "voice_name": "Amy"})["error"].startswith("voice_name: is ")
