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
    # No chunk can know it is the last without waiting for the next: the final item, the
    # one with the metrics, marks the end.
    assert all(set(c) == {"chunk_index", "audio", "format", "sample_rate"} for c in chunks)
    assert all("metrics" not in c for c in chunks) and "streaming_metrics" in final
    pcm = b"".join(base64.b64decode(c["audio"]) for c in chunks)
    samples = np.frombuffer(pcm, dtype="<i2")
    metrics = final["streaming_metrics"]
    assert metrics["total_chunks"] == len(chunks)
    assert abs(samples.size / chunks[0]["sample_rate"] - metrics["audio_duration"]) < 1e-3
    assert final["seed"] == 3 and "metrics" in final and final["parameters"]["voice_id"] == "none"


class RecordingStream:
    """A stub stream that logs when the handler asks it for each window."""

    def __init__(self, model, events):
        self.model, self.events = model, events

    def __call__(self, text, *, conditionals, options=None, chunk_size=50, **_):
        wav = self.model.synthesize(text, conditionals=conditionals, options=options)
        step = max(1, chunk_size * self.model.sr // 25)
        for index, start in enumerate(range(0, len(wav), step)):
            self.events.append(("made", index))
            yield wav[start:start + step]


def test_each_chunk_leaves_before_the_next_is_asked_for(worker, stub_model, monkeypatch):
    """Chunk k is yielded by the handler before the model is asked for chunk k+1."""
    import handler

    events: list[tuple[str, int]] = []
    monkeypatch.setattr(stub_model, "stream", RecordingStream(stub_model, events))
    monkeypatch.setattr(handler, "get_worker", lambda: worker)
    job = {"id": "j2", "input": {"text": "One sentence that is long enough for several windows.",
                                 "mode": "streaming", "chunk_size": 5, "output_format": "pcm_16"}}
    for item in handler.stream_handler(job):
        if "chunk_index" in item:
            events.append(("sent", item["chunk_index"]))
    made = [i for kind, i in events if kind == "made"]
    assert len(made) > 2
    for k in made[:-1]:
        assert events.index(("sent", k)) < events.index(("made", k + 1)), events


def test_stream_timings_leave_out_the_time_spent_suspended(worker, monkeypatch):
    import time
    from types import SimpleNamespace

    import handler
    from chatterbox_worker.pipeline import job_metrics

    # The job's clock jumps a day each time the stream sits suspended at a yield (RunPod
    # posting the chunk), so a timing that counted any suspension would hold a whole day.
    day, jumps = 86400.0, [0]
    monkeypatch.setattr(job_metrics, "time", SimpleNamespace(perf_counter=lambda: time.perf_counter() + day * jumps[0]))
    monkeypatch.setattr(handler, "get_worker", lambda: worker)
    items = []
    for item in handler.stream_handler({"input": {"text": "Pause between every chunk of this rather long text, please.",
                                                   "mode": "streaming", "chunk_size": 5}}):
        items.append(item)
        jumps[0] += 1
    chunks, final = items[:-1], items[-1]
    streamed, metrics = final["streaming_metrics"], final["metrics"]
    seconds = [streamed["total_generation_time"], metrics["generation_ms"] / 1000, metrics["total_ms"] / 1000,
               *(c["latency"] for c in streamed["chunk_details"])]
    assert len(chunks) > 2 and jumps[0] == len(items)
    assert [int(s // day) for s in seconds] == [0] * len(seconds)  # suspensions counted: none


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
    # The served handlers are the async faces of the dict and generator handlers.
    assert handler.serverless_config([])["handler"] is handler.async_handler
    monkeypatch.setenv("STREAM_RESULTS", "true")
    config = handler.serverless_config([])
    assert config["handler"] is handler.async_stream_handler and config["return_aggregate_stream"] is True
    assert handler.serverless_config(["handler.py", "--test_input", "{}"])["handler"] is handler.handler


def test_progress_reported_for_long_text(worker):
    from chatterbox_worker import operations

    seen = []
    text = " ".join(f"This is sentence number {i}, long enough to need its own chunk." for i in range(12))
    operations.run(worker, operations.parse_request({"text": text}), progress=lambda done, total: seen.append((done, total)))
    assert len(seen) > 1 and seen[-1][0] == seen[-1][1] and seen == sorted(seen)


def test_oversized_result_is_a_clear_error(run_job, monkeypatch):
    monkeypatch.setenv("MAX_RESULT_MB", "0.001")
    monkeypatch.delenv("BUCKET_ENDPOINT_URL", raising=False)
    result = run_job({"text": "This will not fit."})
    assert result["error"].startswith("output_format:")
    assert "result limit" in result["error"] and "mp3" in result["error"]


def test_oversized_result_is_uploaded_when_a_bucket_is_set(run_job, monkeypatch):
    from chatterbox_worker.contract import delivery as result_delivery

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


def test_the_first_window_may_be_shorter_than_the_rest(worker):
    from chatterbox_worker import operations
    from chatterbox_worker.pipeline.job_metrics import Timer
    from chatterbox_worker.pipeline.speech import prepare_speech, speak_stream

    request = operations.parse_request({"text": "A sentence long enough for a few windows of audio, " * 3}).request
    job = prepare_speech(worker, request, None, Timer(), exaggeration=0.5, cfg_weight=0.5)
    sizes = [w.size for w in speak_stream(worker, job, request.text, chunk_size=25, first_chunk_size=5)]
    assert len(sizes) > 2 and sizes[0] == 5 * 24000 // 25 and sizes[1] == 25 * 24000 // 25
