"""``GET /ping``: 200 ready, 204 loading, 503 failed (also served alone on PORT_HEALTH)."""
from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse, Response

from chatterbox_worker.http.readiness import PING_PATH, WorkerState, worker_state

router = APIRouter()


def ping_response(state: WorkerState) -> Response:
    status = state.status
    if status == "ready":
        return JSONResponse({"status": "ready"})
    if status == "loading":
        return Response(status_code=204)
    return JSONResponse({"status": "failed", "error": state.error}, status_code=503)


@router.get(PING_PATH)
async def ping(state: Annotated[WorkerState, Depends(worker_state)]) -> Response:
    return ping_response(state)
