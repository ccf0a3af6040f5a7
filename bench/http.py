"""Benchmark: HTTP mode on the real classes, through a real server and a real client.

This is a benchmark, not a test: pytest only collects ``tests/``. It loads the standard
model (a random-weights checkpoint unless CHATTERBOX_CKPT_DIR names real weights), serves
``server.create_app`` with uvicorn on 127.0.0.1, and measures with httpx:

- a streamed ``POST /v1/audio/speech`` (mp3): time to the first audio byte (the first
  non-empty body piece, not the headers) against the time to the last byte, next to the
  same request made whole (``stream: false``);
- requests per minute at concurrency 1 and 4 (whole clips, the same fixed token count).

Every request has the same fixed speech-token bound (random weights rarely stop on their
own) and a short library voice, because S3Gen's CPU cost grows with the prompt.

    python bench/http.py --out bench/results/vm-cpu-http.json     # about 5 minutes on 2 CPU cores
"""
from __future__ import annotations

import os
import sys

# This file is named like the standard library's ``http`` package: run as a script, its
# folder is first on sys.path and would shadow it for every library that imports http.
BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != BENCH_DIR]

import argparse  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from concurrent.futures import ThreadPoolExecutor  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(REPO))

from bench.random_checkpoint import checkpoint_dir  # noqa: E402 (after the path set-up above)

logger = logging.getLogger("benchmark")

LOOPBACK = "127.0.0.1"
TEXT = "The quick brown fox jumps over the lazy dog."
# Speech tokens per request: three windows of the default stream layout (12, then 25).
TOKENS = 36
FIRST_CHUNK_TOKENS = 12
VOICE_SECONDS = 3.0
STREAM_REPS = 2
CONCURRENCY_LEVELS = (1, 4)
REQUESTS_PER_LEVEL = 4
REQUEST_TIMEOUT_S = 600.0


def short_library(target: Path, seconds: float) -> str:
    """A one-voice library cut from the first shipped voice; returns the voice's name."""
    from optimized_voice_library import OptimizedVoiceLibrary

    demo = OptimizedVoiceLibrary(REPO)
    voice = demo.list_voices()[0]
    audio = demo.get_voice_audio(voice["voice_id"])
    OptimizedVoiceLibrary(target).save_voice(voice["speaker_name"], audio.samples[: int(seconds * audio.sample_rate)].copy(),
                                             audio.sample_rate)
    return voice["speaker_name"]


def build_worker(ckpt: Path, library_dir: Path, device: str):
    from chatterbox_worker.conditionals.cache import ConditionalsCache
    from chatterbox_worker.serving.worker import Worker
    from optimized_chatterbox import ConditionalsCodec, create_optimized_tts
    from optimized_voice_library import OptimizedVoiceLibrary

    started = time.perf_counter()
    model = create_optimized_tts(device, ckpt)
    load_s = time.perf_counter() - started
    cache = ConditionalsCache(ConditionalsCodec(device), disk_dir=None)
    return Worker({"standard": model}, OptimizedVoiceLibrary(library_dir), cache), load_s


class Server:
    """uvicorn serving the app on a free loopback port, in a thread."""

    def __init__(self, app):
        import socket

        import uvicorn

        with socket.socket() as sock:
            sock.bind((LOOPBACK, 0))
            self.port = sock.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(app, host=LOOPBACK, port=self.port, log_level="warning",
                                                    access_log=False))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        while not self.server.started:
            time.sleep(0.05)
        return f"http://{LOOPBACK}:{self.port}"

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


def first_chunk_wired() -> bool:
    import inspect

    from chatterbox_worker.pipeline.speech import speak_stream

    return "first_chunk_size" in inspect.signature(speak_stream).parameters


def speech_body(voice: str, **extra: Any) -> dict[str, Any]:
    return {"model": "tts-1", "input": TEXT, "voice": voice, "response_format": "mp3", "seed": 1,
            "max_new_tokens": TOKENS, **extra}


def streamed(client, url: str, voice: str) -> dict[str, float]:
    started = time.perf_counter()
    first, size = None, 0
    with client.stream("POST", f"{url}/v1/audio/speech", json=speech_body(voice)) as response:
        response.raise_for_status()
        headers_s = time.perf_counter() - started
        for piece in response.iter_bytes():
            if piece and first is None:
                first = time.perf_counter() - started
            size += len(piece)
    return {"headers_s": round(headers_s, 3), "first_audio_byte_s": round(first, 3),
            "total_s": round(time.perf_counter() - started, 3), "bytes": size}


def whole(client, url: str, voice: str) -> float:
    started = time.perf_counter()
    response = client.post(f"{url}/v1/audio/speech", json=speech_body(voice, stream=False))
    response.raise_for_status()
    return time.perf_counter() - started


def throughput(client, url: str, voice: str, concurrency: int, n: int) -> dict[str, Any]:
    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        latencies = list(pool.map(lambda _: whole(client, url, voice), range(n)))
    elapsed = time.perf_counter() - started
    return {"concurrency": concurrency, "requests": n, "elapsed_s": round(elapsed, 2),
            "requests_per_minute": round(n / elapsed * 60, 2),
            "latency_median_s": round(statistics.median(latencies), 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--requests", type=int, default=REQUESTS_PER_LEVEL, help="requests per concurrency level")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    os.environ.setdefault("STREAM_FIRST_CHUNK_TOKENS", str(FIRST_CHUNK_TOKENS))

    import httpx
    import torch

    import server
    from chatterbox_worker.settings import get_settings

    ckpt = checkpoint_dir()
    with tempfile.TemporaryDirectory() as tmp:
        voice = short_library(Path(tmp), VOICE_SECONDS)
        worker, load_s = build_worker(ckpt, Path(tmp), args.device)
        logger.info("model loaded in %.1f s", load_s)
        settings = get_settings()
        with Server(server.create_app(lambda: worker)) as url, httpx.Client(timeout=REQUEST_TIMEOUT_S) as client:
            while client.get(f"{url}/ping").status_code != 200:
                time.sleep(0.1)
            warm_s = whole(client, url, voice)  # conditionals, engine start-up
            logger.info("warm-up request: %.1f s", warm_s)
            streams = [streamed(client, url, voice) for _ in range(STREAM_REPS)]
            logger.info("streamed: %s", streams)
            wholes = [round(whole(client, url, voice), 3) for _ in range(STREAM_REPS)]
            levels = []
            for concurrency in CONCURRENCY_LEVELS:
                levels.append(throughput(client, url, voice, concurrency, args.requests))
                logger.info("concurrency %d: %s", concurrency, levels[-1])
    result = {
        "host": platform.node(), "device": args.device, "cpu_threads": torch.get_num_threads(),
        "versions": {"python": platform.python_version(), "torch": torch.__version__},
        "checkpoint": str(ckpt), "model_load_s": round(load_s, 2), "warm_up_request_s": round(warm_s, 2),
        "settings": {"text": TEXT, "max_new_tokens": TOKENS, "voice_seconds": VOICE_SECONDS, "format": "mp3",
                     "stream_first_chunk_tokens": settings.stream_first_chunk_tokens,
                     "stream_chunk_tokens": settings.stream_chunk_tokens,
                     # Without a separate first window in the pipeline, every window has the first one's length.
                     "pipeline_takes_first_chunk_size": first_chunk_wired()},
        "streamed": streams,
        "whole_total_s": wholes,
        "throughput": levels,
        "summary": {
            "first_audio_byte_s": round(statistics.median(s["first_audio_byte_s"] for s in streams), 3),
            "streamed_total_s": round(statistics.median(s["total_s"] for s in streams), 3),
            "whole_total_s": round(statistics.median(wholes), 3),
            **{f"requests_per_minute_c{lvl['concurrency']}": lvl["requests_per_minute"] for lvl in levels},
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["summary"], indent=2))


if __name__ == "__main__":
    main()
