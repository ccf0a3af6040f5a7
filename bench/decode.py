"""Benchmark: T3 decode in the library's loop vs the decode engine, batched jobs, end to end.

This is a benchmark, not a test: pytest only collects ``tests/``. It loads the standard
model (a random-weights checkpoint unless CHATTERBOX_CKPT_DIR names real weights) and
measures, in one process:

- ``library_ms_per_token`` / ``engine_ms_per_token``: one seeded job of JOB_TOKENS tokens,
  batch 1, one run each, prefill included (wall time / tokens); the two draw the same
  tokens, which is checked;
- ``tokens_per_s``: aggregate decode throughput with 1, 4, 8 (and on CUDA 16) concurrent
  jobs of CONCURRENT_JOB_TOKENS tokens, counted while all of them are in flight
  (``tokens_per_s_wall``: the whole run, prefills and the tail included), and
  ``aggregate_speedup_4`` / ``_8`` over one job;
- ``tiny_ms_per_token_*``: a deliberately tiny T3 (2 layers, width 256, the real
  vocabularies) where framework overhead dominates, as on a GPU; marginal ms per token
  (the difference of a long and a short run), median of TINY_REPS;
- ``s3gen_batch``: S3Gen seconds per window when 1, 2 or 4 windows share a call;
- ``e2e_jobs_per_min`` at concurrency 1 and 4 (``e2e_long_jobs_per_min``: jobs of
  E2E_LONG_TOKENS tokens): whole ``tts`` jobs through
  ``handler.run_job`` with an injected worker, from 1 or 4 threads;
- ``stream_first_audio``: when a streamed job's first and last windows leave, and the share
  of the stream's time before the first (``first_share``);
- ``peak_memory_mb``: peak RSS on CPU, peak allocated GPU memory on CUDA.

    python bench/decode.py --out bench/results/vm-cpu-decode.json          # ~5 min, 2 CPU cores
    python bench/decode.py --device cuda --out bench/results/h100-decode.json
"""
from __future__ import annotations

import logging
import os
import platform
import resource
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
# bench/ holds http.py, which must not shadow the standard library's http package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(REPO))
os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Room for the largest batch measured (the worker's own default follows its concurrency).
os.environ.setdefault("ENGINE_MAX_SLOTS", "16")

from bench import report  # noqa: E402 (after the path set-up above)
from bench.random_checkpoint import checkpoint_dir  # noqa: E402

logger = logging.getLogger("benchmark")

MB = 1024 * 1024
JOB_TOKENS = 16
# Concurrent jobs run longer, so that all of them decode together for a good while after the
# last one's prefill (jobs arrive one prefill apart).
CONCURRENT_JOB_TOKENS = 48
CONCURRENCY = (1, 4, 8)
CUDA_CONCURRENCY = (1, 4, 8, 16)
TINY_LAYERS, TINY_WIDTH = 2, 256
TINY_SHORT, TINY_LONG = 2, 102
TINY_REPS = 3
S3GEN_BATCHES = (1, 2, 4)  # windows per S3Gen call; every size decodes the same 4 windows
E2E_JOBS = 4
E2E_CONCURRENCY = (1, 4)
# Speech tokens per end-to-end job: JOB_TOKENS (0.64 s of audio), and a short sentence's worth
# (2.56 s). S3Gen's cost is mostly the voice prompt's, the same for any length, while T3's
# grows with the tokens, and only T3 gains from batching: the longer job shows the share.
E2E_LONG_TOKENS = 64
# A stream of four windows (random weights run to the cap), for the first-audio share.
STREAM_TOKENS, STREAM_WINDOW_TOKENS = 32, 8
VOICE_SECONDS = 3.0
TEXTS = ("The quick brown fox jumps over the lazy dog.", "A second sentence, somewhat longer than the first one.",
         "Short.", "Numbers like three hundred and twelve are spelled out.", "Every job says something else.",
         "Batched decoding shares one forward pass.", "Seeds keep each job reproducible.", "The last one.",
         ) * 2
SAMPLING = dict(temperature=0.8, cfg_weight=0.5, repetition_penalty=1.2, min_p=0.05, top_p=1.0)


def sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def library_run(model, job, n: int, seed: int, device: str) -> tuple[float, list[int]]:
    import torch

    with torch.inference_mode():
        torch.manual_seed(seed)  # the library's loop draws from the global RNG (CUDA's too)
        sync(device)
        t0 = time.perf_counter()
        out = model.t3.inference(t3_cond=job.t3_cond, text_tokens=job.text_tokens, max_new_tokens=n, **SAMPLING)[0]
        sync(device)
        elapsed = time.perf_counter() - t0
    tokens = out.tolist()
    stop = model.t3.hp.stop_speech_token
    return elapsed, tokens[: tokens.index(stop)] if stop in tokens else tokens


def concurrent_throughput(model, jobs) -> dict[str, float]:
    """All jobs submitted at once. ``tokens_per_s``: aggregate tokens/s while every job is in
    flight (from the last job's first token to the first job's last); ``tokens_per_s_wall``:
    every token over the whole run, prefills and the tail where fewer jobs are left included."""
    stamps: list[list[float]] = [[] for _ in jobs]

    def run(i, job):
        for _ in model.speech_tokens(job):
            stamps[i].append(time.perf_counter())

    threads = [threading.Thread(target=run, args=(i, job)) for i, job in enumerate(jobs)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    all_in = max(s[0] for s in stamps)  # the last job's first token: every prefill is done
    first_out = min(s[-1] for s in stamps)  # the first job's last token
    inside = sum(1 for s in stamps for x in s if all_in < x <= first_out)
    total = sum(len(s) for s in stamps)
    return {"tokens_per_s": inside / (first_out - all_in) if first_out > all_in else float("nan"),
            "tokens_per_s_wall": total / (max(s[-1] for s in stamps) - t0), "tokens": total,
            "steady_tokens": inside}


def tiny_ms_per_token(device: str, threads: int | None = None) -> dict[str, float]:
    """Marginal ms/token of the tiny T3, library loop vs engine; ``threads``: intra-op threads
    for both (restored after), the engine's thread included as it is started here."""
    import torch

    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        return _tiny_ms_per_token(device)
    finally:
        torch.set_num_threads(before)


def _tiny_ms_per_token(device: str) -> dict[str, float]:
    import torch

    from chatterbox_worker.engine import EngineConfig, SamplingParams, T3Engine
    from chatterbox_worker.testing.tiny_t3 import build_tiny_t3, tiny_conditionals, tiny_text_tokens

    t3 = build_tiny_t3("standard", layers=TINY_LAYERS, width=TINY_WIDTH).to(device)
    text = tiny_text_tokens(t3).to(device)
    engine = T3Engine(t3, "standard", EngineConfig(max_slots=2, max_context_tokens=512))

    def cond():
        return tiny_conditionals(t3).to(device=device)

    def library(n):
        with torch.inference_mode():
            torch.manual_seed(0)
            sync(device)
            t0 = time.perf_counter()
            t3.inference(t3_cond=cond(), text_tokens=torch.cat([text, text]), max_new_tokens=n, **SAMPLING)
            sync(device)
            return time.perf_counter() - t0

    def ours(n):
        params = SamplingParams(max_new_tokens=n, seed=0, **SAMPLING)
        t0 = time.perf_counter()
        list(engine.submit(cond(), text, params, flush_every=None))
        return time.perf_counter() - t0

    out = {}
    for name, fn in (("library", library), ("engine", ours)):
        fn(TINY_SHORT)  # warm-up
        marginal = [(fn(TINY_LONG) - fn(TINY_SHORT)) / (TINY_LONG - TINY_SHORT) * 1000 for _ in range(TINY_REPS)]
        out[name] = statistics.median(marginal)
    # The arithmetic floor: the step's matrix products alone (same shapes, no framework).
    import torch.nn.functional as F

    x = torch.randn(2, 1, TINY_WIDTH, device=device)
    with torch.inference_mode():
        for _ in range(5):
            _floor_step(engine, t3, x, F)
        sync(device)
        t0 = time.perf_counter()
        for _ in range(200):
            _floor_step(engine, t3, x, F)
        sync(device)
    out["matmul_floor"] = (time.perf_counter() - t0) / 200 * 1000
    engine.stop()
    return out


def _floor_step(engine, t3, x, F):
    for layer in engine.backbone.layers:
        F.linear(x, layer.qkv)
        F.linear(x, layer.o)
        gate_up = F.linear(x, layer.gate_up)
        F.linear(gate_up[..., : layer.down.size(1)], layer.down)
    t3.speech_head(x[:, -1])


def s3gen_batch(model, gen: dict, device: str) -> dict[str, Any]:
    """S3Gen seconds per window of JOB_TOKENS tokens when 1, 2 or 4 windows share a call
    (``_decode_windows``, the lane's call: each row with its own noise)."""
    import torch

    from chatterbox_worker.s3gen.lane import Window

    g = torch.Generator().manual_seed(0)
    tokens = [torch.randint(0, 6561, (JOB_TOKENS,), generator=g) for _ in range(max(S3GEN_BATCHES))]
    windows = [Window(tokens=t, gen=gen, seed=i, exact=False) for i, t in enumerate(tokens)]
    model._decode_windows(windows[:1])  # warm-up
    per_window = {}
    for size in S3GEN_BATCHES:
        sync(device)
        t0 = time.perf_counter()
        for start in range(0, len(windows), size):
            model._decode_windows(windows[start:start + size])
        sync(device)
        per_window[str(size)] = (time.perf_counter() - t0) / len(windows)
    return {"tokens_per_window": JOB_TOKENS, "seconds_per_window": per_window,
            "speedup": {k: per_window["1"] / v for k, v in per_window.items()}}


def e2e(model, device: str, tmp: Path, tokens: int) -> dict[str, float]:
    """Whole tts jobs through handler.run_job with an injected worker, from 1 or 4 threads."""
    import handler
    from chatterbox_worker.conditionals.cache import ConditionalsCache
    from chatterbox_worker.serving.worker import Worker
    from optimized_chatterbox import ConditionalsCodec
    from optimized_voice_library import OptimizedVoiceLibrary

    demo = OptimizedVoiceLibrary(REPO)
    library = OptimizedVoiceLibrary(tmp / "library")
    voice = demo.list_voices()[0]
    audio = demo.get_voice_audio(voice["voice_id"])
    library.save_voice("Bench", audio.samples[: int(VOICE_SECONDS * audio.sample_rate)].copy(), audio.sample_rate)
    worker = Worker({"standard": model}, library, ConditionalsCache(ConditionalsCodec(device), disk_dir=None))

    def job(i):
        # Without a seed, as most clients send them: the worker draws one, and the job's S3Gen
        # windows may share calls (a job that names its seed is decoded alone). Random weights
        # run every job to its token cap, so every run decodes as many tokens.
        return {"text": TEXTS[i], "voice_name": "Bench", "max_new_tokens": tokens}

    warm = handler.run_job(job(0), lambda: worker)  # conditionals into the cache; one-off costs
    if "error" in warm:
        raise RuntimeError(f"the warm-up job failed: {warm['error']}")
    out = {}
    for concurrency in E2E_CONCURRENCY:
        errors: list[str] = []

        def run_slice(start):
            for i in range(start, E2E_JOBS, concurrency):
                result = handler.run_job(job(i), lambda: worker)
                if "error" in result:
                    errors.append(result["error"])

        threads = [threading.Thread(target=run_slice, args=(s,)) for s in range(concurrency)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - t0
        if errors:
            raise RuntimeError(f"e2e jobs failed: {errors[:2]}")
        out[str(concurrency)] = E2E_JOBS / elapsed * 60
    return out


def peak_memory_mb(device: str) -> float:
    import torch

    if device == "cuda":
        return torch.cuda.max_memory_allocated() / MB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def throughput_figures(model, jobs: Callable[[int], list], concurrency) -> dict[str, Any]:
    """Tokens per second with each number ``c`` of concurrent jobs (fresh ones: ``jobs(c)``)."""
    logger.info("concurrent jobs: %s", concurrency)
    throughput = {}
    for c in concurrency:
        throughput[str(c)] = concurrent_throughput(model, jobs(c))
        logger.info("  %d jobs: %.2f tokens/s", c, throughput[str(c)]["tokens_per_s"])
    result: dict[str, Any] = {"tokens_per_s": {c: t["tokens_per_s"] for c, t in throughput.items()},
                              "tokens_per_s_wall": {c: t["tokens_per_s_wall"] for c, t in throughput.items()}}
    one = result["tokens_per_s"]["1"]
    result["aggregate_speedup_4"] = result["tokens_per_s"]["4"] / one
    result["aggregate_speedup_8"] = result["tokens_per_s"]["8"] / one
    result["aggregate_speedup_4_wall"] = result["tokens_per_s_wall"]["4"] / result["tokens_per_s_wall"]["1"]
    result["aggregate_speedup_8_wall"] = result["tokens_per_s_wall"]["8"] / result["tokens_per_s_wall"]["1"]
    return result


def tiny_figures(device: str) -> dict[str, Any]:
    """Milliseconds per token of the library's loop and the engine on a tiny T3."""
    logger.info("tiny T3 (%d layers, width %d)", TINY_LAYERS, TINY_WIDTH)
    tiny = tiny_ms_per_token(device)
    result: dict[str, Any] = {
        "tiny_ms_per_token_library": tiny["library"],
        "tiny_ms_per_token_engine": tiny["engine"],
        "tiny_matmul_floor_ms": tiny["matmul_floor"],
        "tiny_overhead_ratio": (tiny["engine"] - tiny["matmul_floor"]) / (tiny["library"] - tiny["matmul_floor"]),
    }
    if device == "cpu":
        # The same with one intra-op thread for both loops: the framework's own cost per token,
        # without OpenMP waking its workers for every op (several microseconds to tens of
        # microseconds here, depending on which threads hold worker pools), which a GPU lacks.
        one = tiny_ms_per_token(device, threads=1)
        result["tiny_one_thread"] = {"library_ms_per_token": one["library"], "engine_ms_per_token": one["engine"],
                                     "ratio": one["engine"] / one["library"]}
    return result


def stream_first_audio(model, conds) -> dict[str, float]:
    """When a stream's first and last windows leave (seconds from the call), and the share.

    Without look-ahead the first window leaves after one window of tokens and one S3Gen
    decode; a stream that waited for the second window put it at about half the stream's time.
    """
    options = model.options(exaggeration=0.5, max_new_tokens=STREAM_TOKENS, seed=1, **SAMPLING)
    started, arrivals = time.perf_counter(), []
    for wav in model.stream(TEXTS[1], conditionals=conds, options=options, chunk_size=STREAM_WINDOW_TOKENS):
        if wav.size:
            arrivals.append(time.perf_counter() - started)
    return {"first_s": arrivals[0], "last_s": arrivals[-1], "windows": len(arrivals),
            "first_share": arrivals[0] / arrivals[-1]}


def batch1_figures(model, job, device: str) -> dict[str, Any]:
    """One job alone, the library's loop vs the engine: ms per token and whether the tokens match."""
    first = job(0, seed=7)
    library_run(model, first, 2, 7, device)  # warm-up of the library path
    list(model.speech_tokens(job(0, seed=7, n=2), flush_every=None))  # and of the engine
    lib_s, lib_tokens = library_run(model, first, JOB_TOKENS, 7, device)
    t0 = time.perf_counter()
    eng_tokens = list(model.speech_tokens(first, flush_every=None))
    eng_s = time.perf_counter() - t0
    return {"library_ms_per_token": lib_s / max(len(lib_tokens), 1) * 1000,
            "engine_ms_per_token": eng_s / max(len(eng_tokens), 1) * 1000,
            "batch1_same_tokens": lib_tokens == eng_tokens}


def run(args) -> dict[str, Any]:
    import torch

    from optimized_chatterbox import create_optimized_tts
    from optimized_voice_library import OptimizedVoiceLibrary

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    concurrency = CUDA_CONCURRENCY if device == "cuda" else CONCURRENCY
    started = time.perf_counter()
    model = create_optimized_tts(device, checkpoint_dir())
    model.warm_up()  # the KV cache and, on a GPU, the CUDA graphs
    demo = OptimizedVoiceLibrary(REPO)
    audio = demo.get_voice_audio(demo.list_voices()[0]["voice_id"])
    conds = model.prepare_conditionals_from_array(audio.samples[: int(VOICE_SECONDS * audio.sample_rate)],
                                                  audio.sample_rate)

    def job(i, seed=None, n=JOB_TOKENS):
        return model.decode_job(TEXTS[i], conds, model.options(exaggeration=0.5, max_new_tokens=n,
                                                               seed=seed if seed is not None else i, **SAMPLING))

    result: dict[str, Any] = {"device": device, "torch": torch.__version__, "threads": torch.get_num_threads(),
                              "platform": platform.platform(), "job_tokens": JOB_TOKENS,
                              "engine": model.engine_stats().as_dict()}
    if device == "cuda":
        result["gpu"] = torch.cuda.get_device_name()

    logger.info("batch 1: library vs engine, %d tokens", JOB_TOKENS)
    result.update(batch1_figures(model, job, device))
    result.update(throughput_figures(model, lambda c: [job(i, n=CONCURRENT_JOB_TOKENS) for i in range(c)],
                                     concurrency))
    result.update(tiny_figures(device))

    if not args.skip_s3gen_batch:
        logger.info("S3Gen: windows sharing a call")
        result["s3gen_batch"] = s3gen_batch(model, conds.gen, device)

    logger.info("streaming: first window of %d tokens", STREAM_WINDOW_TOKENS)
    result["stream_first_audio"] = stream_first_audio(model, conds)

    logger.info("end to end through handler.run_job")
    with tempfile.TemporaryDirectory() as tmp:
        result["e2e_jobs_per_min"] = e2e(model, device, Path(tmp), JOB_TOKENS)
        result["e2e_long_jobs_per_min"] = e2e(model, device, Path(tmp) / "long", E2E_LONG_TOKENS)
    result.update(e2e_speedup_4=result["e2e_jobs_per_min"]["4"] / result["e2e_jobs_per_min"]["1"],
                  e2e_long_tokens=E2E_LONG_TOKENS,
                  e2e_long_speedup_4=result["e2e_long_jobs_per_min"]["4"] / result["e2e_long_jobs_per_min"]["1"])
    result["engine"] = model.engine_stats().as_dict()
    result["e2e_jobs_name_a_seed"] = False
    result["peak_memory_mb"] = peak_memory_mb(device)
    result["load_average"] = os.getloadavg()
    result["wall_s"] = time.perf_counter() - started
    return result


def table(r: dict[str, Any]) -> str:
    rows = [
        ("device", r["device"], ""),
        ("library ms/token (batch 1)", f"{r['library_ms_per_token']:.1f}", "goal: engine <= library"),
        ("engine ms/token (batch 1)", f"{r['engine_ms_per_token']:.1f}",
         "same tokens" if r["batch1_same_tokens"] else "TOKENS DIFFER"),
    ]
    for c, v in r["tokens_per_s"].items():
        rows.append((f"tokens/s, {c} jobs (decode; wall)", f"{v:.2f}; {r['tokens_per_s_wall'][c]:.2f}", ""))
    rows += [
        ("aggregate speedup 4 jobs", f"{r['aggregate_speedup_4']:.2f}x", "goal >= 2.5x"),
        ("aggregate speedup 8 jobs", f"{r['aggregate_speedup_8']:.2f}x", "goal >= 4x"),
        ("tiny ms/token library", f"{r['tiny_ms_per_token_library']:.2f}", ""),
        ("tiny ms/token engine", f"{r['tiny_ms_per_token_engine']:.2f}",
         f"ratio {r['tiny_ms_per_token_engine'] / r['tiny_ms_per_token_library']:.2f} (goal <= 0.33)"),
        ("tiny matmul floor ms", f"{r['tiny_matmul_floor_ms']:.2f}",
         f"overhead ratio {r['tiny_overhead_ratio']:.2f}"),
    ]
    if "tiny_one_thread" in r:
        one = r["tiny_one_thread"]
        rows.append(("tiny ms/token, 1 thread: library / engine",
                     f"{one['library_ms_per_token']:.2f} / {one['engine_ms_per_token']:.2f}", f"ratio {one['ratio']:.2f}"))
    if "s3gen_batch" in r:
        s = r["s3gen_batch"]
        rows.append(("S3Gen s/window, 1 / 2 / 4 windows a call",
                     " / ".join(f"{v:.2f}" for v in s["seconds_per_window"].values()),
                     "speed-up " + " / ".join(f"{v:.2f}x" for v in s["speedup"].values())))
    for c, v in r["e2e_jobs_per_min"].items():
        rows.append((f"e2e jobs/min, {r['job_tokens']} tokens, concurrency {c}", f"{v:.2f}", ""))
    rows.append((f"e2e speedup at 4, {r['job_tokens']} tokens", f"{r['e2e_speedup_4']:.2f}x", "goal >= 1.5x"))
    for c, v in r["e2e_long_jobs_per_min"].items():
        rows.append((f"e2e jobs/min, {r['e2e_long_tokens']} tokens, concurrency {c}", f"{v:.2f}", ""))
    rows += [(f"e2e speedup at 4, {r['e2e_long_tokens']} tokens", f"{r['e2e_long_speedup_4']:.2f}x", "goal >= 1.5x"),
             ("stream: first / last window s", f"{r['stream_first_audio']['first_s']:.2f} / "
              f"{r['stream_first_audio']['last_s']:.2f}", f"share {r['stream_first_audio']['first_share']:.0%}"),
             ("peak memory MB", f"{r['peak_memory_mb']:.0f}", ""), ("wall s", f"{r['wall_s']:.0f}", "")]
    width = max(len(a) for a, _, _ in rows)
    return "\n".join(f"{a:<{width}}  {b:>16}  {c}" for a, b, c in rows)


def main(argv: list[str] | None = None) -> int:
    cli = report.parser(__doc__)
    cli.add_argument("--skip-s3gen-batch", action="store_true")
    args = cli.parse_args(argv)
    report.start_logging()
    result = run(args)
    report.finish(result, table(result), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
