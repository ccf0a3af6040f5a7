"""Benchmark: serving under load and faults, on the real classes, through a real server.

This is a benchmark, not a test: pytest only collects ``tests/``. It starts ``server.py``
(HTTP mode) in a child process on the standard model (a random-weights checkpoint unless
CHATTERBOX_CKPT_DIR names real weights), with ``MAX_CONCURRENT_JOBS=2``, ``/ping`` on its
own ``PORT_HEALTH``, a few short voices and a tiny speech-token bound, and measures:

- ``flood`` (``MAX_QUEUED_REQUESTS=4``): FLOOD_REQUESTS simultaneous speech requests (whole
  clips and streams, several voices): served, shed (429), unavailable (503), failed; p50/p95
  latency of the served; p95 time to first audio of the streams; the slowest refusal, and
  whether every refusal carried ``Retry-After``; the worst ``/ping`` on both ports while it
  ran; RSS before/after. The clients are built first: a request's seconds run from its send
  (an ``httpx.Client`` takes about 40 ms of CPU to build; 40 at once took up to 2 s);
- ``abandon``, on a second server (same library and conditionals) whose line of
  ABANDON_MAX_QUEUED admits every abandoning client: ABANDONING_STREAMS streams that leave
  after their first bytes, then ABANDONING_CLIPS whole-clip clients that give up after
  CLIP_CLIENT_TIMEOUT_S; then one request, timed against the same request made alone
  before (``next_over_solo``);
- ``sigterm``, on that second server: SIGTERM while SIGTERM_REQUESTS requests run or wait
  (all admitted with either line): the exit code, the seconds to exit, and how each
  client's request ended;
- ``queue_cancel`` (in this process, after the server has gone): a queue job cancelled the
  way the RunPod SDK cancels it (its task), and the seconds until the engine holds no job.

    python bench/load.py --out bench/results/vm-cpu-load.json     # minutes on 2 CPU cores (the model loads twice)
    python bench/load.py --stub --out /tmp/load-stub.json           # the same phases on a stub model, ~30 s

``--stub`` serves a stepped stub model (``tests/stepped_server.py``: no torch, each job
STUB_STEPS steps of STUB_STEP_S, cancellable at each step) so that the short version runs
in CI (``tests/unit/test_load_script.py``); its figures say nothing about the model.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
# bench/ holds http.py, which must not shadow the standard library's http package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(REPO))
os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import httpx  # noqa: E402 (after the path set-up above)

from bench.random_checkpoint import checkpoint_dir  # noqa: E402

logger = logging.getLogger("benchmark")

LOOPBACK = "127.0.0.1"
SLOTS = 2
MAX_QUEUED = 4  # the flood's line: 2 + 4 admitted, the rest refused
# The abandon phase's line: a wave of 8 may all wait while the wave before holds both slots, and
# as long as a client would, so that all 8 + 8 are admitted and abandon, none refused.
ABANDON_MAX_QUEUED = 8
ABANDON_QUEUE_TIMEOUT_S = 600.0
TOKENS = 4  # speech tokens per request: random weights rarely stop on their own
# An abandoning stream's tokens: a first window of 12 (STREAM_FIRST_CHUNK_TOKENS), then one of 25
# that nobody waits for.
ABANDON_STREAM_TOKENS = 37
QUEUE_CANCEL_AFTER_TOKENS = 3  # cancel a queue job while it decodes, past its prefill
VOICES = 3
VOICE_SECONDS = 2.0  # S3Gen's CPU cost grows with the prompt
FLOOD_REQUESTS = 40
ABANDONING_STREAMS = 8
ABANDONING_CLIPS = 8
CLIP_CLIENT_TIMEOUT_S = 1.0
SIGTERM_REQUESTS = 6
SHUTDOWN_GRACE_S = 60.0
QUEUE_CANCEL_TOKENS = 400
PING_INTERVAL_S = 0.05
IDLE_PING_S = 3.0
START_TIMEOUT_S = 600.0
CLIENT_TIMEOUT_S = 600.0
SOLO_REPS = 2
MB = 1024 * 1024
STUB_STEPS = 40
STUB_STEP_S = 0.05


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


def short_library(target: Path) -> list[str]:
    """VOICES short voices cut from the shipped ones (unless already there); returns their names."""
    from optimized_voice_library import OptimizedVoiceLibrary

    demo = OptimizedVoiceLibrary(REPO)
    short = OptimizedVoiceLibrary(target)
    present = {voice["speaker_name"] for voice in short.list_voices()} if target.exists() else set()
    names = []
    for voice in demo.list_voices()[:VOICES]:
        if voice["speaker_name"] not in present:
            audio = demo.get_voice_audio(voice["voice_id"])
            short.save_voice(voice["speaker_name"], audio.samples[: int(VOICE_SECONDS * audio.sample_rate)].copy(),
                             audio.sample_rate)
        names.append(voice["speaker_name"])
    return names


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def server_command(workdir: Path, port: int, health_port: int, stub: bool) -> list[str]:
    if not stub:
        return [sys.executable, "server.py"]
    return [sys.executable, "-m", "tests.stepped_server", str(workdir / "library"), str(workdir / "conditionals"),
            str(port), str(STUB_STEPS), str(STUB_STEP_S), str(health_port)]


def start_server(workdir: Path, ckpt: Path | None, port: int, health_port: int,
                 line: dict[str, str]) -> subprocess.Popen:
    env = {**os.environ, "CHATTERBOX_CKPT_DIR": str(ckpt or ""), "VOICE_LIBRARY_DIR": str(workdir / "library"),
           "CONDITIONALS_CACHE_DIR": str(workdir / "conditionals"), "MAX_CONCURRENT_JOBS": str(SLOTS),
           "PORT": str(port), "PORT_HEALTH": str(health_port), "HTTP_HOST": LOOPBACK,
           "SHUTDOWN_GRACE_S": str(SHUTDOWN_GRACE_S), "LOG_LEVEL": "WARNING", **line}
    log = open(workdir / "server.log", "a")
    proc = subprocess.Popen(server_command(workdir, port, health_port, ckpt is None), cwd=REPO, env=env, stdout=log,
                            stderr=subprocess.STDOUT)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if httpx.get(f"http://{LOOPBACK}:{health_port}/ping", timeout=5).status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    proc.kill()
    tail = (workdir / "server.log").read_text()[-4000:]
    raise RuntimeError(f"the server did not become ready:\n{tail}")


@dataclass
class Served:
    """A server started by :func:`serving`: its process, URLs and the library's voices."""

    proc: subprocess.Popen
    url: str
    health_url: str
    voices: list[str]


def stop_server(proc: subprocess.Popen) -> None:
    """SIGTERM, as a scale-down would (pending conditionals are written whole); killed if it hangs."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=SHUTDOWN_GRACE_S + 60)
    except subprocess.TimeoutExpired:
        proc.kill()


@contextmanager
def serving(ckpt: Path | None, workdir: Path, max_queued: int = MAX_QUEUED,
            queue_timeout_s: float | None = None) -> Iterator[Served]:
    """The HTTP server over a short library in ``workdir`` (made once, shared by later servers),
    stopped on the way out if still up. Its line: ``max_queued`` places, waits of
    ``queue_timeout_s`` (the worker's default if None)."""
    voices = short_library(workdir / "library")
    port, health_port = free_port(), free_port()
    line = {"MAX_QUEUED_REQUESTS": str(max_queued)}
    if queue_timeout_s is not None:
        line["QUEUE_TIMEOUT_S"] = str(queue_timeout_s)
    proc = start_server(workdir, ckpt, port, health_port, line)
    try:
        yield Served(proc, f"http://{LOOPBACK}:{port}", f"http://{LOOPBACK}:{health_port}", voices)
    finally:
        stop_server(proc)


class PingProbe:
    """Pings ``/ping`` every PING_INTERVAL_S on a thread of its own; keeps each latency."""

    def __init__(self, url: str):
        self.url, self.latencies, self.failures = url, [], 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(timeout=30) as client:
            while not self._stop.is_set():
                started = time.perf_counter()
                try:
                    ok = client.get(self.url + "/ping").status_code == 200
                except httpx.TransportError:
                    ok = False
                self.latencies.append(time.perf_counter() - started)
                self.failures += not ok
                self._stop.wait(PING_INTERVAL_S)

    def __enter__(self) -> PingProbe:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def summary(self) -> dict[str, Any]:
        ms = sorted(1000 * v for v in self.latencies)
        return {"pings": len(ms), "failures": self.failures, "p50_ms": round(statistics.median(ms), 1),
                "p99_ms": round(ms[min(len(ms) - 1, int(0.99 * len(ms)))], 1), "max_ms": round(ms[-1], 1)}


def speech_body(i: int, voices: list[str], stream: bool, tokens: int = TOKENS) -> dict[str, Any]:
    return {"model": "tts-1", "voice": voices[i % len(voices)], "input": f"Request {i} speaks now.", "seed": 100 + i,
            "max_new_tokens": tokens, "response_format": "pcm" if stream else "wav", "stream": stream}


def one_request(url: str, body: dict[str, Any], timeout: float = CLIENT_TIMEOUT_S,
                leave_after_first: bool = False, client: httpx.Client | None = None) -> dict[str, Any]:
    """How one request ended: status, seconds, first audio, Retry-After, error code, or the exception.

    The seconds run from the send: a ``client`` built beforehand keeps its construction out
    of them (without one, a client is built first, outside the timing too)."""
    if client is None:
        with httpx.Client() as own:
            return one_request(url, body, timeout, leave_after_first, own)
    started = time.perf_counter()
    out: dict[str, Any] = {"stream": body["stream"]}
    try:
        with client.stream("POST", url + "/v1/audio/speech", json=body, timeout=timeout) as response:
            out["status"] = response.status_code
            out["retry_after"] = response.headers.get("Retry-After")
            pieces = []
            for piece in response.iter_bytes():
                if piece and "first_audio_s" not in out and response.status_code == 200:
                    out["first_audio_s"] = time.perf_counter() - started
                    if leave_after_first:
                        break
                pieces.append(piece)
            body = b"".join(pieces)
            if response.status_code >= 400:
                out["error_code"] = json.loads(body or b"{}").get("error", {}).get("code")
            out["bytes"] = len(body)
    except httpx.HTTPError as exc:
        out["exception"] = type(exc).__name__
    out["seconds"] = time.perf_counter() - started
    return out


@contextmanager
def clients(n: int) -> Iterator[list[httpx.Client]]:
    """``n`` HTTP clients, built now: before the requests and the ``/ping`` probes start."""
    built = [httpx.Client() for _ in range(n)]
    try:
        yield built
    finally:
        for client in built:
            client.close()


def all_at_once(url: str, bodies: list[dict], **kwargs) -> list[dict[str, Any]]:
    """Every request sent at once, each from its own thread and its own client of ``clients``
    (a keyword; built here, before the start, if not given)."""
    given = kwargs.pop("clients", None)
    with contextlib.ExitStack() as stack:
        own = given or stack.enter_context(clients(len(bodies)))
        barrier = threading.Barrier(len(bodies))

        def run(pair):
            barrier.wait()
            return one_request(url, pair[0], client=pair[1], **kwargs)

        with ThreadPoolExecutor(len(bodies)) as pool:
            return list(pool.map(run, zip(bodies, own)))


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))], 2)


def summarize(results: list[dict[str, Any]]) -> dict[str, Any]:
    served = [r for r in results if r.get("status") == 200 and r.get("bytes")]
    refused = [r for r in results if r.get("status") in (429, 503)]
    return {
        "requests": len(results), "served": len(served),
        "shed_429": sum(r.get("status") == 429 for r in results),
        "unavailable_503": sum(r.get("status") == 503 for r in results),
        "failed": len(results) - len(served) - len(refused),
        "connection_errors": sum("exception" in r for r in results),
        "every_refusal_has_retry_after": all(r.get("retry_after") for r in refused),
        "slowest_refusal_s": percentile([r["seconds"] for r in refused], 1.0),
        "latency_p50_s": percentile([r["seconds"] for r in served], 0.5),
        "latency_p95_s": percentile([r["seconds"] for r in served], 0.95),
        "first_audio_p95_s": percentile([r["first_audio_s"] for r in served if r["stream"]], 0.95),
    }


def flood(url: str, health_url: str, voices: list[str], pid: int) -> dict[str, Any]:
    rss_before = rss_mb(pid)
    with PingProbe(health_url) as idle:  # the same probe with nothing else running: the floor
        time.sleep(IDLE_PING_S)
    bodies = [speech_body(i, voices, stream=i % 2 == 1) for i in range(FLOOD_REQUESTS)]
    # The probes share this process with the clients: the clients' construction stays outside both.
    with clients(len(bodies)) as built, PingProbe(url) as ping_main, PingProbe(health_url) as ping_health:
        results = all_at_once(url, bodies, clients=built)
    return {**summarize(results), "ping_idle": idle.summary(), "ping_port": ping_main.summary(),
            "ping_health_port": ping_health.summary(),
            "rss_before_mb": round(rss_before), "rss_after_mb": round(rss_mb(pid)),
            "rss_growth_mb": round(rss_mb(pid) - rss_before)}


def solo_seconds(url: str, voices: list[str]) -> float:
    times = [one_request(url, speech_body(0, voices, stream=False))["seconds"] for _ in range(SOLO_REPS)]
    return statistics.median(times)


def engine_load(url: str) -> dict[str, float]:
    """Jobs holding a slot or waiting, and jobs in the decode engine, from ``/metrics``."""
    wanted = {'chatterbox_admission{stat="in_flight"}': "in_flight", 'chatterbox_admission{stat="waiting"}': "waiting",
              'chatterbox_engine_active_jobs{model="standard"}': "engine_jobs"}
    found = {}
    for line in httpx.get(url + "/metrics").text.splitlines():
        name, _, value = line.rpartition(" ")
        if name in wanted:
            found[wanted[name]] = float(value)
    return found


def abandon(url: str, voices: list[str]) -> dict[str, Any]:
    solo = solo_seconds(url, voices)
    streams = all_at_once(url, [speech_body(i, voices, stream=True, tokens=ABANDON_STREAM_TOKENS)
                                for i in range(ABANDONING_STREAMS)], leave_after_first=True)
    clips = all_at_once(url, [speech_body(i, voices, stream=False) for i in range(ABANDONING_CLIPS)],
                        timeout=CLIP_CLIENT_TIMEOUT_S)
    left_behind = engine_load(url)  # what the abandoned requests still hold as the next one is sent
    following = one_request(url, speech_body(0, voices, stream=False))
    solo_after = solo_seconds(url, voices)  # other load on the machine shows as a change of the solo time
    metrics = httpx.get(url + "/metrics").text
    cancelled = [line for line in metrics.splitlines() if line.startswith("chatterbox_cancelled_jobs_total")]
    return {"max_queued": ABANDON_MAX_QUEUED, "queue_timeout_s": ABANDON_QUEUE_TIMEOUT_S,
            "streams": len(streams), "clips": len(clips),
            "solo_s": round(solo, 2), "solo_after_s": round(solo_after, 2), "next_s": round(following["seconds"], 2),
            "next_over_solo": round(following["seconds"] / solo, 2), "next_status": following.get("status"),
            "left_behind_when_next_sent": left_behind,
            "streams_left_after_first_bytes": sum("first_audio_s" in r for r in streams),
            "streams_refused": sum(r.get("status") in (429, 503) for r in streams),
            "clips_timed_out_client_side": sum(r.get("exception") == "ReadTimeout" for r in clips),
            "clips_refused": sum(r.get("status") in (429, 503) for r in clips),
            "cancelled_counts": cancelled}


def sigterm(proc: subprocess.Popen, url: str, voices: list[str]) -> dict[str, Any]:
    bodies = [speech_body(i, voices, stream=i % 2 == 1) for i in range(SIGTERM_REQUESTS)]
    with ThreadPoolExecutor(len(bodies)) as pool:
        futures = [pool.submit(one_request, url, body) for body in bodies]
        while engine_load(url).get("in_flight", 0) < 1:  # SIGTERM once a job holds a slot
            time.sleep(0.05)
        signalled = time.perf_counter()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=SHUTDOWN_GRACE_S + 60)
        exit_s = time.perf_counter() - signalled
        results = [f.result() for f in futures]
    outcomes = [f"{r.get('status')}:{r.get('error_code') or ('audio' if r.get('bytes') else r.get('exception'))}"
                for r in results]
    return {"exit_code": code, "exit_s": round(exit_s, 2), "grace_s": SHUTDOWN_GRACE_S, "outcomes": outcomes,
            "every_client_answered": all("exception" not in r for r in results)}


def in_process_worker(ckpt: Path | None, workdir: Path) -> tuple[Any, Any]:
    """The queue handler's worker in this process, and a reader of how many jobs its model holds."""
    os.environ.update({"CHATTERBOX_CKPT_DIR": str(ckpt or ""), "VOICE_LIBRARY_DIR": str(workdir / "library"),
                       "CONDITIONALS_CACHE_DIR": "off", "MAX_CONCURRENT_JOBS": str(SLOTS)})
    from chatterbox_worker.settings import reload_settings

    reload_settings()
    if ckpt is None:
        from chatterbox_worker.testing.stepped_stub import SteppedStubModel
        from chatterbox_worker.testing.stub_worker import stub_worker

        model = SteppedStubModel(STUB_STEP_S, QUEUE_CANCEL_TOKENS)
        return stub_worker(workdir / "library", model=model), lambda: (model.active, model.steps_run)
    from chatterbox_worker.serving import bootstrap

    worker = bootstrap.get_worker()

    def engine_state() -> tuple[int, int]:
        stats = worker.models["standard"].engine.stats()
        return stats.active_jobs, stats.tokens
    return worker, engine_state


def queue_cancel(ckpt: Path | None, workdir: Path) -> dict[str, Any]:
    """A 400-token queue job cancelled as the SDK cancels it; seconds until its model holds no job."""
    import handler

    worker, engine_state = in_process_worker(ckpt, workdir)
    handler.get_worker = lambda: worker
    job = {"id": "cancelled", "input": {"text": "A long job nobody waits for.", "max_new_tokens": QUEUE_CANCEL_TOKENS,
                                        "seed": 1}}

    async def scenario() -> dict[str, Any]:
        _, tokens_before = engine_state()
        task = asyncio.create_task(handler.async_handler(job))
        while engine_state()[1] < tokens_before + QUEUE_CANCEL_AFTER_TOKENS:  # past its prefill, decoding
            await asyncio.sleep(0.01)
        cancelled_at = time.perf_counter()
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass
        reraised_s = time.perf_counter() - cancelled_at
        while engine_state()[0]:
            await asyncio.sleep(0.005)
        return {"reraised_s": round(reraised_s, 3), "engine_empty_s": round(time.perf_counter() - cancelled_at, 3),
                "gate": handler.queue_gate().stats()["cancelled"]}

    return asyncio.run(scenario())


def print_table(report: dict[str, Any]) -> None:
    f, a, s, q = report["flood"], report["abandon"], report["sigterm"], report["queue_cancel"]
    rows = [
        ("flood: requests / served / 429 / 503 / failed", f"{f['requests']} / {f['served']} / {f['shed_429']} / "
                                                          f"{f['unavailable_503']} / {f['failed']}"),
        ("flood: slowest refusal (s), all with Retry-After", f"{f['slowest_refusal_s']}, {f['every_refusal_has_retry_after']}"),
        ("flood: served latency p50 / p95 (s)", f"{f['latency_p50_s']} / {f['latency_p95_s']}"),
        ("flood: stream first audio p95 (s)", f"{f['first_audio_p95_s']}"),
        ("flood: /ping max on PORT / PORT_HEALTH (ms)", f"{f['ping_port']['max_ms']} / {f['ping_health_port']['max_ms']}"),
        ("flood: /ping p50 / p99 on PORT_HEALTH (ms)", f"{f['ping_health_port']['p50_ms']} / {f['ping_health_port']['p99_ms']}"),
        ("idle: /ping p50 / max (ms)", f"{f['ping_idle']['p50_ms']} / {f['ping_idle']['max_ms']}"),
        ("flood: RSS before / after (MB)", f"{f['rss_before_mb']} / {f['rss_after_mb']}"),
        ("abandon: streams left after first bytes / clips timed out; refused",
         f"{a['streams_left_after_first_bytes']}/{a['streams']} / {a['clips_timed_out_client_side']}/{a['clips']}; "
         f"{a['streams_refused'] + a['clips_refused']}"),
        ("abandon: solo before / next request / solo after (s)", f"{a['solo_s']} / {a['next_s']} / {a['solo_after_s']}"),
        ("abandon: next over solo; left behind when sent", f"{a['next_over_solo']}; {a['left_behind_when_next_sent']}"),
        ("sigterm: exit code, seconds to exit", f"{s['exit_code']}, {s['exit_s']}"),
        ("sigterm: client outcomes", " ".join(s["outcomes"])),
        ("queue cancel: CancelledError re-raised / engine empty (s)", f"{q['reraised_s']} / {q['engine_empty_s']}"),
    ]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "vm-cpu-load.json")
    parser.add_argument("--stub", action="store_true", help="a stepped stub model instead of the real one (CI)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    ckpt = None if args.stub else checkpoint_dir()
    with tempfile.TemporaryDirectory(prefix="chatterbox-load-") as tmp:
        workdir = Path(tmp)
        with serving(ckpt, workdir) as server:
            report: dict[str, Any] = {"flood": flood(server.url, server.health_url, server.voices, server.proc.pid)}
        with serving(ckpt, workdir, ABANDON_MAX_QUEUED, ABANDON_QUEUE_TIMEOUT_S) as server:
            report["abandon"] = abandon(server.url, server.voices)
            report["sigterm"] = sigterm(server.proc, server.url, server.voices)
        report["queue_cancel"] = queue_cancel(ckpt, workdir)
    report["setup"] = {"model": "stepped stub" if args.stub else "standard (random weights unless CHATTERBOX_CKPT_DIR)",
                       "slots": SLOTS, "max_queued": MAX_QUEUED, "abandon_and_sigterm_max_queued": ABANDON_MAX_QUEUED,
                       "request_seconds_from": "the send; each client is built before the requests start",
                       "tokens": TOKENS, "voices": VOICES,
                       "voice_seconds": VOICE_SECONDS, "platform": platform.platform(), "cpus": os.cpu_count(),
                       "command": "python bench/load.py " + " ".join(sys.argv[1:] if argv is None else argv)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print_table(report)


if __name__ == "__main__":
    main()
