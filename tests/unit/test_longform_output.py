"""Chapter-length jobs: the job text limit, OpenAI's own limit unless asked, audio written
out as it is made (same samples as the in-memory path), delivery by upload over the inline
limit, and no temporary file left behind."""
from __future__ import annotations

import base64
import io
import tempfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from chatterbox_worker.contract import delivery
from chatterbox_worker.contract.errors import JobError
from chatterbox_worker.contract.limits import MAX_TEXT_CHARS, OPENAI_MAX_INPUT_CHARS
from chatterbox_worker.contract.request_schema import TTSRequest, validate_request
from chatterbox_worker.http.openai_speech import OpenAIError, parse_speech_request
from chatterbox_worker.pipeline import long_output
from chatterbox_worker.pipeline.long_output import PcmStats

SENTENCE = "This chapter goes on for a while, one plain sentence after another, as books do. "
ONE_LSB = 1 / 32767


def chapter(chars: int) -> str:
    return (SENTENCE * (chars // len(SENTENCE) + 1))[:chars].rsplit(" ", 1)[0] + "."


def scratch_left() -> list[Path]:
    return list(Path(tempfile.gettempdir()).glob("chatterbox-long-*"))


def decoded(result: dict) -> np.ndarray:
    samples, _ = sf.read(io.BytesIO(base64.b64decode(result["audio"])), dtype="float32")
    return samples


def test_a_job_may_send_a_chapter_and_no_more():
    validate_request(TTSRequest, {"text": chapter(MAX_TEXT_CHARS)})
    with pytest.raises(JobError) as info:
        validate_request(TTSRequest, {"text": "x" * (MAX_TEXT_CHARS + 1)})
    assert info.value.field == "text" and str(MAX_TEXT_CHARS) in info.value.message
    assert MAX_TEXT_CHARS == 100_000


def test_the_openai_route_keeps_openais_limit_unless_the_request_opts_in():
    body = {"model": "tts-1", "voice": "Amy", "input": chapter(OPENAI_MAX_INPUT_CHARS + 50)}
    with pytest.raises(OpenAIError) as info:
        parse_speech_request(body)
    assert info.value.param == "input" and "long_input" in str(info.value)
    assert parse_speech_request({**body, "long_input": True}).long_input
    parse_speech_request({**body, "input": chapter(OPENAI_MAX_INPUT_CHARS)})


@pytest.mark.parametrize("fmt", ["wav", "flac"])
def test_the_written_out_path_gives_the_in_memory_paths_samples(run_job, monkeypatch, fmt):
    text = chapter(1500)
    in_memory = decoded(run_job({"text": text, "seed": 11, "output_format": fmt}))
    monkeypatch.setattr(long_output, "LONG_TEXT_CHARS", 1000)
    written_out = []
    real_write = long_output.write_pcm
    monkeypatch.setattr(long_output, "write_pcm", lambda *a: written_out.append(1) or real_write(*a))
    written = decoded(run_job({"text": text, "seed": 11, "output_format": fmt}))
    assert written_out  # it took the written-out path
    assert written.shape == in_memory.shape
    assert np.abs(written - in_memory).max() <= ONE_LSB
    assert not scratch_left()


@pytest.mark.parametrize("mode", ["peak", "rms"])
def test_normalisation_over_the_whole_written_signal_matches_the_in_memory_one(run_job, monkeypatch, mode):
    text = chapter(1500)
    job = {"text": text, "seed": 3, "output_format": "wav", "audio_normalization": mode}
    in_memory = decoded(run_job(job))
    monkeypatch.setattr(long_output, "LONG_TEXT_CHARS", 1000)
    written = decoded(run_job(job))
    assert np.abs(written - in_memory).max() <= 2 * ONE_LSB  # quantised once more before the gain


def test_a_long_result_over_the_inline_limit_is_uploaded_from_its_file(run_job, monkeypatch):
    uploads: list[tuple[int, str]] = []

    def upload(path: Path, fmt: str) -> str:
        uploads.append((path.stat().st_size, fmt))
        return "https://bucket.example/long.wav"

    monkeypatch.setattr(delivery, "upload_file", upload)
    monkeypatch.setenv("MAX_RESULT_MB", "0.05")
    monkeypatch.setenv("BUCKET_ENDPOINT_URL", "https://bucket.example")
    result = run_job({"text": chapter(6000)})
    assert result["audio_url"] == "https://bucket.example/long.wav" and "audio" not in result
    size, fmt = uploads[0]
    assert fmt == "wav" and size == 44 + round(result["duration"] * result["sample_rate"]) * 2
    assert not scratch_left()


def test_a_long_result_without_a_bucket_is_a_clear_error_and_leaves_no_file(run_job, monkeypatch):
    monkeypatch.setenv("MAX_RESULT_MB", "0.05")
    monkeypatch.delenv("BUCKET_ENDPOINT_URL", raising=False)
    result = run_job({"text": chapter(6000)})
    assert result["error"].startswith("output_format:") and "BUCKET_" in result["error"]
    assert not scratch_left()


def test_a_chunk_that_fails_mid_chapter_leaves_no_file(run_job, stub_model, monkeypatch):
    calls = []

    def failing(text, **kwargs):
        calls.append(text)
        if len(calls) == 5:
            raise RuntimeError("model failed")
        return np.zeros(100, dtype=np.float32) + 0.1

    monkeypatch.setattr(stub_model, "synthesize", failing)
    result = run_job({"text": chapter(6000)})
    assert "error" in result
    assert not scratch_left()


def test_pcm_stats_give_normalize_audios_gain():
    from chatterbox_worker.audio.codec import normalize_audio

    rng = np.random.default_rng(0)
    signal = (0.3 * rng.standard_normal(10_000)).astype(np.float32)
    stats = PcmStats()
    for block in np.array_split(signal, 7):
        stats.add(block)
    for mode in ("peak", "rms"):
        assert np.allclose(signal * stats.gain(mode), normalize_audio(signal, mode), atol=1e-6)
    assert stats.gain(None) == 1.0
