"""Benchmark: legacy file path vs optimized array path vs cached conditionals.

This is a benchmark, not a test: pytest only collects ``tests/``. It loads the real
chatterbox classes (a random-weights checkpoint unless CHATTERBOX_CKPT_DIR names real
weights) and measures, in one process, interleaved, several repetitions of:

- voice preparation for library voices: legacy (array → temp WAV → the library's
  ``prepare_conditionals(path)``), optimized cold (array → conditionals), optimized
  warm (a hit in the in-memory conditionals cache) and disk (a hit in the disk tier from
  a fresh cache, as a restarted worker meets it);
- one whole ``tts`` basic job through each handler, with a fixed speech-token bound;
- files written per job, peak RSS growth per path and, on CUDA, peak GPU memory.

Ratios are legacy/optimized, computed pair by pair (the same repetition, back to back),
and summarised by their median.

    python bench/voice_path.py --quick               # under 2 minutes on 2 CPU cores
    python bench/voice_path.py --device cuda --reps 10
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import socket
import statistics
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
# bench/ holds http.py, which must not shadow the standard library's http package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

logger = logging.getLogger("benchmark")

MB = 1024 * 1024
RSS_SAMPLE_SECONDS = 0.002
QUICK_REPS = 5
QUICK_JOB_REPS = 3
DEFAULT_REPS = 10
DEFAULT_JOB_REPS = 3
# Speech tokens per benchmark job: fixed, so every path generates the same amount.
JOB_TOKENS = 8
QUICK_JOB_TOKENS = 4
# Voice preparation: the temp-WAV file path, the array path, a memory-tier cache hit, and
# a disk-tier hit after a restart.
PREP_PATHS = ("legacy", "optimized", "cached", "disk")
# Quick mode cuts job voices to this length: S3Gen's CPU cost grows with the prompt.
QUICK_JOB_VOICE_SECONDS = 3.0
JOB_TEXT = "The quick brown fox jumps over the lazy dog."


@dataclass
class Row:
    name: str
    path: str  # legacy | optimized | cached
    samples_ms: list[float] = field(default_factory=list)
    peak_rss_mb: list[float] = field(default_factory=list)
    peak_gpu_mb: list[float] = field(default_factory=list)
    files_written: list[int] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "path": self.path,
            "median_ms": statistics.median(self.samples_ms),
            "min_ms": min(self.samples_ms),
            "max_ms": max(self.samples_ms),
            "samples_ms": self.samples_ms,
            "peak_rss_growth_mb": max(self.peak_rss_mb) if self.peak_rss_mb else None,
            "peak_gpu_mb": max(self.peak_gpu_mb) if self.peak_gpu_mb else None,
            "files_written_per_run": statistics.median(self.files_written) if self.files_written else 0,
            "files_written_samples": self.files_written,
        }


class FileWriteCounter:
    """Counts files opened for writing or created, through Python's audit events."""

    WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT

    def __init__(self):
        self.count = 0
        self.active = False
        sys.addaudithook(self._hook)

    def _hook(self, event: str, args: tuple) -> None:
        if not self.active or event != "open":
            return
        path, mode, flags = args
        if isinstance(path, int):
            return
        writes = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (flags or 0) & self.WRITE_FLAGS
        if writes:
            self.count += 1


class PeakRss:
    """Peak resident memory above the level at the start, sampled in a thread."""

    def __init__(self):
        import psutil

        self.process = psutil.Process()

    def run(self, fn: Callable[[], Any]) -> tuple[Any, float]:
        base = self.process.memory_info().rss
        peak = base
        stop = threading.Event()

        def sample():
            nonlocal peak
            while not stop.is_set():
                peak = max(peak, self.process.memory_info().rss)
                stop.wait(RSS_SAMPLE_SECONDS)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            result = fn()
        finally:
            stop.set()
            sampler.join()
        peak = max(peak, self.process.memory_info().rss)
        return result, (peak - base) / MB


class Bench:
    def __init__(self, device: str):
        import torch

        self.torch = torch
        self.device = device
        self.files = FileWriteCounter()
        self.rss = PeakRss()

    def measure(self, row: Row, fn: Callable[[], Any]) -> Any:
        cuda = self.device.startswith("cuda")
        if cuda:
            self.torch.cuda.synchronize()
            self.torch.cuda.reset_peak_memory_stats()
            gpu_base = self.torch.cuda.memory_allocated()
        self.files.count, self.files.active = 0, True
        elapsed = 0.0

        def timed():
            # Timed inside the RSS sampler, so its thread start and join are not counted:
            # a cache hit takes microseconds, less than one sampling interval.
            nonlocal elapsed
            t0 = time.perf_counter()
            result = fn()
            if cuda:
                self.torch.cuda.synchronize()
            elapsed = time.perf_counter() - t0
            return result

        try:
            result, rss_mb = self.rss.run(timed)
        finally:
            self.files.active = False
        row.samples_ms.append(elapsed * 1000)
        row.peak_rss_mb.append(rss_mb)
        row.files_written.append(self.files.count)
        if cuda:
            row.peak_gpu_mb.append((self.torch.cuda.max_memory_allocated() - gpu_base) / MB)
        return result


def pairwise_ratio(legacy: Row, other: Row) -> dict[str, float]:
    ratios = [a / b for a, b in zip(legacy.samples_ms, other.samples_ms) if b > 0]
    return {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios)}


def checkpoint_dir(args) -> Path | None:
    if args.ckpt:
        return Path(args.ckpt)
    if os.environ.get("CHATTERBOX_CKPT_DIR"):
        return Path(os.environ["CHATTERBOX_CKPT_DIR"])
    from chatterbox_worker.testing.random_checkpoint import ensure_checkpoint

    return ensure_checkpoint("standard")


def job_library(tmp: Path, quick: bool):
    """The demo library; in quick mode a copy whose voices are cut short."""
    from optimized_voice_library import OptimizedVoiceLibrary

    demo = OptimizedVoiceLibrary(REPO)
    if not quick:
        return demo
    short = OptimizedVoiceLibrary(tmp)
    for voice in demo.list_voices():
        audio = demo.get_voice_audio(voice["voice_id"])
        short.save_voice(voice["speaker_name"], audio.samples[: int(QUICK_JOB_VOICE_SECONDS * audio.sample_rate)].copy(),
                         audio.sample_rate)
    return short


def measure_voice_prep(bench: Bench, model, library, device: str, reps: int) -> dict[str, Row]:
    """Conditionals for a library voice: the legacy temp file, arrays, the cache, the disk tier."""
    import tempfile

    import handler_legacy
    from chatterbox_worker.conditionals.cache import CacheKey, ConditionalsCache
    from chatterbox_worker.pipeline.speech import conditionals
    from chatterbox_worker.serving.worker import Worker
    from chatterbox_worker.voices.sources import library_voice
    from optimized_chatterbox import ConditionalsCodec

    voice_ids = [v["voice_id"] for v in library.list_voices()]
    cache = ConditionalsCache(ConditionalsCodec(device), disk_dir=None)
    worker = Worker({"standard": model}, library, cache)

    # Warm-up: first calls pay one-off costs (resampler construction, allocator growth).
    warm_prompt = library_voice(library, voice_id=voice_ids[0])
    model.prepare_conditionals_from_array(warm_prompt.samples, warm_prompt.sample_rate)
    handler_legacy.file_conditionals(model, warm_prompt, 0.5, False)

    # The disk tier as a restarted worker meets it: an empty memory tier over a directory
    # that an earlier process filled (the files are in the OS page cache, as on a warm volume).
    disk_dir = tempfile.TemporaryDirectory()
    disk_writer = Worker({"standard": model}, library, ConditionalsCache(ConditionalsCodec(device),
                                                                         disk_dir=Path(disk_dir.name)))

    prep = {p: Row("voice_prep", p) for p in PREP_PATHS}
    for i in range(reps):
        prompt = library_voice(library, voice_id=voice_ids[i % len(voice_ids)])
        bench.measure(prep["legacy"], lambda: handler_legacy.file_conditionals(model, prompt, 0.5, False))
        bench.measure(prep["optimized"], lambda: conditionals(worker, model, prompt, 0.5, use_cache=False))
        conditionals(worker, model, prompt, 0.5, use_cache=True)  # make sure the entry is resident
        assert CacheKey("standard", prompt.content_hash) in cache
        bench.measure(prep["cached"], lambda: conditionals(worker, model, prompt, 0.5, use_cache=True))
        conditionals(disk_writer, model, prompt, 0.5, use_cache=True)
        disk_writer.cache.flush()  # the disk write happens off the job's path
        restarted = Worker({"standard": model}, library, ConditionalsCache(ConditionalsCodec(device),
                                                                           disk_dir=Path(disk_dir.name)))
        _, source = bench.measure(prep["disk"], lambda: conditionals(restarted, model, prompt, 0.5, use_cache=True))
        assert source == "disk", source
    disk_dir.cleanup()
    return prep


def measure_jobs(bench: Bench, model, device: str, args, job_reps: int) -> tuple[dict[str, Row], bool, float]:
    """Whole tts jobs through the legacy and the new handler: rows, same audio, voice seconds."""
    import tempfile

    import handler
    import handler_legacy
    from chatterbox_worker.conditionals.cache import ConditionalsCache
    from chatterbox_worker.serving.worker import Worker
    from optimized_chatterbox import ConditionalsCodec

    with tempfile.TemporaryDirectory() as tmp:
        jobs_library = job_library(Path(tmp), args.quick)
        job_cache = ConditionalsCache(ConditionalsCodec(device), disk_dir=None)
        optimized_worker = Worker({"standard": model}, jobs_library, job_cache)
        legacy_worker = Worker({"standard": model}, jobs_library, cache=None,
                               conditioner=handler_legacy.file_conditionals)
        handler.get_worker = lambda: optimized_worker
        handler_legacy.get_worker = lambda: legacy_worker
        name = jobs_library.list_voices()[0]["speaker_name"]
        job = {"input": {"text": JOB_TEXT, "voice_name": name, "seed": 1, "max_new_tokens": args.tokens}}
        cold = {"input": {**job["input"], "cache": False}}
        handler.handler(job)  # resident in the cache for the "cached" row
        jobs = {p: Row("tts_job", p) for p in ("legacy", "optimized", "cached")}
        job_results: dict[str, Any] = {}
        for _ in range(job_reps):
            job_results["legacy"] = bench.measure(jobs["legacy"], lambda: handler_legacy.handler(job))
            job_results["optimized"] = bench.measure(jobs["optimized"], lambda: handler.handler(cold))
            job_results["cached"] = bench.measure(jobs["cached"], lambda: handler.handler(job))
        for path, result in job_results.items():
            if "error" in result:
                raise RuntimeError(f"{path} job failed: {result['error']}")
        same_audio = job_results["legacy"]["audio"] == job_results["optimized"]["audio"] == job_results["cached"]["audio"]
        return jobs, same_audio, jobs_library.get_voice_audio_by_name(name).duration


def summarize(prep: dict[str, Row], jobs: dict[str, Row], same_audio: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    summary = {
        "voice_prep_cold_ratio": pairwise_ratio(prep["legacy"], prep["optimized"])["median"],
        "voice_prep_warm_ratio": pairwise_ratio(prep["legacy"], prep["cached"])["median"],
        "voice_prep_disk_ratio": pairwise_ratio(prep["legacy"], prep["disk"])["median"],
        "job_ratio": pairwise_ratio(jobs["legacy"], jobs["optimized"])["median"],
        "job_ratio_cached": pairwise_ratio(jobs["legacy"], jobs["cached"])["median"],
        "files_written_legacy": max(jobs["legacy"].files_written),
        "files_written_optimized": max(jobs["optimized"].files_written + jobs["cached"].files_written),
        "same_audio_all_paths": same_audio,
    }
    ratios = {
        "voice_prep": {p: pairwise_ratio(prep["legacy"], prep[p]) for p in PREP_PATHS[1:]},
        "tts_job": {p: pairwise_ratio(jobs["legacy"], jobs[p]) for p in ("optimized", "cached")},
    }
    return summary, ratios


def run(args) -> dict[str, Any]:
    import chatterbox
    import torch

    from optimized_chatterbox import create_optimized_tts
    from optimized_voice_library import OptimizedVoiceLibrary

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    ckpt = checkpoint_dir(args)
    t0 = time.perf_counter()
    model = create_optimized_tts(device, ckpt)
    load_s = time.perf_counter() - t0
    bench = Bench(device)
    reps = args.reps or (QUICK_REPS if args.quick else DEFAULT_REPS)
    job_reps = args.job_reps or (QUICK_JOB_REPS if args.quick else DEFAULT_JOB_REPS)

    prep = measure_voice_prep(bench, model, OptimizedVoiceLibrary(REPO), device, reps)
    jobs, same_audio, job_voice_seconds = measure_jobs(bench, model, device, args, job_reps)
    summary, ratios = summarize(prep, jobs, same_audio)
    return {
        "host": socket.gethostname(),
        "device": device,
        "device_name": torch.cuda.get_device_name(0) if device.startswith("cuda") else platform.processor() or platform.machine(),
        "cpu_threads": torch.get_num_threads(),
        "versions": {"torch": torch.__version__, "chatterbox": getattr(chatterbox, "__version__", None)
                     or _dist_version("chatterbox-tts"), "python": platform.python_version()},
        "checkpoint": str(ckpt) if ckpt else "hub",
        "model_load_s": round(load_s, 2),
        "settings": {"reps": reps, "job_reps": job_reps, "job_tokens": args.tokens, "quick": args.quick,
                     "job_voice_seconds": round(job_voice_seconds, 2), "job_text": JOB_TEXT},
        "rows": [r.summary() for r in (*prep.values(), *jobs.values())],
        "ratios": ratios,
        "summary": summary,
    }


def _dist_version(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


def markdown(report: dict[str, Any]) -> str:
    lines = [
        f"Device: {report['device']} ({report['device_name']}), torch {report['versions']['torch']}, "
        f"chatterbox {report['versions']['chatterbox']}, {report['cpu_threads']} threads; "
        f"{report['settings']['reps']} voice reps, {report['settings']['job_reps']} job reps, "
        f"{report['settings']['job_tokens']} speech tokens per job, job voice "
        f"{report['settings']['job_voice_seconds']} s.",
        "",
        "| stage | path | median ms | min ms | max ms | legacy/path (median of pairs) | peak RSS growth MB | peak GPU MB | files written |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in report["rows"]:
        ratio = report["ratios"][row["name"]].get(row["path"], {}).get("median")
        gpu = "n/a" if row["peak_gpu_mb"] is None else f"{row['peak_gpu_mb']:.1f}"
        lines.append(
            f"| {row['name']} | {row['path']} | {row['median_ms']:.2f} | {row['min_ms']:.2f} | "
            f"{row['max_ms']:.2f} | {'1.00 (baseline)' if ratio is None else f'{ratio:.2f}x'} | "
            f"{row['peak_rss_growth_mb']:.1f} | {gpu} | {row['files_written_per_run']} |")
    s = report["summary"]
    lines += ["", f"Summary: voice prep cold {s['voice_prep_cold_ratio']:.2f}x, warm {s['voice_prep_warm_ratio']:.0f}x, "
              f"from disk after a restart {s['voice_prep_disk_ratio']:.0f}x; "
              f"whole job {s['job_ratio']:.3f}x (cached {s['job_ratio_cached']:.3f}x); files per job: legacy "
              f"{s['files_written_legacy']}, optimized {s['files_written_optimized']}; identical audio on all "
              f"paths: {s['same_audio_all_paths']}."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few repetitions and short job voices (< 2 min on CPU)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--reps", type=int, default=None, help="voice-preparation repetitions per path")
    parser.add_argument("--job-reps", type=int, default=None, help="whole-job repetitions per path")
    parser.add_argument("--tokens", type=int, default=None,
                        help=f"speech tokens per job (default {JOB_TOKENS}, quick {QUICK_JOB_TOKENS})")
    parser.add_argument("--ckpt", default=None, help="checkpoint directory (default: CHATTERBOX_CKPT_DIR or the random one)")
    parser.add_argument("--out", default=None, help="JSON output path (default: bench/results/<host>-<device>.json)")
    args = parser.parse_args(argv)
    if args.tokens is None:
        args.tokens = QUICK_JOB_TOKENS if args.quick else JOB_TOKENS
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    sys.path.insert(0, str(REPO))

    report = run(args)
    out = Path(args.out) if args.out else REPO / "bench" / "results" / f"{report['host']}-{report['device']}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(markdown(report))
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
