"""Headless Chromium driven by Playwright, against the HTTP server on the stub model.

The browser is Debian's ``chromium`` (``scripts/setup_browser.sh`` installs it), launched
through ``executable_path``; Playwright never downloads one. Without the browser or the
``playwright`` package every test here is skipped, with the reason.
"""
from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.http_servers import SlowStreamModel, running_app, wait_ready

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
# No GPU, no sandbox (CI runs as root in a container), no shared-memory limits, no calls home.
CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--autoplay-policy=no-user-gesture-required",
                 "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream"]
DESKTOP = {"width": 1280, "height": 900}
# Each stub window waits this long, so a streamed clip arrives in several separate pieces.
WINDOW_DELAY_S = 0.15
UI_TIMEOUT_MS = 20_000


def browser_missing() -> str | None:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright package is not installed (pip install -r requirements-test.txt)"
    if not (Path(CHROMIUM).is_file() and os.access(CHROMIUM, os.X_OK)) and shutil.which(CHROMIUM) is None:
        return f"no Chromium at {CHROMIUM} (run scripts/setup_browser.sh as root, or set CHROMIUM)"
    return None


@pytest.fixture(scope="session")
def browser():
    reason = browser_missing()
    if reason:
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@dataclass
class PageWatch:
    """What a page did that a test must see: dialogs it opened, and errors it threw."""

    dialogs: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def open_page(browser, url: str, viewport: dict[str, int] = DESKTOP):
    """A fresh context and page on ``url``; dialogs are dismissed and recorded, errors recorded."""
    context = browser.new_context(viewport=viewport, accept_downloads=True)
    context.set_default_timeout(UI_TIMEOUT_MS)
    page = context.new_page()
    watch = PageWatch()

    def on_dialog(dialog):
        watch.dialogs.append(dialog.message)
        dialog.dismiss()

    page.on("dialog", on_dialog)
    page.on("pageerror", lambda exc: watch.errors.append(str(exc)))
    page.goto(url)
    return context, page, watch


@pytest.fixture
def stream_model() -> SlowStreamModel:
    return SlowStreamModel(window_delay_s=WINDOW_DELAY_S)


@pytest.fixture
def served(stream_model, library, cache) -> Iterator[str]:
    """The HTTP server on the stub model (slow windows) over a copy of the demo library."""
    import server
    from chatterbox_worker.testing.stub_worker import assemble_worker

    worker = assemble_worker(stream_model, library, cache)
    with running_app(server.create_app(lambda: worker)) as url:
        wait_ready(url)
        yield url


@pytest.fixture
def page(browser, served):
    context, page, watch = open_page(browser, served)
    page.watch = watch
    yield page
    context.close()
    assert not watch.errors, f"the page threw: {watch.errors}"


def expect(locator):
    """Playwright's retrying assertions. They run in Playwright's own world, which the page's
    policy (no eval) does not reach, unlike ``wait_for_function`` with an expression."""
    from playwright.sync_api import expect as playwright_expect

    return playwright_expect(locator)


def wait_for_voices(page) -> None:
    expect(page.locator("#voice option")).not_to_have_count(0)
