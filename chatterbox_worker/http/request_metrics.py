"""The one place HTTP requests are measured: a middleware around every route.

A route opts in by naming its metrics label (``dependencies=[metered("speech")]``, or
:func:`label_request` once it knows the label, as ``/v1/jobs`` does from the job's
operation). For each labelled request the middleware counts the outcome and the time to
the end of the response, and for a streamed body the time to its first piece:

    ok         the whole response was sent with a status under 400
    error      a 4xx/5xx status, or a stream that failed after it began (the connection
               is then dropped without the chunked terminator, so the client sees a cut
               stream, never a short "complete" file)
    cancelled  the client left before the response was complete
"""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from fastapi import Depends, Request

from chatterbox_worker.http import metrics as http_metrics

logger = logging.getLogger("chatterbox_worker.http")

SCOPE_KEY = "chatterbox.request_meter"
ERROR_STATUS = 400


@dataclass
class RequestMeter:
    """What the middleware has seen of one request's response so far."""

    started: float
    route: str | None = None
    status: int | None = None
    first_piece: bool = False
    finished: bool = False

    def seen(self, message: dict) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
        elif message["type"] == "http.response.body":
            more = message.get("more_body", False)
            if more and message.get("body") and not self.first_piece:  # a streamed body's first audio
                self.first_piece = True
                if self.route is not None:
                    http_metrics.record_first_audio(self.route, time.perf_counter() - self.started)
            self.finished = not more

    def outcome(self) -> str:
        if self.status is None or self.status >= ERROR_STATUS:
            return "error"
        return "ok" if self.finished else "cancelled"


def label_request(request: Request, route: str) -> None:
    """Name the request in the metrics; an unnamed request is not measured."""
    meter = request.scope.get(SCOPE_KEY)
    if meter is not None:
        meter.route = route


def metered(route: str):
    """A route dependency that names the route's requests ``route`` in the metrics."""
    async def label(request: Request) -> None:
        label_request(request, route)
    return Depends(label)


class RequestMetricsMiddleware:
    """Measures every labelled request (see the module's docstring)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        meter = scope[SCOPE_KEY] = RequestMeter(time.perf_counter())

        async def measuring_send(message):
            meter.seen(message)
            await send(message)

        outcome = None
        try:
            await self.app(scope, receive, measuring_send)
        except asyncio.CancelledError:  # the client left; its generation has been stopped
            outcome = "cancelled"
            raise
        except Exception:
            outcome = "error"
            if meter.status is not None:
                logger.exception("a streamed response failed")
            raise
        finally:
            if meter.route is not None:
                seconds = time.perf_counter() - meter.started
                http_metrics.record_request(meter.route, outcome or meter.outcome(), seconds)
