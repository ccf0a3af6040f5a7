"""The library operations that generate nothing: list, search (and delete) voices."""
from __future__ import annotations

from typing import Any

from chatterbox_worker.contract.errors import JobError
from chatterbox_worker.contract.request_schema import DeleteVoiceRequest, ListVoicesRequest, SearchVoicesRequest
from chatterbox_worker.pipeline.job_metrics import Timer
from chatterbox_worker.serving.worker import Worker


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


def _exact_voice_id(worker: Worker, name: str) -> str:
    """The id of the voice with exactly this name (any case): a deletion never follows the
    partial matches that speaking in a voice allows."""
    voice_id = worker.library.resolve_voice_id(name)
    actual = worker.library.get_voice_info(voice_id).get("speaker_name", "")
    if actual.casefold() != name.strip().casefold():
        raise JobError("voice_name", f"no voice is named exactly {name!r} (closest: {actual!r}); "
                                     "give the full name or the voice_id")
    return voice_id


def delete_voice(worker: Worker, request: DeleteVoiceRequest, progress=None) -> dict[str, Any]:
    """Remove a saved voice; the shipped ones are refused by the library itself."""
    timer = Timer()
    voice_id = request.voice_id if request.voice_id is not None else _exact_voice_id(worker, request.voice_name)
    deleted = worker.library.delete_voice(voice_id)
    return {"success": True, "deleted": deleted, "message": f"Voice {deleted.get('voice_id', voice_id)} deleted",
            "metrics": timer.metrics(0.0, None)}
