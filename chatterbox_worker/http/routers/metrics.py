"""``GET /metrics``: the Prometheus text format (``http.metrics``)."""
from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response

from chatterbox_worker.http import metrics as http_metrics

router = APIRouter()


@router.get("/metrics")
async def metrics() -> Response:
    return Response(http_metrics.exposition(), media_type=http_metrics.CONTENT_TYPE)
