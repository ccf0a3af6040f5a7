"""The playground in headless Chromium against ``python server.py`` on the random-weights
checkpoint, started as README's third command starts it (settings from the environment
only): speak with streaming and see the first window arrive before the last, download and
decode the clip, save a voice through the page, speak with it, download that, delete it,
then stop the server with SIGTERM and see it exit 0.

One test, so CI pays for one model load in that process."""
from __future__ import annotations

import shutil

import pytest
import soundfile as sf

from tests.browser.chromium import (
    expect,
    open_page,
    save_voice_through_page,
    speak_and_wait,
    stamp_ms,
    wait_for_voices,
)
from tests.real_model import TINY_TOKENS
from tests.server_process import server_py

pytestmark = [pytest.mark.integration, pytest.mark.browser]
# Two windows: the first is STREAM_FIRST_CHUNK_TOKENS (TINY_TOKENS) long, the second the rest.
SPEECH_TOKENS = 2 * TINY_TOKENS
REAL_MODEL_TIMEOUT_MS = 300_000
# Importing torch and loading the checkpoint on a busy 2-core CPU.
READY_TIMEOUT_S = 600.0
# The page sends one request at a time, so one decode slot with a short context serves it;
# the default KV cache (slots x 2048 tokens) would reserve gigabytes of RAM beside whatever
# model the test process itself holds.
ENGINE_LIMITS = {"ENGINE_MAX_SLOTS": "1", "ENGINE_MAX_CONTEXT_TOKENS": "1024"}
SAMPLE_RATE = 24000


@pytest.fixture
def server(ckpt_dir, short_library_dir, tmp_path):
    """README's command 3 with a token cap a CPU speaks in seconds, over a copy of the short
    voices (the page saves and deletes one) and a conditionals cache of its own."""
    library = shutil.copytree(short_library_dir, tmp_path / "library")
    with server_py(tmp_path / "server.log", READY_TIMEOUT_S,
                   CHATTERBOX_CKPT_DIR=str(ckpt_dir), HF_HUB_OFFLINE="1", CHATTERBOX_DEVICE="cpu",
                   CHATTERBOX_MAX_NEW_TOKENS=str(SPEECH_TOKENS), STREAM_FIRST_CHUNK_TOKENS=str(TINY_TOKENS),
                   VOICE_LIBRARY_DIR=str(library), CONDITIONALS_CACHE_DIR=str(tmp_path / "conditionals"),
                   **ENGINE_LIMITS) as process:
        yield process


def download(page, tmp_path):
    """Press the newest clip's download button; the saved file's path."""
    with page.expect_download() as event:
        page.click("#clips li .download")
    path = tmp_path / event.value.suggested_filename
    event.value.save_as(path)
    return path


def assert_clip_file(path, page) -> None:
    """The file decodes to the length the page shows, and its header holds that length."""
    samples, rate = sf.read(path)
    assert rate == SAMPLE_RATE and samples.size > 0
    assert sf.info(path).frames == samples.size
    assert abs(samples.size / rate - float(page.text_content("#clip-length").removesuffix(" s"))) < 0.01


def stream_and_download(page, tmp_path) -> None:
    """Speak streamed with a fixed seed, with no token cap of its own (the worker's); download it as WAV."""
    page.fill("#seed", "1")
    page.select_option("#response_format", "wav")
    speak_and_wait(page, "Hello there.", timeout_ms=REAL_MODEL_TIMEOUT_MS)
    assert stamp_ms(page, "first-audio") < stamp_ms(page, "last-audio")
    assert page.text_content("#clip-seed") == "1"
    path = download(page, tmp_path)
    assert path.suffix == ".wav"
    assert_clip_file(path, page)


def save_speak_with_and_delete_a_voice(page, tmp_path) -> None:
    """Save a voice through the page's form, speak with it whole as FLAC and download that,
    then delete the voice with the page's button."""
    save_voice_through_page(page, tmp_path, "Page Voice", timeout_ms=REAL_MODEL_TIMEOUT_MS)
    page.set_checked("#stream", False)
    page.select_option("#response_format", "flac")
    with page.expect_request("**/v1/audio/speech") as request:
        speak_and_wait(page, "My own voice.", timeout_ms=REAL_MODEL_TIMEOUT_MS)
    assert request.value.post_data_json["voice"] == page.input_value("#voice")
    assert "Page Voice" in page.text_content("#clips li p")
    path = download(page, tmp_path)
    assert path.suffix == ".flac"
    assert_clip_file(path, page)
    page.click("#delete-voice")
    page.click("#delete-voice")
    expect(page.locator("#voice")).not_to_contain_text("Page Voice")


def test_server_py_on_the_random_checkpoint_serves_a_page_that_does_it_all(browser, server, tmp_path):
    context, page, watch = open_page(browser, server.url)
    try:
        wait_for_voices(page)
        stream_and_download(page, tmp_path)
        save_speak_with_and_delete_a_voice(page, tmp_path)
        assert watch.errors == [] and watch.dialogs == []
    finally:
        context.close()
    assert server.stop() == 0, server.output()
