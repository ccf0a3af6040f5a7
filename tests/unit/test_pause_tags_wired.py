"""Pause tags in every mode: exact silence where the tag stands (basic, streaming, the
OpenAI route, the client), Turbo's own tags passed through, bad tags refused naming the
text field.

At the pipeline the silence is exact: ``round(seconds * rate)`` zero samples between the
speech either side. Through an encoder the audio is 16-bit, and a faded chunk edge can
round to zero too, so there the run of zeros is the tag's length plus at most
QUANTISED_EDGE_SAMPLES.
"""
from __future__ import annotations

import base64
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from chatterbox_worker.models.options import GenerationOptions
from chatterbox_worker.pipeline.speech import SpeechJob, speak, speak_stream
from chatterbox_worker.testing.stub_model import STUB_SR, StubModel
from tests.http_servers import running_app, wait_ready

REPO = Path(__file__).resolve().parents[2]
QUANTISED_EDGE_SAMPLES = 8
TEXT = "Hello there, my friend. [pause:1.5s] General Kenobi, you are a bold one."


def job_for(model) -> SpeechJob:
    return SpeechJob(model, None, model.default_conditionals(), None, 5, GenerationOptions(seed=5))


def zero_runs(samples: np.ndarray) -> list[tuple[int, int]]:
    """(start, length) of every run of exact zeros."""
    zero = np.concatenate([[False], samples == 0, [False]])
    edges = np.flatnonzero(np.diff(zero.astype(np.int8)))
    return [(int(a), int(b - a)) for a, b in zip(edges[::2], edges[1::2])]


def longest_zero_run(samples: np.ndarray) -> tuple[int, int]:
    return max(zero_runs(samples), key=lambda run: run[1])


@pytest.mark.parametrize("tag, samples", [("[pause:1.5s]", 36000), ("[pause:300ms]", 7200), ("[pause:0.01s]", 240)])
def test_basic_mode_inserts_exactly_the_tags_silence_where_it_stands(worker, tag, samples):
    model = StubModel()
    wav = speak(worker, job_for(model), f"Hello there, my friend. {tag} General Kenobi, you are a bold one.")
    first = model.synthesize("Hello there, my friend.", conditionals=model.default_conditionals(),
                             options=GenerationOptions(seed=5))
    start, length = longest_zero_run(wav)
    assert (start, length) == (first.size, samples)  # right after the first sentence, exactly long
    assert [t for t, _ in model.generations[:2]] == ["Hello there, my friend.", "General Kenobi, you are a bold one."]


def test_leading_trailing_and_adjacent_tags_add_up_exactly(worker):
    model = StubModel()
    wav = speak(worker, job_for(model), "[pause:100ms] One sentence here. [pause:200ms][pause:50ms]")
    runs = zero_runs(wav)
    assert runs[0] == (0, 2400)
    assert runs[-1][1] == 6000 and runs[-1][0] + 6000 == wav.size


def test_streaming_sends_the_silence_as_one_window_in_its_place(worker):
    windows = list(speak_stream(worker, job_for(StubModel()), TEXT, chunk_size=10))
    silent = [i for i, w in enumerate(windows) if w.size and not w.any()]
    assert len(silent) == 1 and windows[silent[0]].size == 36000
    assert 0 < silent[0] < len(windows) - 1


def test_turbo_tags_pass_through_unchanged(worker):
    model = StubModel()
    model.variant = "turbo"
    speak(worker, job_for(model), "Well [laugh] that was funny. [cough] Excuse me [chuckle].")
    assert [t for t, _ in model.generations] == ["Well [laugh] that was funny. [cough] Excuse me [chuckle]."]


@pytest.mark.parametrize("text, says", [
    ("Hi [pause:2] there.", "malformed pause tag"), ("Hi [pause:11s] there.", "0 to 10 s"),
    ("Hi [pause] there.", "malformed"), ("Hi [pause:abc] there.", "malformed"),
    ("[pause:1s] [pause:2s]", "nothing to speak"), ("[pause:1s]", "only pause tags"),
])
def test_bad_tags_and_tags_alone_are_refused_naming_text(run_job, text, says):
    for mode in ("basic", "streaming"):
        result = run_job({"text": text, "mode": mode})
        assert result["error"].startswith("text:") and says in result["error"], result


def test_a_basic_job_over_the_queue_handler_places_the_pause(run_job):
    result = run_job({"text": TEXT, "output_format": "pcm_16", "seed": 5})
    pcm = np.frombuffer(base64.b64decode(result["audio"]), dtype="<i2")
    _, length = longest_zero_run(pcm)
    assert 36000 <= length <= 36000 + QUANTISED_EDGE_SAMPLES


# -- the OpenAI route and the client ------------------------------------------------------

@pytest.fixture
def http_url(worker):
    import server

    with running_app(server.create_app(lambda: worker)) as url:
        wait_ready(url)
        yield url


@pytest.mark.parametrize("stream", [True, False])
def test_the_openai_route_places_the_pause(http_url, stream):
    import httpx

    body = {"model": "tts-1", "voice": "Amy", "input": TEXT, "response_format": "pcm", "stream": stream}
    response = httpx.post(f"{http_url}/v1/audio/speech", json=body, timeout=30)
    assert response.status_code == 200, response.text
    _, length = longest_zero_run(np.frombuffer(response.content, dtype="<i2"))
    assert 36000 <= length <= 36000 + QUANTISED_EDGE_SAMPLES  # 24 kHz out, as the stub speaks


def test_the_openai_route_refuses_a_bad_tag_naming_input(http_url):
    import httpx

    body = {"model": "tts-1", "voice": "Amy", "input": "Hi [pause:20s] there."}
    response = httpx.post(f"{http_url}/v1/audio/speech", json=body, timeout=30)
    assert response.status_code == 422
    assert response.json()["error"]["param"] == "input" and "pause" in response.json()["error"]["message"]


def test_the_client_sends_tags_and_the_file_has_the_pause(http_url, tmp_path):
    out = tmp_path / "paused.pcm"
    result = subprocess.run([sys.executable, "-m", "chatterbox_client", "--url", http_url, "--quiet", "say", TEXT,
                             "--voice", "Amy", "-o", str(out), "--stream"], cwd=REPO, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    _, length = longest_zero_run(np.frombuffer(out.read_bytes(), dtype="<i2"))
    assert 36000 <= length <= 36000 + QUANTISED_EDGE_SAMPLES
    assert STUB_SR == 24000  # the pcm the client writes is at the model's rate


def test_the_client_asks_for_long_input_only_past_openais_limit_and_keeps_tags():
    from chatterbox_client.backends import OPENAI_MAX_INPUT_CHARS, SpeechOptions
    from chatterbox_worker.contract.limits import OPENAI_MAX_INPUT_CHARS as SERVER_LIMIT

    assert OPENAI_MAX_INPUT_CHARS == SERVER_LIMIT
    short = SpeechOptions(TEXT, "Amy").openai_body()
    assert short["input"] == TEXT and "long_input" not in short
    long = SpeechOptions("word " * 1000, "Amy").openai_body()
    assert long["long_input"] is True
