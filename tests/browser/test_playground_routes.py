"""The playground calls only the public API on its own origin: every request the page makes
during a whole visit (load, speak streamed and whole, download, upload, delete) is recorded
and each must be one of the routes below."""
from __future__ import annotations

import re
from urllib.parse import urlsplit

import pytest

from chatterbox_worker.http.routers.playground import ASSET_PREFIX, ASSETS, CONFIG_PATH, PAGE_PATHS
from tests.browser.chromium import expect, save_voice_through_page, speak_and_wait, wait_for_voices

pytestmark = pytest.mark.browser
# (method, path pattern): the page's own files, then the public API.
ALLOWED_ROUTES = (
    *(("GET", re.escape(path)) for path in PAGE_PATHS),
    *(("GET", re.escape(ASSET_PREFIX + name)) for name in ASSETS),
    ("GET", re.escape(CONFIG_PATH)),
    ("GET", "/v1/models"),
    ("GET", "/v1/audio/voices"),
    ("POST", "/v1/audio/voices"),
    ("DELETE", "/v1/audio/voices/[^/]+"),
    ("POST", "/v1/audio/speech"),
)
# The API routes this visit must reach, so that a scenario that skipped a step cannot pass.
API_ROUTES_USED = {("GET", "/v1/models"), ("GET", "/v1/audio/voices"), ("POST", "/v1/audio/voices"),
                   ("DELETE", "/v1/audio/voices/[^/]+"), ("POST", "/v1/audio/speech")}


def route_of(method: str, url: str, origin: str) -> tuple[str, str] | None:
    """The allowed route a request went to, or None when it went anywhere else."""
    parts = urlsplit(url)
    if f"{parts.scheme}://{parts.netloc}" != origin or parts.query or parts.fragment:
        return None
    return next(((m, pattern) for m, pattern in ALLOWED_ROUTES
                 if m == method and re.fullmatch(pattern, parts.path)), None)


def visit(page, tmp_path) -> None:
    """What a person does on the page: speak streamed (raw and SSE) and whole, download a
    streamed mp3 (spoken again by the worker), save a voice, speak with it, delete it."""
    wait_for_voices(page)
    for transport in ("audio", "sse"):
        page.select_option("#transport", transport)
        speak_and_wait(page, f"Streamed as {transport}.")
    with page.expect_download():
        page.click("#clips li .download")
    page.set_checked("#stream", False)
    speak_and_wait(page, "Spoken whole.")
    save_voice_through_page(page, tmp_path, "Route Voice")
    speak_and_wait(page, "Spoken in the saved voice.")
    page.click("#delete-voice")
    page.click("#delete-voice")
    expect(page.locator("#voice")).not_to_contain_text("Route Voice")


def test_the_page_calls_only_the_public_api_on_its_own_origin(page, served, tmp_path):
    visit(page, tmp_path)
    requests = page.watch.requests
    routes = [route_of(method, url, served) for method, url in requests]
    strays = [request for request, route in zip(requests, routes, strict=True) if route is None]
    assert strays == [], f"requests outside the public API: {strays}"
    assert API_ROUTES_USED <= set(routes), sorted(set(routes))
    assert requests[0] == ("GET", served + "/")  # the page itself first, then its files
