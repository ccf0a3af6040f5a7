"""Long text on the real classes (CPU, random weights): a seeded job's chunks side by side
give the same audio alone and beside other jobs, a stream's look-ahead changes no window,
and closing a stream opened ahead cancels its engine job.

Tolerance: a seeded job's S3Gen windows are decoded alone (exact seeds), and its T3 rows
draw from their own generators; batched T3 steps move a logit by at most ~2e-6
(test_engine), which has drawn the same tokens in every run. So the audio must agree to
AUDIO_TOLERANCE (float32 rounding; in practice it is bit-identical).
"""
from __future__ import annotations

import base64
import io
import threading
import time

import numpy as np
import pytest
import soundfile as sf

from tests.real_model import TINY_TOKENS

pytestmark = pytest.mark.integration

AUDIO_TOLERANCE = 1e-6
# Eight sentences, each over half of a 40-character bound: one chunk each.
EIGHT = " ".join(f"Here is sentence {word}, spoken." for word in
                 ("one", "two", "three", "four", "five", "six", "seven", "eight"))
CHUNK_BOUND = "40"
CANCEL_WAIT_S = 60


def job_audio(result: dict) -> np.ndarray:
    assert "error" not in result, result
    samples, _ = sf.read(io.BytesIO(base64.b64decode(result["audio"])), dtype="float32")
    return samples


def short_voice(real_worker) -> str:
    """A voice of the worker's short library: S3Gen's cost grows with the prompt, and the
    model's built-in voice would make each of these windows cost about three times as much."""
    return real_worker.library.list_voices()[0]["speaker_name"]


def run(real_worker, job_input: dict) -> dict:
    from chatterbox_worker import operations

    return operations.run(real_worker, operations.parse_request(job_input))


def test_a_seeded_eight_chunk_job_sounds_the_same_alone_and_beside_three_others(real_worker, monkeypatch):
    monkeypatch.setenv("TTS_CHUNK_MAX_CHARS", CHUNK_BOUND)
    monkeypatch.setenv("JOB_CHUNK_SLOTS", "4")
    voice = short_voice(real_worker)
    job = {"text": EIGHT, "voice_name": voice, "seed": 2024, "max_new_tokens": TINY_TOKENS, "output_format": "wav"}
    chunks: list[int] = []
    progress = lambda done, total: chunks.append(total)  # noqa: E731
    from chatterbox_worker import operations

    alone = job_audio(operations.run(real_worker, operations.parse_request(job), progress=progress))
    assert set(chunks) == {8}

    results: dict[str, dict] = {}

    def go(name: str, job_input: dict) -> None:
        results[name] = run(real_worker, job_input)

    others = [{"text": f"Another job, number {i}, runs beside it.", "voice_name": voice, "seed": i,
               "max_new_tokens": TINY_TOKENS}
              for i in range(3)]
    threads = [threading.Thread(target=go, args=("long", job))]
    threads += [threading.Thread(target=go, args=(f"other{i}", o)) for i, o in enumerate(others)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    beside = job_audio(results["long"])
    assert beside.shape == alone.shape
    assert np.abs(beside - alone).max() <= AUDIO_TOLERANCE
    assert all("error" not in results[f"other{i}"] for i in range(3))


def test_a_streams_look_ahead_changes_no_window(real_worker, monkeypatch):
    from chatterbox_worker.models.options import GenerationOptions
    from chatterbox_worker.pipeline.speech import SpeechJob, speak_stream

    monkeypatch.setenv("TTS_CHUNK_MAX_CHARS", CHUNK_BOUND)
    model = real_worker.models["standard"]
    options = model.options(seed=77, max_new_tokens=TINY_TOKENS)
    voice = real_worker.library.get_voice_audio_by_name(short_voice(real_worker))
    conditionals = model.prepare_conditionals_from_array(voice.samples, voice.sample_rate)
    job = SpeechJob(model, None, conditionals, None, 77, options)
    text = "The first sentence is here. The second one follows it."
    assert isinstance(options, GenerationOptions)
    streams = {}
    for lookahead in ("0", "1"):
        monkeypatch.setenv("STREAM_LOOKAHEAD_CHUNKS", lookahead)
        streams[lookahead] = list(speak_stream(real_worker, job, text, chunk_size=2))
    assert len(streams["0"]) == len(streams["1"]) >= 2  # both sentences spoke
    for without, with_ in zip(streams["0"], streams["1"]):
        assert without.shape == with_.shape and np.abs(without - with_).max() <= AUDIO_TOLERANCE


def test_closing_a_stream_that_was_opened_but_never_read_cancels_its_engine_job(model):
    options = model.options(seed=5, max_new_tokens=400)
    before = model.engine.stats().tokens
    stream = model.stream("A stream that nobody reads.", conditionals=model.default_conditionals(),
                          options=options, chunk_size=10)
    stream.close()
    deadline = time.monotonic() + CANCEL_WAIT_S
    while model.engine.stats().active_jobs or model.engine.stats().pending_jobs:
        assert time.monotonic() < deadline, "the engine still runs the closed stream's job"
        time.sleep(0.05)
    assert model.engine.stats().tokens - before < 400
