"""The library operations that generate nothing: list, search (and delete) voices."""
from __future__ import annotations

from typing import Any

from job_metrics import Timer
from request_schema import ListVoicesRequest, SearchVoicesRequest
from worker import Worker


def list_voices(worker: Worker, request: ListVoicesRequest, progress=None) -> dict[str, Any]:
    timer = Timer()
    voices = worker.library.list_voices()
    # Both names of the old contract; each keeps its own response keys.
    if request.operation == "list_voices":
        listed = {"voices": voices, "total_voices": len(voices)}
    else:
        listed = {"local_voices": voices, "total_local_voices": len(voices)}
    return {**listed, "stats": worker.stats(), "metrics": timer.metrics(0.0, None)}


def search_voices(worker: Worker, request: SearchVoicesRequest, progress=None) -> dict[str, Any]:
    timer = Timer()
    voices = worker.library.search_voices(request.query, request.gender)
    return {"voices": voices, "total_results": len(voices), "query": request.query,
            "gender": request.gender, "metrics": timer.metrics(0.0, None)}
