"""A stand-in for RunPod's queue API (``/v2/<endpoint>/run``, ``/status``, ``/stream``) on
loopback, so that the client's runpod-SDK path runs end to end in tests.

Jobs run through the real handler functions, as a RunPod worker would run them: the
generator handler (STREAM_RESULTS) feeds ``/stream`` item by item and its aggregate is the
output; a result with ``error`` fails the job, as RunPod does.
"""
from __future__ import annotations

import threading
import uuid
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse


@dataclass
class _Job:
    status: str = "IN_QUEUE"
    items: list[Any] = field(default_factory=list)
    sent: int = 0
    output: Any = None
    error: Any = None


def create_fake_runpod(api_key: str) -> FastAPI:
    import handler

    app = FastAPI()
    jobs: dict[str, _Job] = {}

    def run(job_id: str, job_input: Any) -> None:
        job = jobs[job_id]
        job.status = "IN_PROGRESS"
        for item in handler.stream_handler({"id": job_id, "input": job_input}):
            job.items.append(item)
        last = job.items[-1] if job.items else {}
        if isinstance(last, dict) and "error" in last:
            job.error, job.status = last["error"], "FAILED"
        else:
            job.output, job.status = job.items, "COMPLETED"

    def authorized(request: Request) -> bool:
        return request.headers.get("authorization") == f"Bearer {api_key}"

    @app.post("/{endpoint_id}/run")
    async def submit(endpoint_id: str, request: Request):
        if not authorized(request):
            return JSONResponse({"error": "unauthorized"}, status_code=401)
        job_id = uuid.uuid4().hex
        jobs[job_id] = _Job()
        threading.Thread(target=run, args=(job_id, (await request.json()).get("input")), daemon=True).start()
        return {"id": job_id, "status": "IN_QUEUE"}

    @app.get("/{endpoint_id}/status/{job_id}")
    async def status(endpoint_id: str, job_id: str):
        job = jobs[job_id]
        body = {"id": job_id, "status": job.status}
        if job.status == "COMPLETED":
            # A generator handler's aggregate; a one-item stream is its single result.
            body["output"] = job.output if len(job.output) != 1 else job.output[0]
        if job.status == "FAILED":
            body["error"] = job.error
        return body

    @app.get("/{endpoint_id}/stream/{job_id}")
    async def stream(endpoint_id: str, job_id: str):
        job = jobs[job_id]
        status = job.status  # read before the items: a final status means no item is missed
        new, job.sent = job.items[job.sent:], len(job.items)
        return {"id": job_id, "status": status, "stream": [{"output": item} for item in new]}

    return app
