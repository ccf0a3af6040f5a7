"""Load test: N concurrent jobs with a mix of voices, in-process and through the local API.

Every job carries a seed, so its audio is deterministic on one device. Each job is first run
alone (the reference), then all run at once; a response whose audio differs from its
reference got another job's voice (or state). The script reports throughput and latency
percentiles and exits non-zero on any error or swap.

    python scripts/load_test.py                       # in-process and API, 10 jobs
    python scripts/load_test.py --target inprocess --jobs 20
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")

logger = logging.getLogger("load_test")

DEFAULT_JOBS = 10
DEFAULT_TOKENS = 4
# Short voices keep S3Gen affordable on CPU; the voice path is the same at any length.
DEFAULT_VOICE_SECONDS = 3.0
API_START_TIMEOUT_S = 300
API_JOB_TIMEOUT_S = 1800


def short_library(target: Path, seconds: float) -> Path:
    from optimized_voice_library import OptimizedVoiceLibrary

    demo = OptimizedVoiceLibrary(REPO)
    short = OptimizedVoiceLibrary(target)
    for voice in demo.list_voices():
        audio = demo.get_voice_audio(voice["voice_id"])
        short.save_voice(voice["speaker_name"], audio.samples[: int(seconds * audio.sample_rate)].copy(),
                         audio.sample_rate, gender=voice["gender"])
    return target


def make_jobs(names: list[str], n: int, tokens: int) -> list[dict[str, Any]]:
    return [{"input": {"text": f"Job {i} speaks as {names[i % len(names)]}.", "voice_name": names[i % len(names)],
                       "seed": 1000 + i, "max_new_tokens": tokens}} for i in range(n)]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def run_concurrently(jobs: list[dict], call: Callable[[dict], dict], concurrency: int) -> tuple[list[dict], list[float], float]:
    def timed(job):
        t0 = time.perf_counter()
        result = call(job)
        return result, time.perf_counter() - t0

    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        pairs = list(pool.map(timed, jobs))
    return [p[0] for p in pairs], [p[1] for p in pairs], time.perf_counter() - t0


def check(name: str, jobs: list[dict], results: list[dict], reference: list[dict], latencies: list[float],
          wall: float) -> dict[str, Any]:
    errors = [r["error"] for r in results if "error" in r]
    swaps = sum(1 for job, got, ref in zip(jobs, results, reference)
                if "error" not in got and (got["audio"] != ref["audio"]
                                           or got["parameters"]["voice_name"] != job["input"]["voice_name"]))
    report = {
        "target": name,
        "jobs": len(jobs),
        "errors": len(errors),
        "first_error": errors[0] if errors else None,
        "voice_swaps": swaps,
        "wall_s": round(wall, 2),
        "throughput_jobs_per_s": round(len(jobs) / wall, 3),
        "latency_p50_s": round(statistics.median(latencies), 2),
        "latency_p95_s": round(percentile(latencies, 0.95), 2),
        "latency_max_s": round(max(latencies), 2),
    }
    print(json.dumps(report))
    return report


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def api_call(port: int) -> Callable[[dict], dict]:
    def call(job: dict) -> dict:
        request = urllib.request.Request(f"http://127.0.0.1:{port}/runsync", data=json.dumps(job).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=API_JOB_TIMEOUT_S) as response:
            body = json.loads(response.read())
        return body.get("output") or {"error": body.get("error", f"no output: {body}")}

    return call


def start_api(port: int, env: dict[str, str]) -> subprocess.Popen:
    server = subprocess.Popen(
        [sys.executable, "handler.py", "--rp_serve_api", "--rp_api_host", "127.0.0.1", "--rp_api_port", str(port)],
        cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + API_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError("the API server exited during start-up")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return server
        except OSError:
            time.sleep(1)
    server.terminate()
    raise RuntimeError("the API server did not open its port in time")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=DEFAULT_JOBS)
    parser.add_argument("--concurrency", type=int, default=None, help="default: --jobs")
    parser.add_argument("--tokens", type=int, default=DEFAULT_TOKENS, help="speech tokens per job")
    parser.add_argument("--voice-seconds", type=float, default=DEFAULT_VOICE_SECONDS)
    parser.add_argument("--target", choices=("inprocess", "api", "both"), default="both")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    concurrency = args.concurrency or args.jobs

    workdir = Path(tempfile.mkdtemp(prefix="chatterbox-load-"))
    try:
        os.environ["VOICE_LIBRARY_DIR"] = str(short_library(workdir / "library", args.voice_seconds))
        os.environ["CONDITIONALS_CACHE_DIR"] = str(workdir / "conditionals")
        from chatterbox_worker.settings import reload_settings

        reload_settings()  # the worker reads its settings once; building the library read them already
        import handler
        from optimized_voice_library import OptimizedVoiceLibrary

        names = [v["speaker_name"] for v in OptimizedVoiceLibrary(os.environ["VOICE_LIBRARY_DIR"]).list_voices()]
        jobs = make_jobs(names, args.jobs, args.tokens)
        reference = [handler.handler(job) for job in jobs]  # one at a time
        if any("error" in r for r in reference):
            print(json.dumps({"reference_error": next(r["error"] for r in reference if "error" in r)}))
            return 1
        reports = []
        if args.target in ("inprocess", "both"):
            results, latencies, wall = run_concurrently(jobs, handler.handler, concurrency)
            reports.append(check("inprocess", jobs, results, reference, latencies, wall))
        if args.target in ("api", "both"):
            port = free_port()
            server = start_api(port, dict(os.environ))
            try:
                results, latencies, wall = run_concurrently(jobs, api_call(port), concurrency)
            finally:
                server.terminate()
                server.wait(timeout=30)
            reports.append(check("api", jobs, results, reference, latencies, wall))
        return 0 if all(r["errors"] == 0 and r["voice_swaps"] == 0 for r in reports) else 1
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
