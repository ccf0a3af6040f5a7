"""The generator handler, progress updates, and results over RunPod's size limit."""
from __future__ import annotations

import base64
import io
import json

import numpy as np
import soundfile as sf


def test_stream_handler_yields_chunks_then_metrics(worker, monkeypatch):
    import handler

    monkeypatch.setattr(handler, "get_worker", lambda: worker)
    items = list(handler.stream_handler({"id": "j1", "input": {
        "text": "First sentence here. And a second one, please.", "mode": "streaming", "chunk_size": 5,
        "output_format": "pcm_16", "seed": 3}}))
    json.dumps(items)
    chunks, final = items[:-1], items[-1]
    assert len(chunks) > 1
    assert [c["chunk_index"] for c in chunks] == list(range(len(chunks)))
    assert [c["is_last"] for c in chunks] == [False] * (len(chunks) - 1) + [True]
    assert all(set(c) == {"chunk_index", "audio", "format", "sample_rate", "is_last"} for c in chunks)
    pcm = b"".join(base64.b64decode(c["audio"]) for c in chunks)
    samples = np.frombuffer(pcm, dtype="<i2")
    metrics = final["streaming_metrics"]
    assert metrics["total_chunks"] == len(chunks)
    assert abs(samples.size / chunks[0]["sample_rate"] - metrics["audio_duration"]) < 1e-3
    assert final["seed"] == 3 and "metrics" in final and final["parameters"]["voice_id"] == "none"


def test_stream_handler_other_operations_and_errors(worker, monkeypatch):
    import handler

    monkeypatch.setattr(handler, "get_worker", lambda: worker)
    listed = list(handler.stream_handler({"input": {"operation": "list_local_voices"}}))
    assert len(listed) == 1 and "local_voices" in listed[0]
    bad = list(handler.stream_handler({"input": {"text": "x", "temperature": -1}}))
    assert bad == [{"error": bad[0]["error"]}] and bad[0]["error"].startswith("temperature:")


def test_serverless_config_choice(monkeypatch):
    import handler

    monkeypatch.delenv("STREAM_RESULTS", raising=False)
    assert handler.serverless_config([])["handler"] is handler.handler
    monkeypatch.setenv("STREAM_RESULTS", "true")
    config = handler.serverless_config([])
    assert config["handler"] is handler.stream_handler and config["return_aggregate_stream"] is True
    assert handler.serverless_config(["handler.py", "--test_input", "{}"])["handler"] is handler.handler


def test_progress_reported_for_long_text(worker):
    from request_schema import parse_request

    seen = []
    text = " ".join(f"This is sentence number {i}, long enough to need its own chunk." for i in range(12))
    worker.run(parse_request({"text": text})[0], progress=lambda done, total: seen.append((done, total)))
    assert len(seen) > 1 and seen[-1][0] == seen[-1][1] and seen == sorted(seen)


def test_oversized_result_is_a_clear_error(run_job, monkeypatch):
    monkeypatch.setenv("MAX_RESULT_MB", "0.001")
    monkeypatch.delenv("BUCKET_ENDPOINT_URL", raising=False)
    result = run_job({"text": "This will not fit."})
    assert result["error"].startswith("output_format:")
    assert "result limit" in result["error"] and "mp3" in result["error"]


def test_oversized_result_is_uploaded_when_a_bucket_is_set(run_job, monkeypatch):
    import result_delivery

    uploads = []

    def fake_upload(data: bytes, fmt: str) -> str:
        uploads.append((data, fmt))
        return "https://bucket.example/audio.wav"

    monkeypatch.setenv("MAX_RESULT_MB", "0.001")
    monkeypatch.setenv("BUCKET_ENDPOINT_URL", "https://bucket.example")
    monkeypatch.setattr(result_delivery, "upload", fake_upload)
    result = run_job({"text": "This goes to the bucket."})
    assert result["audio_url"] == "https://bucket.example/audio.wav" and "audio" not in result
    data, fmt = uploads[0]
    wav, sr = sf.read(io.BytesIO(data))
    assert fmt == "wav" and sr == result["sample_rate"] and wav.size > 0
