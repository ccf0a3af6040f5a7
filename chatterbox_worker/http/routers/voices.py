"""The voice library over HTTP: list, upload (as the ``upload_voice`` job), delete a saved voice."""
from __future__ import annotations

import base64
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from chatterbox_worker.contract.errors import JobError
from chatterbox_worker.http import openai_api
from chatterbox_worker.http.readiness import WorkerState, worker_state
from chatterbox_worker.http.request_metrics import metered
from chatterbox_worker.http.responses import answer, error_response

router = APIRouter()
State = Annotated[WorkerState, Depends(worker_state)]
# Optional form fields of an upload, and the job fields they fill.
UPLOAD_FIELDS = (("description", "voice_description"), ("gender", "gender"))


async def upload_job(request: Request) -> dict[str, Any]:
    """An ``upload_voice`` job from a multipart form: ``file`` and ``name`` (or ``voice_name``),
    optional ``description`` and ``gender``. The audio is checked exactly as the job checks it."""
    form = await request.form()
    upload = form.get("file") or form.get("audio")
    if upload is None or isinstance(upload, str):
        raise JobError("file", "attach the reference audio as a multipart file field named 'file'")
    name = form.get("name") or form.get("voice_name")
    if not isinstance(name, str) or not name.strip():
        raise JobError("name", "give the voice a name (form field 'name')")
    data = await upload.read()
    job = {"operation": "upload_voice", "voice_name": name, "reference_audio": base64.b64encode(data).decode("ascii")}
    for form_field, job_field in UPLOAD_FIELDS:
        value = form.get(form_field)
        if isinstance(value, str) and value:
            job[job_field] = value
    return job


def save_voice(state: WorkerState, job: dict[str, Any]) -> dict[str, Any]:
    try:
        result = openai_api.run_operation(state.require(), job)
    except JobError as exc:  # the job's audio field is this route's uploaded file
        if exc.field == "reference_audio":
            raise type(exc)("file", exc.message) from None
        raise
    info = result["voice_info"]
    return {"id": info["voice_id"], "name": info["voice_name"], **info, "message": result["message"]}


def delete_voice(state: WorkerState, voice_id: str) -> dict[str, Any]:
    result = openai_api.run_operation(state.require(), {"operation": "delete_voice", "voice_id": voice_id})
    return {"id": voice_id, "deleted": True, "voice": result["deleted"], "message": result["message"]}


@router.get(openai_api.VOICES_ROUTE, dependencies=[metered("voices")])
async def voices(state: State) -> Response:
    return await answer(lambda: openai_api.list_voices(state.require()))


@router.post(openai_api.VOICES_ROUTE, dependencies=[metered("upload_voice")])
async def upload(request: Request, state: State) -> Response:
    try:
        job = await upload_job(request)
    except Exception as exc:
        return error_response(exc)
    return await answer(lambda: save_voice(state, job), status=201)


@router.delete(openai_api.VOICES_ROUTE + "/{voice_id}", dependencies=[metered("delete_voice")])
async def delete(voice_id: str, state: State) -> Response:
    return await answer(lambda: delete_voice(state, voice_id))
