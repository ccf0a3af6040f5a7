"""The OpenAI-style routes that both modes serve, as plain functions of a worker.

The HTTP server's routers (``chatterbox_worker.http.routers``) answer them over HTTP. A
queue job that carries RunPod's OpenAI passthrough fields, ``{"openai_route": "/v1/...", "openai_input": {...}}``, is
answered by :func:`run_route` with the same functions; speech comes back as base64 in
JSON there, because a queue result cannot be bytes.
"""
from __future__ import annotations

import base64
import logging
from collections.abc import Callable
from typing import Any

from chatterbox_worker import operations
from chatterbox_worker.audio.streaming import SPEECH_MIME_TYPES
from chatterbox_worker.contract.errors import JobError
from chatterbox_worker.contract.limits import MB, MODEL_VARIANTS
from chatterbox_worker.http.openai_errors import OpenAIError
from chatterbox_worker.http.openai_speech import (
    MODEL_VARIANTS_BY_NAME,
    SPEECH_SAMPLE_RATE,
    parse_speech_request,
    prepare,
    synthesize,
)
from chatterbox_worker.settings import get_settings, mb_to_bytes

logger = logging.getLogger(__name__)

OWNER = "resemble-ai"
SPEECH_ROUTE = "/v1/audio/speech"
MODELS_ROUTE = "/v1/models"
VOICES_ROUTE = "/v1/audio/voices"
QUEUE_ROUTES = (SPEECH_ROUTE, MODELS_ROUTE, VOICES_ROUTE)


def list_models(loaded: list[str] | None) -> dict[str, Any]:
    """Every model name the speech route takes, and whether this worker has its model loaded."""
    data = [{"id": name, "object": "model", "created": 0, "owned_by": OWNER, "variant": variant,
             "loaded": loaded is not None and variant in loaded}
            for name, variant in MODEL_VARIANTS_BY_NAME.items()]
    return {"object": "list", "data": data, "variants": list(MODEL_VARIANTS)}


def voice_entry(summary: dict[str, Any]) -> dict[str, Any]:
    entry = {"id": summary["voice_id"], "name": summary.get("speaker_name", "")}
    entry.update({k: v for k, v in summary.items() if k not in ("voice_id", "speaker_name")})
    return entry


def list_voices(worker: Any) -> dict[str, Any]:
    """The library's voices, and the OpenAI voice names that stand for them."""
    return {"voices": [voice_entry(v) for v in worker.library.list_voices()],
            "aliases": get_settings().voice_aliases}


def speech_json(worker: Any, body: Any) -> dict[str, Any]:
    """A whole speech clip as base64 JSON (queue mode)."""
    speech = parse_speech_request(body)
    prepared = prepare(worker, speech)
    data = synthesize(worker, prepared)
    encoded = base64.b64encode(data).decode("ascii")
    limit = mb_to_bytes(get_settings().max_result_mb)
    if len(encoded) > limit:
        raise JobError("response_format", f"the {speech.response_format} audio is {len(encoded) / MB:.1f} MB as "
                                          f"base64, over the {limit / MB:g} MB result limit; ask for mp3 or opus, "
                                          "or send shorter text")
    return {"audio": encoded, "format": speech.response_format,
            "content_type": SPEECH_MIME_TYPES[speech.response_format], "sample_rate": SPEECH_SAMPLE_RATE,
            "seed": prepared.job.seed, "model": speech.model,
            "metrics": prepared.timer.metrics(0.0, prepared.job.cache_source)}


def _as_job_error(exc: OpenAIError) -> JobError:
    return JobError(exc.param or "openai_input", exc.message)


def run_route(job_input: dict[str, Any], worker_source: Callable[[], Any]) -> dict[str, Any]:
    """A queue job carrying RunPod's OpenAI passthrough fields; raises like any job."""
    route = job_input.get("openai_route")
    body = job_input.get("openai_input")
    if not isinstance(route, str) or route.rstrip("/") not in QUEUE_ROUTES:
        raise JobError("openai_route", f"unsupported route {route!r}; this worker serves {', '.join(QUEUE_ROUTES)}")
    route = route.rstrip("/")
    try:
        if route == MODELS_ROUTE:
            worker = worker_source()
            return list_models(sorted(worker.models))
        if route == VOICES_ROUTE:
            return list_voices(worker_source())
        return speech_json(worker_source(), body)
    except OpenAIError as exc:
        raise _as_job_error(exc) from None


def run_operation(worker: Any, job_input: dict[str, Any]) -> dict[str, Any]:
    """One job of the queue contract, raising its failure (the HTTP routes map it)."""
    return operations.run(worker, operations.parse_request(job_input))
