"""The command-line client against real local servers: the HTTP server (uvicorn, stub
worker) and the queue handler's local test API (``--rp_serve_api``, stub worker)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import soundfile as sf

from chatterbox_worker.audio.streaming import encode_speech
from tests.http_servers import LOOPBACK, free_port, running_app, tone, wait_ready
from tests.unit.test_openai_speech import decode

REPO = Path(__file__).resolve().parents[2]
LAUNCHER = "tests.queue_launcher"  # run with -m from the repository root
CLI_TIMEOUT_S = 60
QUEUE_START_TIMEOUT_S = 60


def cli(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "chatterbox_client", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=CLI_TIMEOUT_S)


@pytest.fixture
def http_url(worker):
    import server

    with running_app(server.create_app(lambda: worker)) as url:
        wait_ready(url)
        yield url


@pytest.fixture(scope="module")
def queue_url(tmp_path_factory):
    """``handler.py --rp_serve_api`` (through the launcher) with STREAM_RESULTS=true, so that
    both /runsync and /stream work; stopped when the module's tests are done."""
    from chatterbox_worker.testing.demo_library import copy_demo_library

    library = copy_demo_library(tmp_path_factory.mktemp("queue_library"))
    port = free_port()
    env = {**os.environ, "STREAM_RESULTS": "true", "LOG_LEVEL": "WARNING", "RUNPOD_DEBUG_LEVEL": "ERROR",
           "PYTHONPATH": str(REPO)}
    log = open(library / "server.log", "w")
    process = subprocess.Popen([sys.executable, "-m", LAUNCHER, str(library), "--rp_serve_api", "--rp_api_host",
                                LOOPBACK, "--rp_api_port", str(port)], cwd=library, env=env, stdout=log,
                               stderr=subprocess.STDOUT)
    url = f"http://{LOOPBACK}:{port}"
    deadline = time.monotonic() + QUEUE_START_TIMEOUT_S
    while True:
        try:
            httpx.get(f"{url}/docs", timeout=1)
            break
        except httpx.TransportError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise RuntimeError((library / "server.log").read_text()[-2000:]) from None
            time.sleep(0.2)
    yield url
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
    log.close()


def reference_wav(path: Path) -> Path:
    path.write_bytes(encode_speech(tone(6.0, 24000, 310.0), 24000, "wav"))
    return path


# -- HTTP mode ----------------------------------------------------------------------------

def test_say_streams_mp3_over_http(http_url, tmp_path):
    out = tmp_path / "hi.mp3"
    result = cli("--url", http_url, "say", "Hello from the command line.", "--voice", "Amy", "-o", str(out),
                 "--stream")
    assert result.returncode == 0, result.stderr
    assert "first audio after" in result.stderr
    samples, rate = decode(out.read_bytes(), "mp3")
    assert samples.size / rate > 0.2


def test_say_whole_wav_and_extras_over_http(http_url, tmp_path):
    out = tmp_path / "hi.wav"
    result = cli("--url", http_url, "say", "Hello again.", "--voice", "echo", "-o", str(out), "--seed", "3",
                 "--speed", "1.5")
    assert result.returncode == 0, result.stderr
    assert sf.info(out).frames > 0


def test_voices_and_clone_over_http(http_url, tmp_path):
    listed = cli("--url", http_url, "voices")
    assert listed.returncode == 0 and "Amy" in listed.stdout
    cloned = cli("--url", http_url, "clone", str(reference_wav(tmp_path / "me.wav")), "--name", "Me Myself")
    assert cloned.returncode == 0, cloned.stderr
    assert json.loads(cloned.stdout)["name"] == "Me Myself"
    assert "Me Myself" in cli("--url", http_url, "voices").stdout


def test_errors_exit_non_zero_with_the_reason(http_url, tmp_path):
    result = cli("--url", http_url, "say", "Hi", "--voice", "Nobody At All", "-o", str(tmp_path / "x.mp3"))
    assert result.returncode == 1 and "HTTP 404" in result.stderr and "not found" in result.stderr
    unreachable = cli("--url", f"http://{LOOPBACK}:{free_port()}", "voices")
    assert unreachable.returncode == 1 and "cannot reach" in unreachable.stderr


# -- queue mode (the handler's local test API) -----------------------------------------------

def test_say_over_the_queue_returns_the_openai_format(queue_url, tmp_path):
    out = tmp_path / "q.aac"
    result = cli("--queue-url", queue_url, "say", "Hello through the queue.", "--voice", "alloy", "-o", str(out))
    assert result.returncode == 0, result.stderr
    assert decode(out.read_bytes(), "aac")[0].size > 0


def test_say_streamed_over_the_queue_writes_wav_chunks(queue_url, tmp_path):
    out = tmp_path / "q.wav"
    result = cli("--queue-url", queue_url, "say", "Streaming through the queue, chunk by chunk. " * 4,
                 "--voice", "Amy", "-o", str(out), "--stream")
    assert result.returncode == 0, result.stderr
    assert "chunk 1 written" in result.stderr
    samples, rate = sf.read(out)
    assert samples.size / rate > 0.5


def test_voices_and_clone_over_the_queue(queue_url, tmp_path):
    cloned = cli("--queue-url", queue_url, "clone", str(reference_wav(tmp_path / "q.wav")), "--name", "Queued")
    assert cloned.returncode == 0, cloned.stderr
    listed = cli("--queue-url", queue_url, "voices")
    assert listed.returncode == 0 and "Queued" in listed.stdout and "Amy" in listed.stdout


def test_queue_errors_exit_non_zero(queue_url, tmp_path):
    result = cli("--queue-url", queue_url, "say", "Hi", "--model", "whisper-1", "-o", str(tmp_path / "x.mp3"))
    assert result.returncode == 1 and "model" in result.stderr


def test_queue_stream_refuses_formats_it_cannot_concatenate(queue_url, tmp_path):
    result = cli("--queue-url", queue_url, "say", "Hi", "-o", str(tmp_path / "x.mp3"), "--stream")
    assert result.returncode == 1 and "wav or pcm" in result.stderr


# -- a queue endpoint through the runpod SDK (a stand-in for RunPod's API on loopback) -----

FAKE_KEY = "rp-test-key"


@pytest.fixture
def fake_runpod(run_job):  # run_job puts the stub worker behind handler.get_worker
    from tests.fake_runpod import create_fake_runpod

    with running_app(create_fake_runpod(FAKE_KEY)) as url:
        yield url


def sdk_cli(url: str, *args: str, key: str | None = FAKE_KEY) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "RUNPOD_ENDPOINT_BASE_URL": url}
    env.pop("RUNPOD_API_KEY", None)
    if key:
        env["RUNPOD_API_KEY"] = key
    return subprocess.run([sys.executable, "-m", "chatterbox_client", "--endpoint-id", "ep1", *args], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=CLI_TIMEOUT_S)


def test_sdk_endpoint_say_voices_clone(fake_runpod, tmp_path):
    out = tmp_path / "sdk.opus"
    said = sdk_cli(fake_runpod, "say", "Hello through the SDK.", "--voice", "nova", "-o", str(out))
    assert said.returncode == 0, said.stderr
    assert decode(out.read_bytes(), "opus")[0].size > 0
    cloned = sdk_cli(fake_runpod, "clone", str(reference_wav(tmp_path / "r.wav")), "--name", "Via SDK")
    assert cloned.returncode == 0, cloned.stderr
    assert "Via SDK" in sdk_cli(fake_runpod, "voices").stdout


def test_sdk_endpoint_streams_over_stream(fake_runpod, tmp_path):
    out = tmp_path / "sdk.wav"
    said = sdk_cli(fake_runpod, "say", "Streaming through the queue, chunk by chunk. " * 4, "--voice", "Amy",
                   "-o", str(out), "--stream")
    assert said.returncode == 0, said.stderr
    assert "chunk 1 written" in said.stderr
    samples, rate = sf.read(out)
    assert samples.size / rate > 0.5


def test_sdk_endpoint_errors(fake_runpod, tmp_path):
    failed = sdk_cli(fake_runpod, "say", "Hi", "--voice", "Nobody At All", "-o", str(tmp_path / "x.mp3"))
    assert failed.returncode == 1 and "voice" in failed.stderr and "FAILED" in failed.stderr
    no_key = sdk_cli(fake_runpod, "voices", key=None)
    assert no_key.returncode == 1 and "RUNPOD_API_KEY" in no_key.stderr
