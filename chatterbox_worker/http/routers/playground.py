"""The playground: one static page at ``GET /`` and ``/playground`` that speaks through the public API.

The page, its style sheet and its scripts are package data (``chatterbox_worker/http/playground``),
served as they are: no build step, nothing from another origin. Every response carries a
Content-Security-Policy that allows this origin only, so the page cannot load or send
anything elsewhere even if a voice name tried to inject markup. ``PLAYGROUND=false`` turns the
routes into 404s. The page and its files are open without the bearer token (they hold no
data); the page asks for the token itself and sends it on every API call.
"""
from __future__ import annotations

from importlib import resources
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response

from chatterbox_worker.audio.streaming import SPEECH_FORMATS
from chatterbox_worker.contract.limits import MAX_TEXT_CHARS
from chatterbox_worker.http.openai_errors import OpenAIError
from chatterbox_worker.http.openai_speech import MODEL_VARIANTS_BY_NAME, SPEECH_SAMPLE_RATE, SpeechRequest
from chatterbox_worker.models.registry import VARIANTS
from chatterbox_worker.settings import get_settings
from chatterbox_worker.voices.sources import MAX_CLONE_SECONDS, MIN_CLONE_SECONDS

router = APIRouter()

PAGE_PATHS = ("/", "/playground")
ASSET_PREFIX = "/playground/"
CONFIG_PATH = ASSET_PREFIX + "config.json"
# The files the page is made of, and the types they are served as; nothing else is served.
ASSETS = {
    "index.html": "text/html; charset=utf-8",
    "playground.css": "text/css; charset=utf-8",
    "playground.js": "text/javascript; charset=utf-8",
    "api.js": "text/javascript; charset=utf-8",
    "audio.js": "text/javascript; charset=utf-8",
}
# This origin only; blob: for the clips the page makes itself (downloads, playback).
CONTENT_SECURITY_POLICY = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
                           "media-src 'self' blob:; connect-src 'self'; object-src 'none'; base-uri 'none'; "
                           "form-action 'self'; frame-ancestors 'none'")
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
    # The microphone for recording a voice, from this origin only; nothing else.
    "Permissions-Policy": "microphone=(self), camera=(), geolocation=()",
}
# The knobs the page shows, as SpeechRequest names them.
KNOBS = ("exaggeration", "cfg_weight", "temperature", "speed", "seed", "max_new_tokens")
PUBLIC_PATHS = frozenset({*PAGE_PATHS, *(ASSET_PREFIX + name for name in ASSETS), CONFIG_PATH})


def is_public(path: str) -> bool:
    """The playground's own files, which are served without the bearer token."""
    return path in PUBLIC_PATHS


def _require_enabled() -> None:
    if not get_settings().playground:
        raise OpenAIError(404, "the playground is off (PLAYGROUND=false)", code="not_found")


def read_asset(name: str) -> bytes:
    return resources.files("chatterbox_worker.http.playground").joinpath(name).read_bytes()


def asset_response(name: str) -> Response:
    return Response(read_asset(name), media_type=ASSETS[name], headers=SECURITY_HEADERS)


def knob_bounds(prop: dict[str, Any]) -> dict[str, Any]:
    """``minimum``/``maximum`` (or their exclusive forms) of one JSON-schema property, optional or not."""
    bounds: dict[str, Any] = {}
    for branch in [prop, *prop.get("anyOf", ())]:
        for key in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
            if key in branch:
                bounds[key] = branch[key]
    return bounds


def variant_defaults() -> dict[str, dict[str, float]]:
    """Each model variant's own sampling defaults (the registry's), by variant name."""
    return {name: {"exaggeration": spec.defaults.exaggeration, "cfg_weight": spec.defaults.cfg_weight,
                   "temperature": spec.defaults.temperature}
            for name, spec in VARIANTS.items()}


def page_config() -> dict[str, Any]:
    """What the page needs before its first API call: the worker's defaults and bounds."""
    schema = SpeechRequest.model_json_schema()["properties"]
    fields = SpeechRequest.model_fields
    return {
        "api_key_required": bool(get_settings().api_key),
        "formats": list(SPEECH_FORMATS),
        "default_format": fields["response_format"].default,
        "default_speed": fields["speed"].default,
        "sample_rate": SPEECH_SAMPLE_RATE,
        "max_input_chars": MAX_TEXT_CHARS,
        "bounds": {knob: knob_bounds(schema[knob]) for knob in KNOBS},
        "variants": variant_defaults(),
        "model_variants": MODEL_VARIANTS_BY_NAME,
        # An uploaded voice's length as the upload checks it (longer clips are cut).
        "voice_seconds": {"minimum": MIN_CLONE_SECONDS, "maximum": MAX_CLONE_SECONDS},
    }


@router.get(PAGE_PATHS[0], include_in_schema=False)
@router.get(PAGE_PATHS[1], include_in_schema=False)
async def page() -> Response:
    _require_enabled()
    return asset_response("index.html")


@router.get(CONFIG_PATH, include_in_schema=False)
async def config() -> Response:
    _require_enabled()
    return JSONResponse(page_config(), headers=SECURITY_HEADERS)


@router.get(ASSET_PREFIX + "{name}", include_in_schema=False)
async def asset(name: str) -> Response:
    _require_enabled()
    if name not in ASSETS:
        raise OpenAIError(404, f"no playground file {name!r}", code="not_found")
    return asset_response(name)
