"""HTTP mode: the worker as its own server, for RunPod load-balancing endpoints.

    GET    /ping                   200 ready, 204 loading, 503 failed (also on PORT_HEALTH)
    POST   /v1/audio/speech        OpenAI speech: streamed audio, server-sent events, or a whole file
    GET    /v1/audio/voices        the voice library
    POST   /v1/audio/voices        multipart upload: save a voice (as the upload_voice job)
    DELETE /v1/audio/voices/{id}   delete a saved voice (never a shipped one)
    GET    /v1/models              model names the speech route takes
    POST   /v1/jobs                a queue job ({"input": {...}}), answered as the queue handler does
    GET    /metrics                Prometheus text format
    GET    /, /playground          the playground page (PLAYGROUND), over the routes above

Each group is a router under ``http/routers``, thin over the operations and the speech
pipeline the queue handler uses. The model loads on a background thread while the server
already answers ``/ping`` (204), so RunPod sees the worker start. Blocking work runs on
threads, so requests overlap and the model's engine batches them.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from chatterbox_worker.http import metrics as http_metrics
from chatterbox_worker.http.access import AccessMiddleware
from chatterbox_worker.http.openai_errors import OpenAIError
from chatterbox_worker.http.readiness import WorkerSource, WorkerState
from chatterbox_worker.http.request_metrics import RequestMetricsMiddleware
from chatterbox_worker.http.responses import error_response
from chatterbox_worker.http.routers import health, jobs, metrics, models, playground, speech, voices
from chatterbox_worker.serving import bootstrap
from chatterbox_worker.serving.shutdown import SHUTDOWN_SIGNALS, start_shutdown
from chatterbox_worker.settings import get_settings, mb_to_bytes

logger = logging.getLogger("chatterbox_worker.http")

ROUTERS = (health.router, speech.router, voices.router, models.router, jobs.router, metrics.router,
           playground.router)


async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    error = OpenAIError(exc.status_code, str(exc.detail), code="not_found" if exc.status_code == 404 else None)
    return JSONResponse(error.body(), status_code=exc.status_code)


async def any_error(request: Request, exc: Exception) -> JSONResponse:
    return error_response(exc)


def create_app(worker_source: WorkerSource | None = None, *, load_on_start: bool = True) -> FastAPI:
    """The HTTP app; ``worker_source`` loads the worker (default: ``serving.bootstrap``'s)."""
    settings = get_settings()
    state = WorkerState(worker_source or bootstrap.get_worker)
    app = FastAPI(title="Chatterbox TTS worker", docs_url=None, redoc_url=None)
    app.state.worker_state = state
    http_metrics.watch_worker(lambda: state.worker)
    http_metrics.watch_gate(lambda: getattr(app.state, "gate", None))
    if load_on_start:
        app.router.on_startup.append(state.start_loading)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(Exception, any_error)
    for router in ROUTERS:
        app.include_router(router)
    app.add_middleware(RequestMetricsMiddleware)
    app.add_middleware(AccessMiddleware, api_key=settings.api_key, max_bytes=mb_to_bytes(settings.max_request_mb))
    return app


def health_app(state: WorkerState) -> FastAPI:
    """The app on PORT_HEALTH when it differs from PORT: /ping only."""
    app = FastAPI(docs_url=None, redoc_url=None)
    app.state.worker_state = state
    app.include_router(health.router)
    return app


def _server(app_to_serve: FastAPI, host: str, port: int):
    """A uvicorn server that leaves SIGTERM to :func:`serve` (uvicorn would stop at once and
    then re-raise the signal, so the process would not exit 0)."""
    import uvicorn

    class Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self):
            yield

    return Server(uvicorn.Config(app_to_serve, host=host, port=port, log_level="warning", access_log=False))


async def serve(app_to_serve: FastAPI, state: WorkerState, *, host: str, port: int, health_port: int) -> None:
    """Serve the app on ``port``, and ``/ping`` alone on ``health_port`` when it differs.

    SIGTERM or SIGINT shuts down gracefully (``serving.shutdown``): new requests get 503
    with ``Retry-After`` while the jobs in flight finish within ``SHUTDOWN_GRACE_S``; the
    rest are cancelled with a clear error; the conditionals cache is flushed; the servers
    then stop and the call returns (exit 0)."""
    servers = [_server(app_to_serve, host, port)]
    if health_port != port:
        servers.append(_server(health_app(state), host, health_port))

    def stop_servers() -> None:
        for server in servers:
            server.should_exit = True

    def on_signal() -> None:
        logger.info("HTTP mode: shutting down")
        start_shutdown(getattr(app_to_serve.state, "gate", None), lambda: getattr(state.worker, "cache", None),
                       then=stop_servers)

    loop = asyncio.get_running_loop()
    for sig in SHUTDOWN_SIGNALS:
        loop.add_signal_handler(sig, on_signal)
    logger.info("HTTP mode: serving on %s:%d (health on %d)", host, port, health_port)
    await asyncio.gather(*(server.serve() for server in servers))
