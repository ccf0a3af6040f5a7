"""``POST /v1/jobs``: a queue job (``{"input": {...}}``), answered as the queue handler does.

The status is the classification's (``Failure.job_status``): 200, or 400 for the job's
fault, 500 for the worker's, 503 when it cannot serve.
"""
from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response

from chatterbox_worker import operations
from chatterbox_worker.http.readiness import WorkerState, worker_state
from chatterbox_worker.http.request_metrics import label_request
from chatterbox_worker.http.responses import error_response, read_json
from chatterbox_worker.serving.async_bridge import run_blocking
from chatterbox_worker.serving.jobs import attempt, is_openai_route

router = APIRouter()
OK_STATUS = 200


def job_route(job_input: Any) -> str:
    """The metrics label of a /v1/jobs request: its operation, from the registry only."""
    if is_openai_route(job_input):
        return "job:openai"
    operation = job_input.get("operation", "tts") if isinstance(job_input, dict) else None
    return f"job:{operation}" if isinstance(operation, str) and operation in operations.OPERATIONS else "job:invalid"


@router.post("/v1/jobs")
async def jobs(request: Request, state: Annotated[WorkerState, Depends(worker_state)]) -> Response:
    try:
        body = await read_json(request)
        worker = state.require()
    except Exception as exc:
        return error_response(exc)
    job_input = body.get("input") if isinstance(body, dict) else None
    label_request(request, job_route(job_input))
    outcome = await run_blocking(attempt, job_input, lambda: worker)
    status = outcome.failure.job_status if outcome.failure is not None else OK_STATUS
    return JSONResponse(outcome.result, status_code=status)
