"""``GET /v1/models``: the model names the speech route takes, and which are loaded."""
from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse, Response

from chatterbox_worker.http import openai_api
from chatterbox_worker.http.readiness import WorkerState, worker_state

router = APIRouter()


@router.get(openai_api.MODELS_ROUTE)
async def models(state: Annotated[WorkerState, Depends(worker_state)]) -> Response:
    loaded = sorted(state.worker.models) if state.worker is not None else None
    return JSONResponse(openai_api.list_models(loaded))
