"""A queue worker: jobs through the runpod SDK (``/run``, ``/status``, ``/stream``), or
through the local test API of ``python handler.py --rp_serve_api``.

Speech goes as RunPod's OpenAI passthrough job (``openai_route: /v1/audio/speech``), so
it takes the same fields and voice names as the HTTP route, and comes back as base64.
``--stream`` runs a ``tts`` job in ``streaming`` mode on a worker with STREAM_RESULTS=true
and writes each 16-bit chunk as it is polled from ``/stream`` (RunPod polls about once a
second): the output is a WAV (or raw PCM) file.
"""
from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from typing import Any, BinaryIO, Protocol

import httpx

from .backends import ClientError, Progress, SpeechOptions, reporting_wait, streaming_wav_header

FINAL_STATES = ("COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT")
POLL_INTERVAL_S = 1.0
JOB_TIMEOUT_S = 900.0
STREAM_FORMATS = ("wav", "pcm")
STREAM_CHUNK_TOKENS = 25


class QueueTransport(Protocol):
    def run(self, job_input: dict[str, Any], progress: Progress) -> Any: ...
    def stream(self, job_input: dict[str, Any], progress: Progress) -> Iterator[Any]: ...


class RunpodTransport:
    """A RunPod queue endpoint through the SDK's ``Endpoint``."""

    def __init__(self, endpoint_id: str, api_key: str | None):
        if not api_key:
            raise ClientError("set RUNPOD_API_KEY (or pass --api-key) to use a queue endpoint")
        import runpod  # imported here: it takes seconds, and the HTTP backend does not need it

        runpod.api_key = api_key
        self.endpoint = runpod.Endpoint(endpoint_id)

    def run(self, job_input: dict[str, Any], progress: Progress) -> Any:
        job = self.endpoint.run(job_input)
        started = time.monotonic()
        while (status := job.status()) not in FINAL_STATES:
            if time.monotonic() - started > JOB_TIMEOUT_S:
                raise ClientError(f"job {job.job_id} still {status} after {JOB_TIMEOUT_S:g} s")
            progress(f"job {job.job_id}: {status} after {time.monotonic() - started:.0f} s")
            time.sleep(POLL_INTERVAL_S)
        if status != "COMPLETED":
            raise ClientError(f"job {job.job_id} {status}: {job._fetch_job().get('error')}")
        return job.output()

    def stream(self, job_input: dict[str, Any], progress: Progress) -> Iterator[Any]:
        job = self.endpoint.run(job_input)
        progress(f"job {job.job_id} queued; streaming")
        yield from job.stream()


class LocalTransport:
    """``python handler.py --rp_serve_api``: POST /runsync, /run and /stream/{id}."""

    def __init__(self, base_url: str):
        self.client = httpx.Client(base_url=base_url.rstrip("/"), timeout=JOB_TIMEOUT_S)

    def _post(self, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        response = self.client.post(path, json=body or {})
        if response.status_code != 200:
            raise ClientError(f"HTTP {response.status_code} from {path}: {response.text[:300]}")
        result = response.json()
        if result.get("status") == "FAILED" or "error" in result:
            raise ClientError(f"job failed: {result.get('error')}")
        return result

    def run(self, job_input: dict[str, Any], progress: Progress) -> Any:
        with reporting_wait(progress, "job running on the local test API"):
            return self._post("/runsync", {"input": job_input}).get("output")

    def stream(self, job_input: dict[str, Any], progress: Progress) -> Iterator[Any]:
        job_id = self._post("/run", {"input": job_input})["id"]
        progress(f"job {job_id} queued; streaming")
        for item in self._post(f"/stream/{job_id}").get("stream", []):
            yield item.get("output")


def _job_output(output: Any) -> dict[str, Any]:
    if isinstance(output, list):  # a generator handler's aggregate: its last item holds the result
        output = output[-1] if output else None
    if not isinstance(output, dict):
        raise ClientError(f"unexpected job output: {str(output)[:200]}")
    if "error" in output:
        raise ClientError(str(output["error"]))
    return output


class QueueBackend:
    def __init__(self, transport: QueueTransport):
        self.transport = transport

    def say(self, options: SpeechOptions, out: BinaryIO, *, stream: bool, progress: Progress) -> int:
        if stream:
            return self._say_streamed(options, out, progress)
        job = {"openai_route": "/v1/audio/speech", "openai_input": options.openai_body()}
        data = base64.b64decode(_job_output(self.transport.run(job, progress))["audio"])
        out.write(data)
        return len(data)

    def _say_streamed(self, options: SpeechOptions, out: BinaryIO, progress: Progress) -> int:
        if options.response_format not in STREAM_FORMATS:
            raise ClientError(f"--stream on a queue endpoint writes {' or '.join(STREAM_FORMATS)} (16-bit chunks); "
                              f"got {options.response_format}")
        job = {"text": options.text, "voice_name": options.voice, "mode": "streaming", "output_format": "pcm_16",
               "chunk_size": STREAM_CHUNK_TOKENS, **options.extras}
        written = 0
        if options.response_format == "wav":
            written += out.write(streaming_wav_header())
        for item in self.transport.stream(job, progress):
            if isinstance(item, list):  # /runsync-style aggregates
                items = item
            else:
                items = [item]
            for chunk in items:
                if isinstance(chunk, dict) and "error" in chunk:
                    raise ClientError(str(chunk["error"]))
                if isinstance(chunk, dict) and "audio" in chunk:
                    written += out.write(base64.b64decode(chunk["audio"]))
                    out.flush()
                    progress(f"chunk {chunk.get('chunk_index')} written")
        return written

    def voices(self) -> list[dict[str, Any]]:
        output = _job_output(self.transport.run({"openai_route": "/v1/audio/voices"}, lambda _: None))
        return output["voices"]

    def clone(self, audio: bytes, filename: str, name: str, description: str = "") -> dict[str, Any]:
        job = {"operation": "upload_voice", "voice_name": name,
               "reference_audio": base64.b64encode(audio).decode("ascii"), "voice_description": description}
        output = _job_output(self.transport.run(job, lambda _: None))
        info = output["voice_info"]
        return {"id": info["voice_id"], "name": info["voice_name"], **info, "message": output.get("message")}
