"""How a route turns its work into a response: JSON bodies in, JSON results or OpenAI errors out."""
from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response

from chatterbox_worker.http.openai_errors import OpenAIError, as_openai_error
from chatterbox_worker.serving.async_bridge import run_blocking


def error_response(exc: BaseException) -> JSONResponse:
    error = as_openai_error(exc)
    return JSONResponse(error.body(), status_code=error.status)


async def read_json(request: Request) -> Any:
    raw = await request.body()
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise OpenAIError(400, f"the request body is not valid JSON: {exc}", code="invalid_json") from None


async def answer(call: Callable[[], Any], status: int = 200) -> Response:
    """``call()`` off the event loop, as JSON; its failure as an OpenAI error."""
    try:
        result = await run_blocking(call)
    except Exception as exc:
        return error_response(exc)
    return JSONResponse(result, status_code=status)
