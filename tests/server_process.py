"""``python server.py`` as a person starts it, for the tests that need the real entry point.

The child's settings come from its own environment alone (``settings.child_environment``
plus the test's overrides); nothing in the test process changes. It listens on a free
loopback port, and is ready once ``/ping`` answers 200 (204 while the model loads, 503 if the
load failed). Its output goes to a file, so a chatty model load can never fill a pipe and
stall it, and a failure can show what it said.
"""
from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from chatterbox_worker.settings import child_environment
from tests.http_servers import LOOPBACK, free_port

REPO = Path(__file__).resolve().parents[1]
READY, LOADING, LOAD_FAILED = 200, 204, 503
POLL_S = 0.5
STOP_TIMEOUT_S = 60.0


@dataclass
class ServerProcess:
    """A running ``python server.py``: its base URL, the process, and where its output goes."""

    url: str
    process: subprocess.Popen
    log_path: Path

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def ping(self) -> int | None:
        """``/ping``'s status, or None while nothing listens yet."""
        try:
            return httpx.get(f"{self.url}/ping", timeout=5).status_code
        except httpx.TransportError:
            return None

    def wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server.py exited with {self.process.returncode}:\n{self.output()}")
            status = self.ping()
            if status == READY:
                return
            if status not in (None, LOADING):
                raise RuntimeError(f"/ping answered {status} while server.py started:\n{self.output()}")
            time.sleep(POLL_S)
        raise RuntimeError(f"server.py was not ready within {timeout_s:.0f} s:\n{self.output()}")

    def stop(self) -> int:
        """SIGTERM, as RunPod stops a worker; the exit status once it has shut down."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise RuntimeError(f"server.py did not exit after SIGTERM:\n{self.output()}") from None


@contextmanager
def server_py(log_path: Path, ready_timeout_s: float, **settings: str) -> Iterator[ServerProcess]:
    """``python server.py`` with ``settings`` (environment variables) in the child's environment,
    on a free port of 127.0.0.1, until the block ends; yields it once ready. The block may stop
    it itself to check the exit status; otherwise it is stopped (or killed) on the way out."""
    port = free_port()
    env = child_environment(**settings, HTTP_HOST=LOOPBACK, PORT=str(port))
    for name in ("PORT_HEALTH", "API_KEY"):  # /ping beside the page, and no token: as README's command
        env.pop(name, None)
    with log_path.open("wb") as log:
        process = subprocess.Popen([sys.executable, "server.py"], cwd=REPO, env=env, stdout=log,
                                   stderr=subprocess.STDOUT)
    server = ServerProcess(f"http://{LOOPBACK}:{port}", process, log_path)
    try:
        server.wait_ready(ready_timeout_s)
        yield server
    finally:
        if process.poll() is None:
            server.stop()
