"""``POST /v1/audio/speech``: OpenAI speech as streamed audio, server-sent events, or a whole file.

Everything that can refuse a request (its body, its voice, its conditionals) runs before
the status is sent, so a refusal gets its proper status; the audio then streams as each
window is decoded, from a thread, while the event loop serves other requests.
"""
from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response, StreamingResponse

from chatterbox_worker.engine.cancellation import CancelScope, client_gone
from chatterbox_worker.http import openai_api
from chatterbox_worker.http.lifecycle import app_gate, enter_watched, gated_items, refusal_response, run_watched
from chatterbox_worker.http.openai_speech import (
    SpeechRequest,
    parse_speech_request,
    prepare,
    stream_audio,
    stream_sse,
    synthesize,
)
from chatterbox_worker.http.readiness import WorkerState, worker_state
from chatterbox_worker.http.request_metrics import metered
from chatterbox_worker.http.responses import error_response, read_json
from chatterbox_worker.serving.admission import AdmissionRefused
from chatterbox_worker.serving.async_bridge import stream_from_thread
from chatterbox_worker.serving.gate import JobTicket

router = APIRouter()

STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}  # proxies must not hold audio back
SEED_HEADER = "X-Chatterbox-Seed"  # the seed a request drew, to reproduce it with "seed"


@dataclass(frozen=True)
class Ready:
    """The first item of a speech stream: everything that could be refused has passed."""

    seed: int


async def open_stream(produce: Callable[[], Any], scope: CancelScope | None = None,
                      on_leave: Callable[[], None] | None = None) -> tuple[Ready, AsyncIterator[Any]]:
    """Start ``produce`` on a thread (inside ``scope``); return its items once the first one
    (the ready mark) has arrived, so a request that fails while preparing still gets a
    proper error status. ``on_leave`` runs if the consumer stops before the end."""
    items = stream_from_thread(produce, scope, on_leave).__aiter__()
    first = await items.__anext__()
    if not isinstance(first, Ready):
        raise RuntimeError("stream did not start with its ready mark")
    return first, items


def speech_producer(state: WorkerState, speech: SpeechRequest) -> Callable[[], Any]:
    """Prepare (voice, conditionals) and speak on one thread: the ready mark, then the pieces."""
    sse = speech.stream_format == "sse"

    def produce():
        worker = state.require()
        prepared = prepare(worker, speech)
        yield Ready(prepared.job.seed)
        yield from (stream_sse if sse else stream_audio)(worker, prepared)
    return produce


def whole_clip(state: WorkerState, speech: SpeechRequest) -> tuple[bytes, int]:
    """The clip in one model call, and the seed it drew."""
    prepared = prepare(state.require(), speech)
    return synthesize(state.require(), prepared), prepared.job.seed


async def streamed(request: Request, state: WorkerState, speech_request: SpeechRequest, ticket: JobTicket) -> Response:
    """The stream's response once it has started; its slot is held until its last piece."""
    gate = request.app.state.gate
    ready, items = await open_stream(speech_producer(state, speech_request), ticket.scope,
                                     on_leave=lambda: gate.cancel(ticket.scope, client_gone()))
    return StreamingResponse(gated_items(items, ticket), media_type=speech_request.mime_type,
                             headers={**STREAM_HEADERS, SEED_HEADER: str(ready.seed)})


@router.post(openai_api.SPEECH_ROUTE, dependencies=[metered("speech")])
async def speech(request: Request, state: Annotated[WorkerState, Depends(worker_state)]) -> Response:
    try:
        speech_request = parse_speech_request(await read_json(request))
        gate = app_gate(request.app, state.require())
        ticket = await enter_watched(request, gate)
    except AdmissionRefused as exc:
        return refusal_response(exc)
    except Exception as exc:
        return error_response(exc)
    try:
        if speech_request.streamed:
            return await streamed(request, state, speech_request, ticket)
        data, seed = await run_watched(request, gate, ticket, whole_clip, state, speech_request)
    except Exception as exc:
        ticket.close()
        return error_response(exc)
    ticket.close()
    return Response(data, media_type=speech_request.mime_type, headers={SEED_HEADER: str(seed)})
