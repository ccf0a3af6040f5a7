"""HTTP mode against real servers on 127.0.0.1: uvicorn serving server.create_app with the
stub worker, and the official openai package (and httpx) as clients."""
from __future__ import annotations

import base64
import contextlib
import io
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
import soundfile as sf

from chatterbox_worker.audio.streaming import LENGTH_IN_HEADER_FORMATS, SPEECH_FORMATS, encode_speech
from chatterbox_worker.engine.cancellation import current_scope, raise_if_cancelled
from chatterbox_worker.testing.stub_model import StubModel
from tests.http_servers import SlowStreamModel, running_app, tone, wait_ready
from tests.unit.test_openai_speech import decode, dominant_hz

SR = 24000
LONG_TEXT = ("Streaming speech should reach the listener before the model has finished the whole sentence. " * 3)
# How long a stub waits for an event a test sets: a deadline against hanging, not a timing
# claim. On time the event comes at once; a late one fails the order assertion that follows.
EVENT_WAIT_S = 30.0


@pytest.fixture
def serve(monkeypatch):
    """``serve(worker_or_source)`` -> base URL of a live server (stopped after the test)."""
    import server

    stack = []

    def start(source, **kwargs):
        source = source if callable(source) else (lambda w=source: w)
        ctx = running_app(server.create_app(source, **kwargs))
        url = ctx.__enter__()
        stack.append(ctx)
        return url

    yield start
    for ctx in reversed(stack):
        ctx.__exit__(None, None, None)


@pytest.fixture
def base_url(serve, worker):
    url = serve(worker)
    wait_ready(url)
    return url


@pytest.fixture
def client(base_url):
    return openai.OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0, timeout=30)


def speak(client, **kwargs) -> bytes:
    params = {"model": "tts-1", "voice": "alloy", "input": "Hello from the speech route.", **kwargs}
    with client.audio.speech.with_streaming_response.create(**params) as response:
        return b"".join(response.iter_bytes())


# -- the OpenAI route with the openai package ---------------------------------------------

@pytest.mark.parametrize("fmt", SPEECH_FORMATS)
def test_every_format_decodes(client, fmt):
    samples, rate = decode(speak(client, response_format=fmt), fmt)
    assert 0.2 < samples.size / rate < 1.0  # the stub speaks 10 ms per character


# libsndfile (soundfile) has no AAC decoder and no raw-PCM container; those go through PyAV
# and numpy, and so does a streamed FLAC, whose header cannot carry the length.
SOUNDFILE_FORMATS = ("mp3", "opus", "flac", "wav")


@pytest.mark.parametrize("fmt", SPEECH_FORMATS)
@pytest.mark.parametrize("mode", ["default", "whole", "stream"])
def test_every_format_reads_whole_or_streamed(base_url, fmt, mode):
    extra = {"default": {}, "whole": {"stream": False}, "stream": {"stream_format": "audio"}}[mode]
    body = {"model": "tts-1", "voice": "Amy", "input": "Hello from the speech route.", "response_format": fmt, **extra}
    response = httpx.post(f"{base_url}/v1/audio/speech", json=body, timeout=30)
    assert response.status_code == 200, response.text
    sent_whole = mode == "whole" or (mode == "default" and fmt in LENGTH_IN_HEADER_FORMATS)
    # A whole file says how long it is; a stream is chunked.
    assert ("content-length" in response.headers) == sent_whole, response.headers
    if fmt in SOUNDFILE_FORMATS and (sent_whole or fmt != "flac"):
        samples, rate = sf.read(io.BytesIO(response.content), dtype="float32")
    else:
        samples, rate = decode(response.content, fmt)
    assert rate == SR and 0.2 < samples.size / rate < 1.0  # the stub speaks 10 ms per character
    if sent_whole and fmt in LENGTH_IN_HEADER_FORMATS:
        assert sf.info(io.BytesIO(response.content)).frames == samples.size


def test_voice_name_id_alias_and_object_pick_the_same_voice(client):
    expected = dominant_hz(*decode(speak(client, voice="Amy", response_format="wav"), "wav"))
    for voice in ("alloy", "de16e46c", "amy"):
        assert dominant_hz(*decode(speak(client, voice=voice, response_format="wav"), "wav")) == expected
    other = dominant_hz(*decode(speak(client, voice="Eric", response_format="wav"), "wav"))
    assert other != expected


def test_speed_is_pitch_preserving(client):
    normal, _ = decode(speak(client, response_format="pcm", voice="Amy"), "pcm")
    fast, _ = decode(speak(client, response_format="pcm", voice="Amy", speed=2.0), "pcm")
    assert abs(fast.size / normal.size - 0.5) < 0.1
    assert abs(dominant_hz(fast, SR) - dominant_hz(normal, SR)) < 15


def test_whole_clip_without_streaming_has_a_length(base_url):
    response = httpx.post(f"{base_url}/v1/audio/speech", json={"model": "tts-1", "input": "Hello", "voice": "Amy",
                                                               "response_format": "wav", "stream": False})
    assert response.status_code == 200 and response.headers["content-length"] == str(len(response.content))
    assert decode(response.content, "wav")[0].size > 0


@pytest.mark.parametrize("stream", [True, False])
def test_the_seed_header_reproduces_a_request(base_url, stream):
    body = {"model": "tts-1", "input": "Hello", "voice": "Amy", "response_format": "pcm", "stream": stream}
    first = httpx.post(f"{base_url}/v1/audio/speech", json=body)
    seed = int(first.headers["x-chatterbox-seed"])
    again = httpx.post(f"{base_url}/v1/audio/speech", json={**body, "seed": seed})
    assert again.headers["x-chatterbox-seed"] == str(seed) and again.content == first.content


class HeldLastWindowModel(StubModel):
    """Streams every window but the last at once, then holds the last until ``release`` is set."""

    def __init__(self):
        super().__init__()
        self.release, self.finished = threading.Event(), threading.Event()
        self.first_chunk_sizes: list[int | None] = []

    def stream(self, text, *, conditionals, options=None, chunk_size=50, first_chunk_size=None):
        self.first_chunk_sizes.append(first_chunk_size)
        windows = list(super().stream(text, conditionals=conditionals, options=options, chunk_size=chunk_size,
                                      first_chunk_size=first_chunk_size))
        yield from windows[:-1]
        self.release.wait(EVENT_WAIT_S)
        yield windows[-1]
        self.finished.set()


def test_first_bytes_arrive_before_the_model_finishes(serve, worker):
    model = HeldLastWindowModel()
    worker.models["standard"] = model
    url = serve(worker)
    wait_ready(url)
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=60)
    pieces, finished_when_first = [], None
    with client.audio.speech.with_streaming_response.create(model="tts-1", voice="Amy", input=LONG_TEXT,
                                                            response_format="mp3") as response:
        for piece in response.iter_bytes():
            if not pieces:
                finished_when_first = model.finished.is_set()
                model.release.set()  # only a client holding audio lets the model finish
            pieces.append(piece)
    assert finished_when_first is False, "the first bytes waited for the whole generation"
    assert model.finished.is_set()
    assert model.first_chunk_sizes[0] == 12  # STREAM_FIRST_CHUNK_TOKENS
    samples, rate = decode(b"".join(pieces), "mp3")
    assert samples.size / rate > 2.0


class CancelAwareModel(StubModel):
    """Streams its first window, then waits for its job to be cancelled before the rest, and
    leaves with the scope's error as the decode engine does."""

    def __init__(self):
        super().__init__()
        self.cancelled, self.ended = threading.Event(), threading.Event()
        self.finished = False

    def stream(self, text, *, conditionals, options=None, chunk_size=50, first_chunk_size=None):
        windows = list(super().stream(text, conditionals=conditionals, options=options, chunk_size=chunk_size))
        scope = current_scope()
        if scope is not None:
            scope.on_cancel(lambda _error: self.cancelled.set())
        try:
            yield windows[0]
            self.cancelled.wait(EVENT_WAIT_S)
            raise_if_cancelled()
            yield from windows[1:]
            self.finished = True
        finally:
            self.ended.set()


def test_a_client_that_leaves_stops_the_generation(serve, worker):
    model = CancelAwareModel()
    worker.models["standard"] = model
    url = serve(worker)
    wait_ready(url)
    with httpx.stream("POST", f"{url}/v1/audio/speech", json={"model": "tts-1", "input": LONG_TEXT * 2,
                                                               "voice": "Amy", "response_format": "pcm"}) as response:
        next(response.iter_bytes())
    assert model.ended.wait(EVENT_WAIT_S), "the model never stopped"
    assert model.cancelled.is_set() and not model.finished, "the model kept generating for a client that had left"
    assert httpx.get(f"{url}/v1/models").status_code == 200


def test_sse_events_parse(base_url):
    with httpx.stream("POST", f"{base_url}/v1/audio/speech",
                      json={"model": "tts-1", "input": LONG_TEXT, "voice": "Amy", "response_format": "pcm",
                            "stream_format": "sse"}) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [json.loads(line[len("data: "):]) for line in response.iter_lines() if line.startswith("data: ")]
    assert [e["type"] for e in events[:-1]] == ["speech.audio.delta"] * (len(events) - 1)
    assert events[-1]["type"] == "speech.audio.done" and len(events) > 2
    pcm = b"".join(base64.b64decode(e["audio"]) for e in events[:-1])
    assert len(pcm) // 2 / SR > 2.0


class MeetingModel(StubModel):
    """Each stream waits inside the model until ``parties`` streams are inside it at once."""

    def __init__(self, parties: int):
        super().__init__()
        self.barrier, self.met = threading.Barrier(parties, timeout=EVENT_WAIT_S), []

    def stream(self, text, **kwargs):
        with contextlib.suppress(threading.BrokenBarrierError):  # requests one after another: none met
            self.met.append(self.barrier.wait())
        yield from super().stream(text, **kwargs)


def test_requests_run_at_once(serve, worker, monkeypatch):
    monkeypatch.setenv("MAX_CONCURRENT_JOBS", "4")
    model = worker.models["standard"] = MeetingModel(4)
    url = serve(worker)
    wait_ready(url)
    body = {"model": "tts-1", "input": "x" * 100, "voice": "Amy", "response_format": "pcm"}

    def one(_):
        return httpx.post(f"{url}/v1/audio/speech", json=body, timeout=2 * EVENT_WAIT_S).status_code

    with ThreadPoolExecutor(4) as pool:
        assert list(pool.map(one, range(4))) == [200] * 4
    assert sorted(model.met) == [0, 1, 2, 3], "the requests were not inside the model at once"


# -- errors -----------------------------------------------------------------------------

BAD_SPEECH = [
    ({"model": "tts-1", "voice": "Amy"}, 422, "input"),
    ({"model": "tts-1", "input": "Hi", "voice": "Amy", "response_format": "wma"}, 422, "response_format"),
    ({"model": "tts-1", "input": "Hi", "voice": "Amy", "speed": 9}, 422, "speed"),
    ({"model": "dall-e-3", "input": "Hi", "voice": "Amy"}, 404, "model"),
    ({"model": "tts-1", "input": "Hi", "voice": "Nobody At All"}, 404, "voice"),
    ({"model": "tts-1", "input": "Hi", "voice": {"id": "ffffffff"}}, 404, "voice"),
    ({"model": "chatterbox-turbo", "input": "Hi", "voice": "Amy"}, 400, "model"),  # not loaded
    ({"model": "tts-1", "input": "Hi", "voice": "Amy", "language": "fr"}, 400, "language"),
    ({"model": "tts-1", "input": "   ", "voice": "Amy"}, 400, "input"),
    ({"model": "tts-1", "input": "Hi", "voice": "Amy", "stream_format": "sse", "seed": -1}, 422, "seed"),
    (["a", "list"], 400, None),
]


def test_bad_requests_get_the_openai_shape_and_the_server_keeps_serving(base_url, client):
    for body, status, param in BAD_SPEECH:
        response = httpx.post(f"{base_url}/v1/audio/speech", json=body)
        assert response.status_code == status, (body, response.text)
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"} and error["param"] == param, (body, error)
    for raw in (b"{not json", b"\xff\xfe"):
        response = httpx.post(f"{base_url}/v1/audio/speech", content=raw)
        assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_json"
    assert httpx.get(f"{base_url}/v1/nothing").json()["error"]["code"] == "not_found"
    with pytest.raises(openai.NotFoundError) as info:
        speak(client, voice="Nobody At All")
    assert info.value.body["param"] == "voice"
    assert decode(speak(client, response_format="flac"), "flac")[0].size > 0


def test_a_model_failure_after_prepare_cuts_the_stream_and_the_server_serves_on(serve, worker):
    class Failing(SlowStreamModel):
        def stream(self, *args, **kwargs):
            yield from list(super().stream(*args, **kwargs))[:1]
            raise RuntimeError("decoder broke")

    worker.models["standard"] = Failing(window_delay_s=0.0)
    url = serve(worker)
    wait_ready(url)
    events = httpx.post(f"{url}/v1/audio/speech", json={"model": "tts-1", "input": LONG_TEXT, "voice": "Amy",
                                                         "stream_format": "sse"}).text
    assert '"type":"error"' in events and "decoder broke" in events
    with pytest.raises(httpx.RemoteProtocolError):  # raw audio: the cut is visible to the client
        httpx.post(f"{url}/v1/audio/speech", json={"model": "tts-1", "input": LONG_TEXT, "voice": "Amy"})
    assert httpx.get(f"{url}/ping").status_code == 200


# -- readiness, access ------------------------------------------------------------------

def test_ping_says_loading_then_ready(serve, worker):
    release = threading.Event()

    def slow_load():
        release.wait(10)
        return worker

    url = serve(slow_load)
    assert httpx.get(f"{url}/ping").status_code == 204
    response = httpx.post(f"{url}/v1/audio/speech", json={"model": "tts-1", "input": "Hi", "voice": "Amy"})
    assert response.status_code == 503 and response.json()["error"]["code"] == "model_loading"
    release.set()
    wait_ready(url)
    assert httpx.get(f"{url}/ping").json() == {"status": "ready"}


def test_ping_is_503_when_the_load_failed(serve):
    def broken():
        raise RuntimeError("weights missing")

    url = serve(broken)
    deadline = time.monotonic() + EVENT_WAIT_S  # a wait for the failed load to show, not a timing claim
    while (status := httpx.get(f"{url}/ping").status_code) == 204 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert status == 503
    response = httpx.get(f"{url}/v1/audio/voices")
    assert response.status_code == 503 and "weights missing" in response.json()["error"]["message"]


def test_bearer_token(serve, worker, monkeypatch):
    monkeypatch.setenv("API_KEY", "s3cret")
    url = serve(worker)
    wait_ready(url)
    assert httpx.get(f"{url}/v1/models").status_code == 401
    assert httpx.get(f"{url}/v1/models", headers={"Authorization": "Bearer nope"}).status_code == 401
    ok = openai.OpenAI(base_url=f"{url}/v1", api_key="s3cret", max_retries=0)
    assert ok.models.list().data[0].id == "tts-1"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{url}/v1", api_key="wrong", max_retries=0).models.list()


def test_bodies_over_the_limit_are_refused_declared_or_not(serve, worker, monkeypatch):
    monkeypatch.setenv("MAX_REQUEST_MB", "0.01")  # about 10 kB
    url = serve(worker)
    wait_ready(url)
    big = {"model": "tts-1", "input": "x" * 20_000, "voice": "Amy"}
    response = httpx.post(f"{url}/v1/audio/speech", json=big)
    assert response.status_code == 413 and response.json()["error"]["code"] == "request_too_large"

    def chunked():
        for _ in range(20):
            yield b" " * 1000

    response = httpx.post(f"{url}/v1/jobs", content=chunked(), headers={"content-type": "application/json"})
    assert response.status_code == 413
    assert httpx.get(f"{url}/ping").status_code == 200


# -- voices, models, jobs, metrics -----------------------------------------------------

def wav_bytes(seconds: float, freq: float = 330.0) -> bytes:
    return encode_speech(tone(seconds, SR, freq), SR, "wav")


def test_upload_list_speak_and_delete_a_voice(base_url, client):
    response = httpx.post(f"{base_url}/v1/audio/voices", data={"name": "Studio Voice", "description": "test"},
                          files={"file": ("ref.wav", wav_bytes(6.0), "audio/wav")})
    assert response.status_code == 201, response.text
    voice_id = response.json()["id"]
    voices = httpx.get(f"{base_url}/v1/audio/voices").json()["voices"]
    assert {"id": voice_id, "name": "Studio Voice"}.items() <= next(v for v in voices if v["id"] == voice_id).items()
    assert decode(speak(client, voice="Studio Voice", response_format="wav"), "wav")[0].size > 0
    assert httpx.delete(f"{base_url}/v1/audio/voices/{voice_id}").json()["deleted"] is True
    gone = httpx.delete(f"{base_url}/v1/audio/voices/{voice_id}")
    assert gone.status_code == 404 and gone.json()["error"]["param"] == "voice"
    shipped = httpx.delete(f"{base_url}/v1/audio/voices/de16e46c")
    assert shipped.status_code == 403 and shipped.json()["error"]["code"] == "voice_protected"


@pytest.mark.parametrize("files, data, param", [
    ({"file": ("ref.txt", b"not audio at all", "text/plain")}, {"name": "X"}, "file"),
    ({"file": ("short.wav", wav_bytes(1.0), "audio/wav")}, {"name": "X"}, "file"),
    ({"file": ("ref.wav", wav_bytes(6.0), "audio/wav")}, {}, "name"),
    (None, {"name": "X"}, "file"),
])
def test_bad_uploads_are_checked_like_every_audio_input(base_url, files, data, param):
    response = httpx.post(f"{base_url}/v1/audio/voices", data=data, files=files or {"other": ("a", b"b")})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param


def test_jobs_route_answers_every_operation_like_the_queue(base_url, run_job):
    ref = base64.b64encode(wav_bytes(6.0)).decode()
    jobs = [
        {"text": "Hello", "voice_name": "Amy", "seed": 1},
        {"text": "Hello", "voice_name": "Amy", "mode": "streaming", "seed": 1},
        {"operation": "voice_cloning", "reference_audio": ref, "voice_name": "Cloned", "seed": 1},
        {"operation": "upload_voice", "reference_audio": ref, "voice_name": "Uploaded"},
        {"operation": "list_voices"},
        {"operation": "list_local_voices"},
        {"operation": "search_local_voices", "query": "Am"},
        {"operation": "voice_conversion", "input_audio": ref, "voice_name": "Amy", "seed": 1},
        {"operation": "voice_transfer", "input_audio": ref, "voice_name": "Amy", "seed": 1},
        {"operation": "delete_voice", "voice_name": "Uploaded"},
        {"openai_route": "/v1/models"},
    ]
    for job in jobs:
        response = httpx.post(f"{base_url}/v1/jobs", json={"input": job}, timeout=30)
        assert response.status_code == 200, (job, response.text)
        over_http = response.json()
        assert "error" not in over_http
        if job.get("operation") != "delete_voice":  # the same job in the queue handler gives the same keys
            assert set(over_http) == set(run_job(job))
        assert "audio" not in over_http or base64.b64decode(over_http["audio"])
    bad = httpx.post(f"{base_url}/v1/jobs", json={"input": {"operation": "tts"}})
    assert bad.status_code == 400 and bad.json()["error"].startswith("text:")
    assert httpx.post(f"{base_url}/v1/jobs", json={"nothing": 1}).json()["error"].startswith("input:")


def test_models_and_metrics(base_url, client):
    ids = [m.id for m in client.models.list().data]
    assert {"tts-1", "tts-1-hd", "gpt-4o-mini-tts", "chatterbox", "chatterbox-multilingual",
            "chatterbox-turbo"} <= set(ids)
    speak(client)
    speak(client)
    httpx.post(f"{base_url}/v1/audio/speech", json={"model": "nope", "input": "x", "voice": "Amy"})
    text = httpx.get(f"{base_url}/metrics").text
    for name in ('chatterbox_requests_total{outcome="ok",route="speech"}',
                 'chatterbox_requests_total{outcome="error",route="speech"}',
                 "chatterbox_request_seconds_bucket", "chatterbox_first_audio_seconds_bucket",
                 'chatterbox_audio_seconds_total{model="standard"}', "chatterbox_speech_tokens_per_second_bucket",
                 'chatterbox_conditionals_cache{stat="hits"}', 'chatterbox_batch_occupancy{model="standard"}'):
        assert name in text, name


def test_worker_counters_reach_the_metrics():
    """Engine and S3Gen lane counters of each loaded model, read at scrape time."""
    from types import SimpleNamespace

    from chatterbox_worker.engine.stats import EngineStats
    from chatterbox_worker.http.metrics import WorkerCollector
    from chatterbox_worker.models.interface import ModelStats

    engine = EngineStats(jobs=3, tokens=40, steps=20, oom_retries=1, oom_failures=0, max_batch_jobs=2,
                         graph_replays=0, cancelled=0, faults=0, active_jobs=2, pending_jobs=0, max_jobs=8,
                         max_rows=16, dtype="float32")
    model = SimpleNamespace(engine_stats=lambda: ModelStats(engine, {"calls": 3, "windows": 5, "shared_calls": 1}))
    idle = SimpleNamespace(engine_stats=lambda: ModelStats(None, {"calls": 0}))  # its engine has not started
    broken = SimpleNamespace(engine_stats=lambda: 1 / 0)  # a model that cannot report reads as none
    worker = SimpleNamespace(models={"standard": model, "multilingual": idle, "turbo": broken}, cache=None)
    samples = {(m.name, tuple(sorted(s.labels.items()))): s.value
               for m in WorkerCollector(lambda: worker).collect() for s in m.samples}
    assert samples[("chatterbox_batch_occupancy", (("model", "standard"),))] == 0.25
    assert samples[("chatterbox_s3gen", (("model", "standard"), ("stat", "shared_calls")))] == 1.0
    assert samples[("chatterbox_s3gen", (("model", "standard"), ("stat", "windows")))] == 5.0
    assert samples[("chatterbox_engine", (("model", "standard"), ("stat", "oom_retries")))] == 1.0
    assert samples[("chatterbox_engine", (("model", "standard"), ("stat", "max_rows")))] == 16.0
    assert ("chatterbox_engine", (("model", "standard"), ("stat", "dtype"))) not in samples
    assert samples[("chatterbox_batch_occupancy", (("model", "multilingual"),))] == 0.0
    assert samples[("chatterbox_s3gen", (("model", "multilingual"), ("stat", "calls")))] == 0.0
    assert not any(key[0] == "chatterbox_engine" and ("model", "multilingual") in key[1] for key in samples)
    assert samples[("chatterbox_batch_occupancy", (("model", "turbo"),))] == 0.0


# -- settings and the entry point -----------------------------------------------------------

def test_http_settings(monkeypatch):
    import main
    from chatterbox_worker.settings import SettingsError, get_settings

    assert main.worker_mode() == "queue" and get_settings().health_port == get_settings().port == 8000
    monkeypatch.setenv("WORKER_MODE", "http")
    monkeypatch.setenv("PORT", "5000")
    assert main.worker_mode() == "http" and get_settings().health_port == 5000
    monkeypatch.setenv("PORT_HEALTH", "5001")
    assert get_settings().health_port == 5001
    for name, value in (("WORKER_MODE", "both"), ("PORT", "70000"), ("OPENAI_VOICE_ALIASES", "alloy"),
                        ("STREAM_FIRST_CHUNK_TOKENS", "0"), ("MAX_REQUEST_MB", "-1")):
        monkeypatch.setenv(name, value)
        with pytest.raises(SettingsError, match=name):
            get_settings()
        monkeypatch.delenv(name)
    monkeypatch.setenv("WORKER_MODE", "both")
    assert main.worker_mode() == "queue"  # the queue handler then names the bad setting in every job


def test_health_port_app_answers_ping_only(worker):
    import server

    state = server.WorkerState(lambda: worker)
    with running_app(server.health_app(state)) as url:
        assert httpx.get(f"{url}/ping").status_code == 204
        state.start_loading()
        state.wait(5)
        assert httpx.get(f"{url}/ping").status_code == 200
        assert httpx.get(f"{url}/v1/models").status_code == 404
