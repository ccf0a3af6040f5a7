"""A worker in HTTP mode: the OpenAI speech route, the voice routes."""
from __future__ import annotations

import time
from typing import Any, BinaryIO

import httpx

from .backends import ClientError, Progress, SpeechOptions, reporting_wait

# Generation can take minutes on a slow device; connecting should not.
TIMEOUT = httpx.Timeout(connect=10.0, read=600.0, write=60.0, pool=10.0)
PROGRESS_EVERY_S = 1.0


def _error_message(response: httpx.Response) -> str:
    try:
        error = response.json().get("error")
    except ValueError:
        return f"HTTP {response.status_code}: {response.text[:200]}"
    if isinstance(error, dict):
        return f"HTTP {response.status_code}: {error.get('message')}"
    return f"HTTP {response.status_code}: {error}"


class HttpBackend:
    def __init__(self, base_url: str, api_key: str | None = None):
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.client = httpx.Client(base_url=base_url.rstrip("/"), headers=headers, timeout=TIMEOUT)

    def say(self, options: SpeechOptions, out: BinaryIO, *, stream: bool, progress: Progress) -> int:
        body = options.openai_body()
        if stream:
            body["stream_format"] = "audio"
        else:
            body["stream"] = False
        started, last_report, written = time.monotonic(), time.monotonic(), 0
        with reporting_wait(progress, "generating"), self.client.stream("POST", "/v1/audio/speech",
                                                                         json=body) as response:
            if response.status_code != 200:
                response.read()
                raise ClientError(_error_message(response))
            for piece in response.iter_bytes():
                out.write(piece)
                out.flush()
                written += len(piece)
                now = time.monotonic()
                if written == len(piece):
                    progress(f"first audio after {now - started:.2f} s")
                if now - last_report >= PROGRESS_EVERY_S:
                    progress(f"{written} bytes after {now - started:.1f} s")
                    last_report = now
        return written

    def voices(self) -> list[dict[str, Any]]:
        response = self.client.get("/v1/audio/voices")
        if response.status_code != 200:
            raise ClientError(_error_message(response))
        return response.json()["voices"]

    def clone(self, audio: bytes, filename: str, name: str, description: str = "") -> dict[str, Any]:
        data = {"name": name, **({"description": description} if description else {})}
        response = self.client.post("/v1/audio/voices", data=data, files={"file": (filename, audio)})
        if response.status_code not in (200, 201):
            raise ClientError(_error_message(response))
        return response.json()
