"""The playground in headless Chromium, on the stub model: load, stream, download, voices,
errors beside their fields, markup-free voice names, the policy header, the key, the keyboard."""
from __future__ import annotations

import base64

import httpx
import numpy as np
import pytest
import soundfile as sf

from chatterbox_worker.audio.streaming import LENGTH_IN_HEADER_FORMATS, SPEECH_FORMATS
from chatterbox_worker.http.openai_speech import SPEECH_SAMPLE_RATE
from chatterbox_worker.testing.audio_payloads import make_wav_b64
from tests.browser.chromium import (
    PHONE,
    UPLOAD_TIMEOUT_MS,
    expect,
    open_page,
    save_voice_through_page,
    speak_and_wait,
    stamp_ms,
    wait_for_voices,
)
from tests.unit.test_openai_speech import decode

# Long enough for several stub windows (25 speech tokens each), so the stream arrives in pieces.
LONG_TEXT = "Streaming speech should reach the listener before the model has finished the sentence. " * 2
pytestmark = pytest.mark.browser
XSS_NAME = "<img src=x onerror=alert(1)>"
# Over the 5 s an uploaded voice needs; the fake microphone plays a beep.
RECORDING_MS = 5500
# The formats libsndfile reads (1.1 and later read mp3 and opus); it has no AAC reader, and
# raw PCM has no header to read.
SOUNDFILE_FORMATS = ("mp3", "opus", "flac", "wav")
# A decoded mp3 or aac is longer than the clip by the encoder's priming samples and its last
# frame's fill (70 ms and 62 ms on the stub's 1.73 s clip), which Chromium, libsndfile and
# PyAV all keep; the other formats decode to the clip's exact length.
CODEC_PADDING_S = {"mp3": 0.1, "aac": 0.1}


def read_download(path, fmt: str) -> tuple[np.ndarray, int]:
    """A downloaded clip's samples: libsndfile where it has a reader, else PyAV (aac) or numpy (pcm)."""
    if fmt in SOUNDFILE_FORMATS:
        return sf.read(path, dtype="float32")
    return decode(path.read_bytes(), fmt)


def voice_options(page) -> list[str]:
    return page.eval_on_selector_all("#voice option", "options => options.map(o => o.textContent)")


def upload_voice(base_url: str, name: str) -> dict:
    data = base64.b64decode(make_wav_b64(seconds=6.0))
    response = httpx.post(f"{base_url}/v1/audio/voices", data={"name": name},
                          files={"file": ("ref.wav", data, "audio/wav")})
    assert response.status_code == 201, response.text
    return response.json()


def test_page_loads_and_the_voice_list_fills(page, library):
    wait_for_voices(page)
    names = [v["speaker_name"] for v in library.list_voices()]
    options = voice_options(page)
    assert len(options) == len(names) and all(any(n in o for o in options) for n in names)
    assert page.input_value("#model") == "chatterbox"
    assert page.input_value("#response_format") == "mp3"  # the worker's default format
    # Every format offered is one test_download_decodes downloads and decodes.
    assert page.eval_on_selector_all("#response_format option", "os => os.map(o => o.value)") == list(SPEECH_FORMATS)
    assert page.input_value("#exaggeration") == "0.5" and page.input_value("#cfg_weight") == "0.5"
    page.fill("#voice-search", "amy")
    assert voice_options(page) == [o for o in options if "Amy" in o]


@pytest.mark.parametrize("transport", ["audio", "sse"])
def test_streamed_speech_starts_before_the_stream_ends(page, stream_model, transport):
    wait_for_voices(page)
    page.select_option("#transport", transport)
    speak_and_wait(page, LONG_TEXT)
    first, scheduled, last = (stamp_ms(page, i) for i in ("first-audio", "first-scheduled", "last-audio"))
    assert first <= scheduled < last  # the first window was playing before the last arrived
    assert stream_model.first_window_at < stream_model.finished_at
    assert page.text_content("#clip-seed").isdigit()
    # The waveform is drawn: the canvas holds more than its background colour.
    colours = page.evaluate("""() => {
        const c = document.querySelector('#clips li canvas');
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        const seen = new Set();
        for (let i = 0; i < d.length; i += 4) seen.add(`${d[i]},${d[i + 1]},${d[i + 2]}`);
        return seen.size;
    }""")
    assert colours > 1


@pytest.mark.parametrize("streamed", [True, False], ids=["streamed", "whole"])
@pytest.mark.parametrize("fmt", SPEECH_FORMATS)
def test_download_decodes(page, tmp_path, fmt, streamed):
    wait_for_voices(page)
    page.select_option("#response_format", fmt)
    page.set_checked("#stream", streamed)
    speak_and_wait(page, LONG_TEXT)
    seconds = float(page.text_content("#clip-length").removesuffix(" s"))
    with page.expect_download() as download:
        page.click("#clips li .download")
    path = tmp_path / download.value.suggested_filename
    download.value.save_as(path)
    assert path.suffix == f".{fmt}"
    samples, rate = read_download(path, fmt)
    extra = samples.size / rate - seconds  # the page shows the length to 10 ms
    assert rate == SPEECH_SAMPLE_RATE and np.abs(samples).max() > 0.05
    assert -0.01 <= extra <= CODEC_PADDING_S.get(fmt, 0.01), extra
    if fmt in LENGTH_IN_HEADER_FORMATS:  # every download is whole, so its header holds its length
        assert sf.info(path).frames == samples.size


def test_upload_a_voice_speak_with_it_and_delete_it(page, tmp_path, served):
    wait_for_voices(page)
    voice_id = save_voice_through_page(page, tmp_path, "Browser Voice")
    assert voice_id in {v["id"] for v in httpx.get(f"{served}/v1/audio/voices").json()["voices"]}

    with page.expect_request("**/v1/audio/speech") as request:
        speak_and_wait(page, "Hello from my own voice.")
    assert request.value.post_data_json["voice"] == voice_id
    assert "Browser Voice" in page.text_content("#clips li p")

    page.click("#delete-voice")  # the first press asks again
    assert "Press again" in page.text_content("#delete-voice")
    page.click("#delete-voice")
    expect(page.locator("#voice")).not_to_contain_text("Browser Voice")
    assert voice_id not in {v["id"] for v in httpx.get(f"{served}/v1/audio/voices").json()["voices"]}
    assert page.watch.dialogs == []


def test_shipped_voices_cannot_be_deleted_and_the_page_says_why(page):
    wait_for_voices(page)
    page.select_option("#voice", label=next(o for o in voice_options(page) if "Amy" in o))
    assert page.is_disabled("#delete-voice")
    assert "cannot be deleted" in page.text_content("#voice-note")


def test_upload_errors_are_shown_beside_their_field(page):
    wait_for_voices(page)
    page.fill("#upload-name", "No File")
    page.click("#upload")
    expect(page.locator("#err-file")).not_to_be_empty()
    assert "file" in page.text_content("#err-file")


def test_empty_text_shows_the_api_error_beside_the_text_field(page, served):
    wait_for_voices(page)
    expected = httpx.post(f"{served}/v1/audio/speech", json={
        "model": "chatterbox", "input": "", "voice": page.input_value("#voice"), "stream_format": "audio",
        "response_format": "pcm"}).json()["error"]
    assert expected["param"] == "input"
    page.fill("#text", "")
    page.click("#speak")
    expect(page.locator("#err-input")).not_to_be_empty()
    assert page.text_content("#err-input") == expected["message"]
    assert page.text_content("#err-general") == ""


def test_a_voice_name_with_markup_is_shown_as_text(browser, served):
    upload_voice(served, XSS_NAME)
    context, page, watch = open_page(browser, served)
    try:
        wait_for_voices(page)
        assert any(XSS_NAME in option for option in voice_options(page))
        page.select_option("#voice", label=next(o for o in voice_options(page) if XSS_NAME in o))
        speak_and_wait(page, "Hello.")
        assert XSS_NAME in page.text_content("#clips li p")
        assert page.locator("img").count() == 0
        assert watch.dialogs == [] and watch.errors == []
    finally:
        context.close()


def test_the_policy_header_is_sent_and_enforced(browser, served):
    context, page, watch = open_page(browser, served)
    try:
        policy = page.context.request.get(served).headers["content-security-policy"]
        assert "default-src 'self'" in policy
        violated = page.evaluate("""() => new Promise(resolve => {
            document.addEventListener('securitypolicyviolation', e => resolve(e.effectiveDirective));
            const s = document.createElement('script');
            s.textContent = 'window.injected = true';
            document.body.append(s);
        })""")
        assert violated.startswith("script-src") and page.evaluate("window.injected === undefined")
    finally:
        context.close()


def test_the_api_key_is_asked_once_and_kept_for_the_tab_only(browser, worker, monkeypatch):
    import server
    from tests.http_servers import running_app, wait_ready

    monkeypatch.setenv("API_KEY", "s3cret")
    with running_app(server.create_app(lambda: worker)) as url:
        wait_ready(url)
        context, page, _ = open_page(browser, url)
        try:
            page.wait_for_selector("#key-panel:not([hidden])")
            page.fill("#api-key", "s3cret")
            page.press("#api-key", "Enter")
            wait_for_voices(page)
            assert page.evaluate("sessionStorage.getItem('chatterbox.apiKey')") == "s3cret"
            assert page.evaluate("localStorage.length") == 0
            page.reload()
            wait_for_voices(page)  # the tab keeps it: not asked again
            assert page.is_hidden("#key-panel")
        finally:
            context.close()


def test_keyboard_alone_speaks_at_phone_width(browser, served):
    context, page, watch = open_page(browser, served, viewport=PHONE)
    try:
        wait_for_voices(page)
        assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
        for _ in range(10):  # Tab from the top of the page to the text box
            page.keyboard.press("Tab")
            if page.evaluate("document.activeElement.id") == "text":
                break
        assert page.evaluate("document.activeElement.id") == "text"
        page.keyboard.press("Control+A")
        page.keyboard.type("Spoken from the keyboard.")
        page.keyboard.press("Control+Enter")
        page.wait_for_selector("#clips li")
        assert watch.errors == []
    finally:
        context.close()


def test_a_recording_from_the_microphone_becomes_a_voice(page, served):
    wait_for_voices(page)
    page.click("#record")  # Chromium's fake microphone (--use-fake-device-for-media-stream)
    expect(page.locator("#record")).to_have_text("Stop recording")
    page.wait_for_timeout(RECORDING_MS)
    page.click("#record")
    expect(page.locator("#record-status")).to_contain_text("Recorded")
    page.fill("#upload-name", "Microphone Voice")
    page.click("#upload")
    expect(page.locator("#voice option:checked")).to_contain_text("Microphone Voice", timeout=UPLOAD_TIMEOUT_MS)
    expect(page.locator("#err-file")).to_be_empty()
    saved = next(v for v in httpx.get(f"{served}/v1/audio/voices").json()["voices"] if v["name"] == "Microphone Voice")
    assert saved["duration"] > 0 and saved["deletable"] is True


def test_a_knob_out_of_bounds_shows_the_api_error_beside_it(page):
    wait_for_voices(page)
    page.fill("#speed", "9")
    page.click("#speak")
    expect(page.locator("#err-speed")).not_to_be_empty()
    assert "speed" in page.text_content("#err-speed") and page.text_content("#err-input") == ""


def test_stop_ends_a_stream_under_way(page):
    wait_for_voices(page)
    page.fill("#text", LONG_TEXT * 4)  # many windows, each a little apart
    page.click("#speak")
    expect(page.locator("#first-audio")).not_to_have_text("–")
    page.click("#stop")
    expect(page.locator("#status")).to_have_text("Stopped.")
    assert page.locator("#clips li").count() == 0 and page.is_enabled("#speak")
    assert page.text_content("#err-general") == ""
