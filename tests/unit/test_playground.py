"""The playground's routes and files, without a browser: what is served, with which headers,
to whom, and static checks of the page's markup and scripts (tests/browser drives it)."""
from __future__ import annotations

import re
from html.parser import HTMLParser

import httpx
import pytest

from chatterbox_worker.audio.streaming import SPEECH_FORMATS
from chatterbox_worker.http.routers import playground
from chatterbox_worker.models.registry import VARIANTS
from chatterbox_worker.voices.sources import MAX_CLONE_SECONDS, MIN_CLONE_SECONDS
from tests.http_servers import running_app, wait_ready

SCRIPTS = [name for name in playground.ASSETS if name.endswith(".js")]
# Ways of turning a string into markup; the page must put API text in with textContent only.
MARKUP_SINKS = re.compile(r"\binnerHTML\b|\bouterHTML\b|insertAdjacentHTML|document\.write|\beval\(|new Function")


@pytest.fixture
def serve(worker):
    import server

    def start():
        ctx = running_app(server.create_app(lambda: worker))
        url = ctx.__enter__()
        started.append(ctx)
        wait_ready(url)
        return url

    started: list = []
    yield start
    for ctx in started:
        ctx.__exit__(None, None, None)


def test_page_is_served_at_root_and_playground_with_a_same_origin_policy(serve):
    url = serve()
    for path in playground.PAGE_PATHS:
        response = httpx.get(url + path)
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
        policy = response.headers["content-security-policy"]
        assert "default-src 'self'" in policy and "script-src 'self'" in policy
        assert "http" not in policy and "*" not in policy and "unsafe" not in policy
        assert response.headers["x-content-type-options"] == "nosniff"
        assert "<title>Chatterbox playground</title>" in response.text


def test_every_asset_is_served_with_its_type_and_nothing_else_is(serve):
    url = serve()
    for name, media_type in playground.ASSETS.items():
        response = httpx.get(f"{url}/playground/{name}")
        assert response.status_code == 200, name
        assert response.headers["content-type"] == media_type
        assert response.content == playground.read_asset(name)
    for name in ("__init__.py", "..%2F..%2Fsettings.py", "missing.js"):
        response = httpx.get(f"{url}/playground/{name}")
        assert response.status_code == 404 and "error" in response.json()


def test_config_carries_the_workers_own_defaults_and_bounds(serve):
    config = httpx.get(f"{serve()}/playground/config.json").json()
    assert config["formats"] == list(SPEECH_FORMATS) and config["default_format"] == "mp3"
    assert config["sample_rate"] == 24000 and config["default_speed"] == 1.0
    assert config["bounds"]["speed"] == {"minimum": 0.25, "maximum": 4.0}
    assert config["bounds"]["temperature"] == {"exclusiveMinimum": 0.0, "maximum": 5.0}
    assert config["bounds"]["exaggeration"] == {"minimum": 0.0, "maximum": 2.0}
    for name, spec in VARIANTS.items():
        assert config["variants"][name]["cfg_weight"] == spec.defaults.cfg_weight
        assert config["variants"][name]["exaggeration"] == spec.defaults.exaggeration
    assert config["api_key_required"] is False
    assert config["voice_seconds"] == {"minimum": MIN_CLONE_SECONDS, "maximum": MAX_CLONE_SECONDS}


def test_the_setting_turns_the_page_off(serve, monkeypatch):
    monkeypatch.setenv("PLAYGROUND", "false")
    url = serve()
    for path in (*playground.PAGE_PATHS, "/playground/playground.js", "/playground/config.json"):
        response = httpx.get(url + path)
        assert response.status_code == 404 and "PLAYGROUND" in response.json()["error"]["message"]
    assert httpx.get(f"{url}/v1/models").status_code == 200


def test_with_an_api_key_the_page_is_open_and_the_api_is_not(serve, monkeypatch):
    monkeypatch.setenv("API_KEY", "s3cret")
    url = serve()
    assert httpx.get(url + "/").status_code == 200
    assert httpx.get(f"{url}/playground/config.json").json()["api_key_required"] is True
    assert httpx.get(f"{url}/v1/audio/voices").status_code == 401
    assert httpx.get(f"{url}/playground/secret").status_code == 401  # not one of the page's files
    voices = httpx.get(f"{url}/v1/audio/voices", headers={"Authorization": "Bearer s3cret"})
    assert voices.status_code == 200


def test_listing_says_which_voices_may_be_deleted(worker):
    import numpy as np

    from chatterbox_worker.http import openai_api

    worker.library.save_voice("Mine", np.zeros(24000 * 3, dtype=np.float32) + 0.1, 24000)
    voices = {v["name"]: v for v in openai_api.list_voices(worker)["voices"]}
    assert voices["Mine"]["deletable"] is True
    assert voices["Amy"]["deletable"] is False


class Markup(HTMLParser):
    """The tags of the page, and the ids its labels point at."""

    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.label_targets: set[str] = set()

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        self.tags.append((tag, attributes))
        if tag == "label" and attributes.get("for"):
            self.label_targets.add(attributes["for"])


def page_markup() -> Markup:
    markup = Markup()
    markup.feed(playground.read_asset("index.html").decode())
    return markup


def test_every_control_has_a_real_label():
    markup = page_markup()
    controls = [a for tag, a in markup.tags if tag in ("input", "select", "textarea")]
    assert controls
    for attributes in controls:
        assert attributes.get("id") in markup.label_targets, attributes


def test_the_page_loads_nothing_from_another_origin_and_has_no_inline_code():
    markup = page_markup()
    for tag, attributes in markup.tags:
        for key in ("src", "href", "action"):
            value = attributes.get(key) or ""
            assert not re.match(r"^(https?:)?//", value), (tag, value)
        assert not any(key.startswith("on") for key in attributes), (tag, attributes)
        if tag == "script":
            assert attributes.get("src"), "inline scripts are refused by the policy"
    assert "<style" not in playground.read_asset("index.html").decode()


def script_code(name: str) -> str:
    """A script without its comment lines (which may name what the code avoids)."""
    lines = playground.read_asset(name).decode().splitlines()
    return "\n".join(line for line in lines if not line.strip().startswith(("//", "/*", "*")))


@pytest.mark.parametrize("name", SCRIPTS)
def test_scripts_never_turn_text_into_markup(name):
    source = script_code(name)
    assert not MARKUP_SINKS.search(source)
    assert "localStorage" not in source  # the API key lives in the tab's session only
    assert not re.search(r"https?://", source)
