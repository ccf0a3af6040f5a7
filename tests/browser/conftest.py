"""Headless Chromium against the HTTP server on the stub model (helpers in ``chromium``).

Without the browser or the ``playwright`` package every test here is skipped, with the reason.
"""
from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.browser.chromium import open_page
from tests.http_servers import SlowStreamModel, running_app, wait_ready

# Each stub window waits this long, so a streamed clip arrives in several separate pieces.
WINDOW_DELAY_S = 0.15


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
