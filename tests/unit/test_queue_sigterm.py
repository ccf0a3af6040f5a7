"""SIGTERM in queue mode, as RunPod sends it on scale-down, to a real worker process.

The worker is ``handler.start()`` under the RunPod SDK's own job loop and signal handlers
(``tests.queue_launcher --sdk-loop``), over a stepped stub model and a volume whose every
fsync is slow. It takes its jobs from a stand-in for RunPod's job API on loopback and posts
its results back there. SIGTERM comes while one job speaks with its conditionals save still
pending, and another job is saving a voice to the library. The SDK's handler, chained to
the worker's, stops taking jobs. Each job answers: audio if it finishes within
``SHUTDOWN_GRACE_S``, a clear error if it does not. The process exits 0 and leaves whole
files only, in the conditionals tier and in the voice library.
"""
from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from fastapi import FastAPI, Request, Response

from chatterbox_worker.testing.audio_payloads import make_wav_b64
from tests.http_servers import running_app
from tests.unit.test_cancellation_serving import wait_until
from tests.unit.test_shutdown import partial_files

REPO = Path(__file__).resolve().parents[2]
START_DEADLINE_S = 60
EXIT_DEADLINE_S = 60
FSYNC_DELAY_S = 0.6
EMPTY_POLL_HOLD_S = 0.2  # RunPod holds a job request open while it has none; a stand-in must not be polled flat out
SPEAK = {"id": "speak", "input": {"text": "Hello there.", "voice_name": "Amy"}}
SAVE = {"id": "save", "input": {"operation": "upload_voice", "voice_name": "Saved At Shutdown",
                                "reference_audio": make_wav_b64(6.0)}}
LATE = {"id": "late", "input": {"text": "Too late."}}
SDK_ENV_UNSET = ("RUNPOD_AI_API_KEY", "RUNPOD_POD_ID", "RUNPOD_WEBHOOK_PING", "RUNPOD_WEBHOOK_POST_STREAM")


class JobQueue:
    """RunPod's job API as the SDK's worker loop uses it: take jobs, post each result."""

    def __init__(self):
        self._lock = threading.Lock()
        self.pending: list[dict] = []
        self.taken: list[str] = []
        self.results: dict[str, dict] = {}

    def offer(self, *jobs: dict) -> None:
        with self._lock:
            self.pending.extend(jobs)

    def app(self) -> FastAPI:
        app = FastAPI()

        @app.get("/take")
        async def take(batch_size: int = 1) -> Response:
            with self._lock:
                jobs, self.pending = self.pending[:batch_size], self.pending[batch_size:]
                self.taken += [job["id"] for job in jobs]
            if not jobs:
                await asyncio.sleep(EMPTY_POLL_HOLD_S)
                return Response(status_code=204)
            return Response(json.dumps(jobs), media_type="application/json")

        @app.post("/done/{job_id}")
        async def done(job_id: str, request: Request) -> dict:
            self.results[job_id] = json.loads(await request.body())
            return {}

        return app


class Output:
    """The worker's output lines, read as they come."""

    def __init__(self, proc: subprocess.Popen):
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self._thread.start()

    def _read(self, proc: subprocess.Popen) -> None:
        for line in proc.stdout:
            self.lines.append(line)

    def has(self, text: str) -> bool:
        return any(text in line for line in self.lines)

    def text(self) -> str:
        self._thread.join(timeout=5)
        return "".join(self.lines)


def start_worker(queue_url: str, library_dir: Path, conds: Path, steps: int, grace_s: float) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k not in SDK_ENV_UNSET}
    env.update({"RUNPOD_WEBHOOK_GET_JOB": f"{queue_url}/take?worker=$ID",
                "RUNPOD_WEBHOOK_POST_OUTPUT": f"{queue_url}/done/$ID?worker=test",
                "RUNPOD_SKIP_GPU_CHECK": "true", "RUNPOD_SKIP_AUTO_SYSTEM_CHECKS": "true",
                "MAX_CONCURRENT_JOBS": "2", "SHUTDOWN_GRACE_S": str(grace_s), "LOG_LEVEL": "INFO"})
    command = [sys.executable, "-m", "tests.queue_launcher", "--sdk-loop", str(library_dir), str(conds), str(steps),
               "0.05", str(FSYNC_DELAY_S)]
    return subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def stop(proc: subprocess.Popen, output: Output) -> tuple[int, str]:
    try:
        code = proc.wait(timeout=EXIT_DEADLINE_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        pytest.fail(f"the worker did not exit after SIGTERM:\n{output.text()}")
    return code, output.text()


def whole_conditionals(conds: Path) -> list[dict]:
    """Every conditionals file, parsed: a half-written one would not parse."""
    return [json.loads(path.read_text()) for path in conds.rglob("*.safetensors")]


def readable_library(library_dir: Path) -> list[str]:
    """Every voice the catalog lists, its audio read back; the names."""
    from optimized_voice_library import OptimizedVoiceLibrary

    library = OptimizedVoiceLibrary(library_dir)
    voices = library.list_voices()
    assert all(library.get_voice_audio(v["voice_id"]).samples.size for v in voices)
    return [v["speaker_name"] for v in voices]


@pytest.mark.parametrize("steps, grace_s, finishes", [(60, 20.0, True), (2000, 0.5, False)],
                         ids=["finishes-within-grace", "cancelled-after-grace"])
def test_sigterm_to_a_queue_worker_answers_its_jobs_leaves_whole_files_and_exits_0(library_dir, tmp_path, steps,
                                                                                   grace_s, finishes):
    conds, queue = tmp_path / "conds", JobQueue()
    queue.offer(SPEAK, SAVE)
    with running_app(queue.app()) as queue_url:
        proc = start_worker(queue_url, library_dir, conds, steps, grace_s)
        output = Output(proc)
        try:  # SIGTERM while the speaking job's conditionals are still being written
            assert wait_until(lambda: partial_files(conds) or proc.poll() is not None, START_DEADLINE_S)
            assert proc.poll() is None and queue.taken == ["speak", "save"], output.text()
            proc.send_signal(signal.SIGTERM)
            assert wait_until(lambda: output.has("shutting down: 2 job(s) in flight"), EXIT_DEADLINE_S), output.text()
            queue.offer(LATE)  # the SDK has been told to stop: it must not take this one
        except BaseException:
            proc.kill()
            raise
        finally:
            code, text = stop(proc, output)
    assert code == 0, text
    assert "shutdown complete" in text and queue.taken == ["speak", "save"]
    speak, save = queue.results["speak"], queue.results["save"]
    if finishes:
        assert speak["output"]["audio"] and "error" not in speak
    else:
        assert "SHUTDOWN_GRACE_S" in speak["error"]
    assert save["output"]["success"] and "error" not in save  # saving a voice is not cut off halfway
    assert partial_files(conds) == [] and partial_files(library_dir) == []
    assert [entry["fingerprint"] for entry in whole_conditionals(conds)]
    assert "Saved At Shutdown" in readable_library(library_dir)
