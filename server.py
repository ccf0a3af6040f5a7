"""HTTP mode: the worker as its own server, for RunPod load-balancing endpoints.

    WORKER_MODE=http python -u main.py      (or: python server.py)

Routes (thin: each calls the operations and the speech pipeline the queue handler uses):

    GET    /ping                   200 ready, 204 loading, 503 failed (also on PORT_HEALTH)
    POST   /v1/audio/speech        OpenAI speech: streamed audio, server-sent events, or a whole file
    GET    /v1/audio/voices        the voice library
    POST   /v1/audio/voices        multipart upload: save a voice (as the upload_voice job)
    DELETE /v1/audio/voices/{id}   delete a saved voice (never a shipped one)
    GET    /v1/models              model names the speech route takes
    POST   /v1/jobs                a queue job ({"input": {...}}), answered as the queue handler does
    GET    /metrics                Prometheus text format

The model loads on a background thread while the server already answers ``/ping`` (204),
so RunPod sees the worker start. Blocking work runs on threads, so requests overlap and
the model's engine batches them.
"""
from __future__ import annotations

import asyncio
import base64
import hmac
import json
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

import handler
from chatterbox_worker.http import metrics as http_metrics
from chatterbox_worker.http import openai_api
from chatterbox_worker import operations
from chatterbox_worker.serving.async_bridge import run_blocking, stream_from_thread
from chatterbox_worker.contract.errors import SERVER_PREFIX, JobError, ServiceUnavailableError
from chatterbox_worker.contract.limits import MB
from chatterbox_worker.http.openai_speech import (
    OpenAIError,
    SpeechRequest,
    as_openai_error,
    parse_speech_request,
    prepare,
    stream_audio,
    stream_sse,
    synthesize,
)
from chatterbox_worker.settings import SettingsError, get_settings, mb_to_bytes

logger = logging.getLogger("chatterbox_worker.http")

PING_PATH = "/ping"
STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}  # proxies must not hold audio back
# Status of a /v1/jobs answer by the prefix of its error (job_errors' stable markers).
_JOB_ERROR_STATUS = ((f"{SERVER_PREFIX}:", 500), ("internal:", 500), ("service:", 503))
WorkerSource = Callable[[], Any]


# -- the worker's readiness -----------------------------------------------------------

@dataclass
class WorkerState:
    """Loads the worker once, in the background, and says how far it has got."""

    source: WorkerSource
    worker: Any = None
    error: str | None = None
    _started: threading.Event = field(default_factory=threading.Event)
    _done: threading.Event = field(default_factory=threading.Event)

    def start_loading(self) -> None:
        if self._started.is_set():
            return
        self._started.set()
        threading.Thread(target=self._load, name="load-worker", daemon=True).start()

    def _load(self) -> None:
        try:
            self.worker = self.source()
        except Exception as exc:  # reported by /ping and every request
            self.error = str(exc)
            logger.error("the worker could not start: %s", exc)
        finally:
            self._done.set()

    def wait(self, timeout: float | None = None) -> bool:
        return self._done.wait(timeout)

    @property
    def status(self) -> str:
        if not self._done.is_set():
            return "loading"
        return "ready" if self.worker is not None else "failed"

    def require(self) -> Any:
        if self.worker is not None:
            return self.worker
        if self.error is not None:
            raise ServiceUnavailableError(self.error)
        raise OpenAIError(503, "the model is still loading; retry shortly", type="server_error",
                          code="model_loading")


# -- errors ----------------------------------------------------------------------------

def error_response(exc: BaseException) -> JSONResponse:
    error = as_openai_error(exc)
    return JSONResponse(error.body(), status_code=error.status)


def job_status(result: dict[str, Any]) -> int:
    message = result.get("error")
    if not isinstance(message, str):
        return 200
    return next((status for prefix, status in _JOB_ERROR_STATUS if message.startswith(prefix)), 400)


def job_route(job_input: Any) -> str:
    """The metrics label of a /v1/jobs request: its operation, from the registry only."""
    if isinstance(job_input, dict) and "openai_route" in job_input:
        return "job:openai"
    operation = job_input.get("operation", "tts") if isinstance(job_input, dict) else None
    return f"job:{operation}" if isinstance(operation, str) and operation in operations.OPERATIONS else "job:invalid"


async def read_json(request: Request) -> Any:
    raw = await request.body()
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise OpenAIError(400, f"the request body is not valid JSON: {exc}", code="invalid_json") from None


# -- access: bearer token and body size, before the body is read ------------------------

class BodyTooLarge(OpenAIError):
    """Raised while a body is read: a route that catches it answers 413 like any OpenAI error."""

    def __init__(self, max_bytes: int):
        super().__init__(413, f"the request body is over the {max_bytes / MB:g} MB limit (MAX_REQUEST_MB)",
                         code="request_too_large")


class AccessMiddleware:
    """Refuse a request without the bearer token (when API_KEY is set) or with a body over
    MAX_REQUEST_MB: a declared length is checked before reading, an undeclared one as it arrives."""

    def __init__(self, app, *, api_key: str | None, max_bytes: int):
        self.app, self.api_key, self.max_bytes = app, api_key, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        if self.api_key and scope.get("path") != PING_PATH and not self._authorized(headers):
            return await self._refuse(send, OpenAIError(401, "missing or wrong bearer token (API_KEY)",
                                                        code="invalid_api_key"))
        declared = headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await self._refuse(send, BodyTooLarge(self.max_bytes))
        received = 0
        started = False

        async def counting_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)
            return message

        async def tracking_send(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except BodyTooLarge as exc:
            if not started:
                await self._refuse(send, exc)

    def _authorized(self, headers: dict[str, str]) -> bool:
        scheme, _, token = headers.get("authorization", "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), self.api_key.encode())

    @staticmethod
    async def _refuse(send, error: OpenAIError) -> None:
        body = json.dumps(error.body()).encode()
        await send({"type": "http.response.start", "status": error.status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


# -- streaming ---------------------------------------------------------------------------

SEED_HEADER = "X-Chatterbox-Seed"  # the seed a request drew, to reproduce it with "seed"


@dataclass(frozen=True)
class Ready:
    """The first item of a speech stream: everything that could be refused has passed."""

    seed: int


async def open_stream(produce: Callable[[], Any]) -> tuple[Ready, AsyncIterator[Any]]:
    """Start ``produce`` on a thread; return its items once the first one (the ready mark)
    has arrived, so a request that fails while preparing still gets a proper error status."""
    items = stream_from_thread(produce).__aiter__()
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


async def measured(route: str, items: AsyncIterator[Any], started: float) -> AsyncIterator[Any]:
    outcome, first = "error", True
    try:
        async for item in items:
            if first:
                http_metrics.record_first_audio(route, time.perf_counter() - started)
                first = False
            yield item
        outcome = "ok"
    except asyncio.CancelledError:  # the client left; its generation has been stopped
        outcome = "cancelled"
        raise
    except Exception:
        # The status has been sent: re-raising makes the server drop the connection without
        # the chunked terminator, so the client sees a cut stream, never a short "complete" file.
        logger.exception("a streamed response failed")
        raise
    finally:
        http_metrics.record_request(route, outcome, time.perf_counter() - started)


# -- the app ---------------------------------------------------------------------------

def create_app(worker_source: WorkerSource | None = None, *, load_on_start: bool = True) -> FastAPI:
    """The HTTP app; ``worker_source`` loads the worker (default: the handler's loader)."""
    settings = get_settings()
    state = WorkerState(worker_source or handler.get_worker)
    app = FastAPI(title="Chatterbox TTS worker", docs_url=None, redoc_url=None)
    app.state.worker_state = state
    http_metrics.watch_worker(lambda: state.worker)
    if load_on_start:
        app.router.on_startup.append(state.start_loading)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        error = OpenAIError(exc.status_code, str(exc.detail), code="not_found" if exc.status_code == 404 else None)
        return JSONResponse(error.body(), status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def any_error(request: Request, exc: Exception):
        return error_response(exc)

    @app.get(PING_PATH)
    async def ping() -> Response:
        return ping_response(state)

    async def answer(route: str, call: Callable[[], Any], status: int = 200) -> Response:
        started = time.perf_counter()
        try:
            result = await run_blocking(call)
        except Exception as exc:
            http_metrics.record_request(route, "error", time.perf_counter() - started)
            return error_response(exc)
        http_metrics.record_request(route, "ok", time.perf_counter() - started)
        return JSONResponse(result, status_code=status)

    @app.post("/v1/audio/speech")
    async def speech(request: Request) -> Response:
        route, started = "speech", time.perf_counter()
        try:
            body = await read_json(request)
            speech_request = parse_speech_request(body)
            if not speech_request.streamed:
                def whole() -> tuple[bytes, int]:
                    prepared = prepare(state.require(), speech_request)
                    return synthesize(state.require(), prepared), prepared.job.seed
                data, seed = await run_blocking(whole)
                http_metrics.record_request(route, "ok", time.perf_counter() - started)
                return Response(data, media_type=speech_request.mime_type, headers={SEED_HEADER: str(seed)})
            ready, items = await open_stream(speech_producer(state, speech_request))
        except Exception as exc:
            http_metrics.record_request(route, "error", time.perf_counter() - started)
            return error_response(exc)
        return StreamingResponse(measured(route, items, started), media_type=speech_request.mime_type,
                                 headers={**STREAM_HEADERS, SEED_HEADER: str(ready.seed)})

    @app.get("/v1/audio/voices")
    async def voices() -> Response:
        return await answer("voices", lambda: openai_api.list_voices(state.require()))

    @app.post("/v1/audio/voices")
    async def upload(request: Request) -> Response:
        try:
            job = await upload_job(request)
        except Exception as exc:
            http_metrics.record_request("upload_voice", "error", 0.0)
            return error_response(exc)

        def save() -> dict[str, Any]:
            try:
                result = openai_api.run_operation(state.require(), job)
            except JobError as exc:  # the job's audio field is this route's uploaded file
                if exc.field == "reference_audio":
                    raise type(exc)("file", exc.message) from None
                raise
            info = result["voice_info"]
            return {"id": info["voice_id"], "name": info["voice_name"], **info, "message": result["message"]}
        return await answer("upload_voice", save, status=201)

    @app.delete("/v1/audio/voices/{voice_id}")
    async def delete(voice_id: str) -> Response:
        def remove() -> dict[str, Any]:
            result = openai_api.run_operation(state.require(), {"operation": "delete_voice", "voice_id": voice_id})
            return {"id": voice_id, "deleted": True, "voice": result["deleted"], "message": result["message"]}
        return await answer("delete_voice", remove)

    @app.get("/v1/models")
    async def models() -> Response:
        loaded = sorted(state.worker.models) if state.worker is not None else None
        return JSONResponse(openai_api.list_models(loaded))

    @app.post("/v1/jobs")
    async def jobs(request: Request) -> Response:
        started = time.perf_counter()
        try:
            body = await read_json(request)
            worker = state.require()
        except Exception as exc:
            return error_response(exc)
        job_input = body.get("input") if isinstance(body, dict) else None
        result = await run_blocking(handler.run_job, job_input, lambda: worker)
        status = job_status(result)
        http_metrics.record_request(job_route(job_input), "ok" if status == 200 else "error",
                                    time.perf_counter() - started)
        return JSONResponse(result, status_code=status)

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(http_metrics.exposition(), media_type=http_metrics.CONTENT_TYPE)

    app.add_middleware(AccessMiddleware, api_key=settings.api_key, max_bytes=mb_to_bytes(settings.max_request_mb))
    return app


def ping_response(state: WorkerState) -> Response:
    status = state.status
    if status == "ready":
        return JSONResponse({"status": "ready"})
    if status == "loading":
        return Response(status_code=204)
    return JSONResponse({"status": "failed", "error": state.error}, status_code=503)


def health_app(state: WorkerState) -> FastAPI:
    """The app on PORT_HEALTH when it differs from PORT: /ping only."""
    app = FastAPI(docs_url=None, redoc_url=None)
    app.get(PING_PATH)(lambda: ping_response(state))
    return app


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
    for form_field, job_field in (("description", "voice_description"), ("gender", "gender")):
        value = form.get(form_field)
        if isinstance(value, str) and value:
            job[job_field] = value
    return job


# -- running -----------------------------------------------------------------------------

async def serve(app_to_serve, state: WorkerState, *, host: str, port: int, health_port: int) -> None:
    import uvicorn

    servers = [uvicorn.Server(uvicorn.Config(app_to_serve, host=host, port=port, log_level="warning",
                                             access_log=False))]
    if health_port != port:
        servers.append(uvicorn.Server(uvicorn.Config(health_app(state), host=host, port=health_port,
                                                     log_level="warning", access_log=False)))
    logger.info("HTTP mode: serving on %s:%d (health on %d)", host, port, health_port)
    await asyncio.gather(*(server.serve() for server in servers))


def main() -> None:
    handler.configure_logging()
    try:
        settings = get_settings()
    except SettingsError as exc:
        logger.error("bad configuration: %s", exc)
        raise SystemExit(2) from None
    app = create_app()
    state: WorkerState = app.state.worker_state
    asyncio.run(serve(app, state, host=settings.http_host, port=settings.port, health_port=settings.health_port))


if __name__ == "__main__":
    main()
