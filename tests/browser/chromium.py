"""Debian's Chromium under Playwright, for the tests that open the playground.

The browser is the system ``chromium`` (``scripts/setup_browser.sh`` installs it), launched
through ``executable_path``; Playwright never downloads one. :func:`browser_missing` says
why the tests cannot run, for a skip.
"""
from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
# No GPU, no sandbox (CI runs as root in a container), no shared-memory limits, no calls
# home; audio may start without a gesture, and the microphone is a fake one.
CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--autoplay-policy=no-user-gesture-required",
                 "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream"]
DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}
UI_TIMEOUT_MS = 20_000
# Saving a voice trims and resamples its clip; the first save in a fresh environment also
# compiles librosa's numba kernels, which took over 20 s on a busy 2-core machine.
UPLOAD_TIMEOUT_MS = 90_000


def browser_missing() -> str | None:
    """Why the browser tests cannot run here, or None."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright package is not installed (pip install -r requirements-test.txt)"
    if not (Path(CHROMIUM).is_file() and os.access(CHROMIUM, os.X_OK)) and shutil.which(CHROMIUM) is None:
        return f"no Chromium at {CHROMIUM} (run scripts/setup_browser.sh as root, or set CHROMIUM)"
    return None


@contextmanager
def launched() -> Iterator[object]:
    """A headless Chromium, closed when the block ends."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@dataclass
class PageWatch:
    """What a page did that a test must see: dialogs it opened, errors it threw, and every
    request it made (method and URL, in the order they left)."""

    dialogs: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    requests: list[tuple[str, str]] = field(default_factory=list)


def open_page(browser, url: str, viewport: dict[str, int] = DESKTOP):
    """A fresh context and page on ``url``; dialogs are dismissed and recorded, errors and
    requests recorded."""
    context = browser.new_context(viewport=viewport, accept_downloads=True)
    context.set_default_timeout(UI_TIMEOUT_MS)
    watch = PageWatch()
    # On the context, before the first navigation, so the page's own load is seen too.
    context.on("request", lambda request: watch.requests.append((request.method, request.url)))
    page = context.new_page()

    def on_dialog(dialog):
        watch.dialogs.append(dialog.message)
        dialog.dismiss()

    page.on("dialog", on_dialog)
    page.on("pageerror", lambda exc: watch.errors.append(str(exc)))
    page.goto(url)
    return context, page, watch


def expect(locator):
    """Playwright's retrying assertions. They run in Playwright's own world, which the page's
    policy (no eval) does not reach, unlike ``wait_for_function`` with an expression."""
    from playwright.sync_api import expect as playwright_expect

    return playwright_expect(locator)


def wait_for_voices(page) -> None:
    expect(page.locator("#voice option")).not_to_have_count(0)


def speak_and_wait(page, text: str, timeout_ms: float = UI_TIMEOUT_MS) -> None:
    """Type ``text``, press Speak, and wait for its clip to be listed."""
    clips = page.locator("#clips li").count()
    page.fill("#text", text)
    page.click("#speak")
    expect(page.locator("#clips li")).to_have_count(clips + 1, timeout=timeout_ms)


def stamp_ms(page, output_id: str) -> int:
    """One of the page's timestamps (ms since the request left, on the browser's clock)."""
    return int(page.get_attribute(f"#{output_id}", "data-ms"))


def save_voice_through_page(page, folder: Path, name: str, timeout_ms: float = UPLOAD_TIMEOUT_MS) -> str:
    """Fill the page's voice form with a 6 s clip, save it, and wait for it to be the voice
    selected; returns its id."""
    import base64

    from chatterbox_worker.testing.audio_payloads import make_wav_b64

    reference = folder / "reference.wav"
    reference.write_bytes(base64.b64decode(make_wav_b64(seconds=6.0)))
    page.fill("#upload-name", name)
    page.set_input_files("#upload-file", str(reference))
    page.click("#upload")
    expect(page.locator("#voice option:checked")).to_contain_text(name, timeout=timeout_ms)
    return page.input_value("#voice")
