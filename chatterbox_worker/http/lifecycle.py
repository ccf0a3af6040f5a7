"""A gated HTTP job's life: its slot, its refusal (429/503 + Retry-After), its client leaving.

The routes that run model work (``/v1/audio/speech``, ``/v1/jobs``) take a slot of the
app's :class:`~chatterbox_worker.serving.gate.JobGate` before any work starts:

* a refusal is answered at once in OpenAI's error shape with ``Retry-After``: 429 when the
  wait is full or a request waited ``QUEUE_TIMEOUT_S``, 503 while shutting down;
* a whole clip runs on a thread inside the job's cancel scope while the loop watches the
  connection: a client that leaves cancels the job, which leaves the engine at its next
  step (:func:`run_watched`);
* a stream keeps its slot until its last piece, and a client that leaves mid-stream
  cancels the job the same way (:func:`gated_items`).
"""
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from chatterbox_worker.contract.errors import SERVER_ERROR
from chatterbox_worker.engine.cancellation import client_gone
from chatterbox_worker.http.openai_errors import OpenAIError
from chatterbox_worker.serving.admission import AdmissionRefused
from chatterbox_worker.serving.async_bridge import run_blocking
from chatterbox_worker.serving.gate import JobGate, JobTicket, build_gate, concurrent_jobs_for

T = TypeVar("T")
RATE_LIMIT_ERROR = "rate_limit_error"  # OpenAI's type for a 429
LEFT_WAITING = "left_while_waiting"  # the cancel reason of a client gone before its job started


def app_gate(app: FastAPI, worker: Any) -> JobGate:
    """The app's one gate, sized for ``worker``'s device on first use."""
    gate = getattr(app.state, "gate", None)
    if gate is None:
        gate = app.state.gate = build_gate(concurrent_jobs_for(worker))
    return gate


def refusal_response(exc: AdmissionRefused) -> JSONResponse:
    """429 or 503 in OpenAI's error shape, with the seconds to wait in ``Retry-After``."""
    kind = RATE_LIMIT_ERROR if exc.status == 429 else SERVER_ERROR
    error = OpenAIError(exc.status, exc.message, type=kind, code=exc.code)
    return JSONResponse(error.body(), status_code=exc.status, headers={"Retry-After": str(exc.retry_after_s)})


async def until_disconnected(request: Request) -> None:
    """Return when the client has closed the connection (the body has already been read)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def run_watched(request: Request, gate: JobGate, ticket: JobTicket, call: Callable[..., T], *args) -> T:
    """``call(*args)`` on a thread inside the job's scope; a client that leaves cancels it."""
    work = asyncio.ensure_future(run_blocking(call, *args, scope=ticket.scope))
    watcher = asyncio.ensure_future(until_disconnected(request))
    try:
        done, _ = await asyncio.wait({work, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if work not in done:
            gate.cancel(ticket.scope, client_gone())
        return await work
    finally:
        watcher.cancel()


async def gated_items(items: AsyncIterator[Any], ticket: JobTicket) -> AsyncIterator[Any]:
    """A stream's pieces; its slot is given back when the stream ends, however it ends."""
    try:
        async for item in items:
            yield item
    finally:
        ticket.close()
        close = getattr(items, "aclose", None)
        if close is not None:
            await close()


async def enter_watched(request: Request, gate: JobGate) -> JobTicket:
    """A slot for the request; raises admission's refusal, or the client's leaving while it waits."""
    entering = asyncio.ensure_future(gate.enter())
    watcher = asyncio.ensure_future(until_disconnected(request))
    try:
        await asyncio.wait({entering, watcher}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        abandon(entering)
        raise
    finally:
        watcher.cancel()
    if entering.done():
        return entering.result()
    abandon(entering)  # the client left while waiting: it leaves the line, taking no slot
    gate.cancelled[LEFT_WAITING] += 1
    raise client_gone()


def abandon(entering: asyncio.Future) -> None:
    """Stop waiting for a slot nobody will use; a slot granted all the same is given back.

    A slot handed over in the same loop iteration as the cancel still arrives as a ticket
    (Python 3.11's ``wait_for`` returns a result that is already there rather than raise
    the cancel). Nobody else holds that ticket, so without this the slot would be lost
    for good."""
    entering.cancel()
    entering.add_done_callback(close_granted)


def close_granted(entering: asyncio.Future) -> None:
    if not entering.cancelled() and entering.exception() is None:
        entering.result().close()
