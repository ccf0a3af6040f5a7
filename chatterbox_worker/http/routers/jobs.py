"""``POST /v1/jobs``: a queue job (``{"input": {...}}``), answered as the queue handler does.

The status is the classification's (``Failure.job_status``): 200, or 400 for the job's
fault, 500 for the worker's, 503 when it cannot serve.
"""
from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response

from chatterbox_worker import operations
from chatterbox_worker.http.lifecycle import app_gate, enter_watched, refusal_response, run_watched
from chatterbox_worker.http.readiness import WorkerState, worker_state
from chatterbox_worker.http.request_metrics import label_request
from chatterbox_worker.http.responses import error_response, read_json
from chatterbox_worker.serving.admission import AdmissionRefused
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
        job_input = body.get("input") if isinstance(body, dict) else None
        label_request(request, job_route(job_input))
        gate = app_gate(request.app, worker)
        ticket = await enter_watched(request, gate)
    except AdmissionRefused as exc:
        return refusal_response(exc)
    except Exception as exc:
        return error_response(exc)
    try:  # attempt() answers every failure of the job, a cancel included
        outcome = await run_watched(request, gate, ticket, attempt, job_input, lambda: worker)
    finally:
        ticket.close()
    status = outcome.failure.job_status if outcome.failure is not None else OK_STATUS
    return JSONResponse(outcome.result, status_code=status)
