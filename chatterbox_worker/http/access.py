"""Access to the HTTP server: the bearer token and the body size, checked before a body is read."""
from __future__ import annotations

import hmac
import json

from chatterbox_worker.contract.limits import MB
from chatterbox_worker.http.openai_errors import OpenAIError
from chatterbox_worker.http.readiness import PING_PATH
from chatterbox_worker.http.routers.playground import is_public


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
        path = scope.get("path")
        # /ping is RunPod's probe; the playground's files hold no data, and the page asks for the token.
        if self.api_key and path != PING_PATH and not is_public(path) and not self._authorized(headers):
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
