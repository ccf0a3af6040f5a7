"""The playground in headless Chromium on the real chatterbox classes (random weights, CPU):
speak with streaming, see the first window arrive before the last, download and decode,
then save a voice through the page and delete it."""
from __future__ import annotations

import base64

import pytest
import soundfile as sf

from chatterbox_worker.testing.audio_payloads import make_wav_b64
from tests.browser.chromium import (
    expect,
    open_page,
    speak_and_wait,
    stamp_ms,
    wait_for_voices,
)
from tests.http_servers import running_app, wait_ready
from tests.real_model import TINY_TOKENS

pytestmark = [pytest.mark.integration, pytest.mark.browser]
# Two windows: the first is STREAM_FIRST_CHUNK_TOKENS (TINY_TOKENS) long, the second the rest.
SPEECH_TOKENS = 2 * TINY_TOKENS
REAL_MODEL_TIMEOUT_MS = 300_000


@pytest.fixture
def base_url(real_worker, monkeypatch):
    import server

    monkeypatch.setenv("STREAM_FIRST_CHUNK_TOKENS", str(TINY_TOKENS))
    with running_app(server.create_app(lambda: real_worker)) as url:
        wait_ready(url)
        yield url


def upload_and_delete(page, tmp_path) -> None:
    """Save a voice through the page's form, then delete it with the page's button."""
    reference = tmp_path / "reference.wav"
    reference.write_bytes(base64.b64decode(make_wav_b64(seconds=6.0)))
    page.fill("#upload-name", "Page Voice")
    page.set_input_files("#upload-file", str(reference))
    page.click("#upload")
    expect(page.locator("#voice option:checked")).to_contain_text("Page Voice", timeout=REAL_MODEL_TIMEOUT_MS)
    page.click("#delete-voice")
    page.click("#delete-voice")
    expect(page.locator("#voice")).not_to_contain_text("Page Voice")


def test_the_page_streams_and_downloads_on_the_real_model(browser, base_url, tmp_path):
    context, page, watch = open_page(browser, base_url)
    try:
        wait_for_voices(page)
        page.fill("#max_new_tokens", str(SPEECH_TOKENS))
        page.fill("#seed", "1")
        page.select_option("#response_format", "wav")
        speak_and_wait(page, "Hello there.", timeout_ms=REAL_MODEL_TIMEOUT_MS)
        assert stamp_ms(page, "first-audio") < stamp_ms(page, "last-audio")
        assert page.text_content("#clip-seed") == "1"
        with page.expect_download() as download:
            page.click("#clips li .download")
        path = tmp_path / download.value.suggested_filename
        download.value.save_as(path)
        samples, rate = sf.read(path)
        assert rate == 24000 and samples.size > 0
        assert abs(samples.size / rate - float(page.text_content("#clip-length").removesuffix(" s"))) < 0.01
        upload_and_delete(page, tmp_path)
        assert watch.errors == [] and watch.dialogs == []
    finally:
        context.close()
