"""Real servers on loopback for the HTTP-mode tests: uvicorn on a free 127.0.0.1 port, in a
thread, with the worker injected; and a slow stub model for streaming tests."""
from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np

from chatterbox_worker.testing.stub_model import StubModel

LOOPBACK = "127.0.0.1"
START_TIMEOUT_S = 20.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


@contextmanager
def running_app(app, *, port: int | None = None) -> Iterator[str]:
    """Serve ``app`` with uvicorn on 127.0.0.1 until the block ends; yields the base URL."""
    import uvicorn

    port = port or free_port()
    server = uvicorn.Server(uvicorn.Config(app, host=LOOPBACK, port=port, log_level="warning",
                                           access_log=False, lifespan="on"))
    thread = threading.Thread(target=server.run, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + START_TIMEOUT_S
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    try:
        yield f"http://{LOOPBACK}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def wait_ready(base_url: str, timeout: float = 10.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if httpx.get(f"{base_url}/ping", timeout=2).status_code == 200:
            return
        time.sleep(0.02)
    raise RuntimeError("the test server never became ready")


class SlowStreamModel(StubModel):
    """A stub whose stream takes ``window_delay_s`` per window, and records when it finished."""

    def __init__(self, window_delay_s: float = 0.3):
        super().__init__()
        self.window_delay_s = window_delay_s
        self.finished_at: float | None = None
        self.first_window_at: float | None = None
        self.chunk_sizes: list[int] = []
        self.first_chunk_sizes: list[int | None] = []

    def stream(self, text, *, conditionals, options=None, chunk_size=50, **kwargs):
        self.chunk_sizes.append(chunk_size)
        self.first_chunk_sizes.append(kwargs.get("first_chunk_size"))
        for i, wav in enumerate(super().stream(text, conditionals=conditionals, options=options,
                                               chunk_size=chunk_size)):
            time.sleep(self.window_delay_s)
            if i == 0:
                self.first_window_at = time.perf_counter()
            yield wav
        self.finished_at = time.perf_counter()


def tone(seconds: float, sample_rate: int = 24000, freq: float = 220.0) -> np.ndarray:
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    return (0.4 * np.sin(2 * np.pi * freq * t)).astype(np.float32)
