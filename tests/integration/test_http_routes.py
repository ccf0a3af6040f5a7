"""HTTP mode on the real chatterbox classes: one request per route, over uvicorn on
127.0.0.1, with a handful of speech tokens each (random weights, CPU)."""
from __future__ import annotations

import base64
import io
import json

import av
import httpx
import pytest

from tests.http_servers import running_app, tone, wait_ready
from tests.real_model import TINY_TOKENS

pytestmark = pytest.mark.integration
TIMEOUT = httpx.Timeout(300.0)
# Two windows: the first is STREAM_FIRST_CHUNK_TOKENS long, so the stream has a second one.
STREAM_TOKENS = 2 * TINY_TOKENS


def decoded_seconds(data: bytes) -> float:
    container = av.open(io.BytesIO(data))
    return sum(frame.samples for frame in container.decode(audio=0)) / container.streams.audio[0].rate


@pytest.fixture
def base_url(real_worker, monkeypatch):
    import server

    monkeypatch.setenv("STREAM_FIRST_CHUNK_TOKENS", str(TINY_TOKENS))
    voice = real_worker.library.list_voices()[0]["speaker_name"]
    monkeypatch.setenv("OPENAI_VOICE_ALIASES", f"alloy={voice}")
    with running_app(server.create_app(lambda: real_worker)) as url:
        wait_ready(url)
        yield url


def test_every_route_on_the_real_model(base_url, real_worker, run_job_real):
    speech = {"model": "tts-1", "input": "Hello there.", "voice": "alloy", "seed": 1,
              "max_new_tokens": STREAM_TOKENS}
    pieces = []
    with httpx.stream("POST", f"{base_url}/v1/audio/speech", json=speech, timeout=TIMEOUT) as response:
        assert response.status_code == 200, response.read()
        pieces = [piece for piece in response.iter_bytes() if piece]
    assert decoded_seconds(b"".join(pieces)) > 0

    events = httpx.post(f"{base_url}/v1/audio/speech", timeout=TIMEOUT,
                        json={**speech, "max_new_tokens": TINY_TOKENS, "response_format": "pcm",
                              "stream_format": "sse"}).text
    parsed = [json.loads(line[6:]) for line in events.splitlines() if line.startswith("data: ")]
    assert parsed[-1]["type"] == "speech.audio.done" and parsed[0]["type"] == "speech.audio.delta"

    voices = httpx.get(f"{base_url}/v1/audio/voices").json()["voices"]
    assert voices and {"id", "name"} <= set(voices[0])
    reference = io.BytesIO()
    import soundfile as sf

    sf.write(reference, tone(6.0, 24000, 200.0), 24000, format="WAV")
    saved = httpx.post(f"{base_url}/v1/audio/voices", data={"name": "Route Voice"},
                       files={"file": ("ref.wav", reference.getvalue(), "audio/wav")}, timeout=TIMEOUT)
    assert saved.status_code == 201, saved.text
    assert httpx.delete(f"{base_url}/v1/audio/voices/{saved.json()['id']}").json()["deleted"] is True
    assert "tts-1" in {m["id"] for m in httpx.get(f"{base_url}/v1/models").json()["data"]}

    job = httpx.post(f"{base_url}/v1/jobs", timeout=TIMEOUT, json={"input": {
        "text": "Hi.", "voice_name": voices[0]["name"], "max_new_tokens": TINY_TOKENS, "seed": 1}}).json()
    assert "error" not in job and base64.b64decode(job["audio"])[:4] == b"RIFF"
    assert "chatterbox_audio_seconds_total" in httpx.get(f"{base_url}/metrics").text

    queued = run_job_real({"openai_route": "/v1/audio/speech",
                           "openai_input": {**speech, "max_new_tokens": TINY_TOKENS, "response_format": "opus"}})
    assert decoded_seconds(base64.b64decode(queued["audio"])) > 0


@pytest.fixture
def run_job_real(real_worker):
    import handler

    return lambda job_input: handler.run_job(job_input, lambda: real_worker)
