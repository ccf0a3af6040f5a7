"""Benchmark: T3 decode in the library's loop vs the decode engine, batched jobs, end to end.

This is a benchmark, not a test: pytest only collects ``tests/``. It loads the standard
model (a random-weights checkpoint unless CHATTERBOX_CKPT_DIR names real weights) and
measures, in one process:

- ``library_ms_per_token`` / ``engine_ms_per_token``: one seeded job of JOB_TOKENS tokens,
  batch 1, one run each, prefill included (wall time / tokens); the two draw the same
  tokens, which is checked;
- ``tokens_per_s``: aggregate decode throughput with 1, 4, 8 (and on CUDA 16) concurrent
  jobs, counted once every job is past its prefill (``tokens_per_s_wall`` includes the
  prefills), and ``aggregate_speedup_4`` / ``_8`` over one job;
- ``tiny_ms_per_token_*``: a deliberately tiny T3 (2 layers, width 256, the real
  vocabularies) where framework overhead dominates, as on a GPU; marginal ms per token
  (the difference of a long and a short run), median of TINY_REPS;
- ``s3gen_batch``: two windows decoded in one S3Gen call vs one after the other;
- ``e2e_jobs_per_min`` at concurrency 1 and 4: whole ``tts`` jobs through
  ``handler.run_job`` with an injected worker, from 1 or 4 threads;
- ``peak_memory_mb``: peak RSS on CPU, peak allocated GPU memory on CUDA.

    python bench/decode.py --out bench/results/vm-cpu-decode.json          # ~5 min, 2 CPU cores
    python bench/decode.py --device cuda --out bench/results/h100-decode.json
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import resource
import statistics
import sys
import tempfile
import threading
import time
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

from bench.random_checkpoint import checkpoint_dir  # noqa: E402 (after the path set-up above)

logger = logging.getLogger("benchmark")

MB = 1024 * 1024
JOB_TOKENS = 16
CONCURRENCY = (1, 4, 8)
CUDA_CONCURRENCY = (1, 4, 8, 16)
TINY_LAYERS, TINY_WIDTH = 2, 256
TINY_SHORT, TINY_LONG = 2, 102
TINY_REPS = 3
E2E_JOBS = 4
E2E_CONCURRENCY = (1, 4)
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

    from optimized_chatterbox import seed_everything

    with torch.inference_mode():
        seed_everything(seed)
        sync(device)
        t0 = time.perf_counter()
        out = model.t3.inference(t3_cond=job.t3_cond, text_tokens=job.text_tokens, max_new_tokens=n, **SAMPLING)[0]
        sync(device)
        elapsed = time.perf_counter() - t0
    tokens = out.tolist()
    stop = model.t3.hp.stop_speech_token
    return elapsed, tokens[: tokens.index(stop)] if stop in tokens else tokens


def concurrent_throughput(model, jobs) -> dict[str, float]:
    """All jobs submitted at once; tokens/s over the steps where every job is decoding."""
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
    end = max(s[-1] for s in stamps)
    all_in = max(s[0] for s in stamps)  # the last job's first token: every prefill is done
    after = sum(1 for s in stamps for x in s if x > all_in)
    total = sum(len(s) for s in stamps)
    return {"tokens_per_s": after / (end - all_in) if end > all_in else float("nan"),
            "tokens_per_s_wall": total / (end - t0), "tokens": total}


def tiny_ms_per_token(device: str) -> dict[str, float]:
    import torch

    from t3_engine import EngineConfig, SamplingParams, T3Engine, build_tiny_t3, tiny_conditionals, tiny_text_tokens

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
    return out


def _floor_step(engine, t3, x, F):
    for layer in engine.backbone.layers:
        F.linear(x, layer.qkv)
        F.linear(x, layer.o)
        gate_up = F.linear(x, layer.gate_up)
        F.linear(gate_up[..., : layer.down.size(1)], layer.down)
    t3.speech_head(x[:, -1])


def s3gen_batch(model, gen: dict, device: str) -> dict[str, Any]:
    """Two windows of JOB_TOKENS tokens: one batched S3Gen call vs two calls."""
    import torch

    g = torch.Generator().manual_seed(0)
    windows = torch.randint(0, 6561, (2, JOB_TOKENS), generator=g).to(device)
    with torch.inference_mode():
        model.s3gen.inference(speech_tokens=windows[:1], ref_dict=dict(gen))  # warm-up
        sync(device)
        t0 = time.perf_counter()
        for w in windows:
            model.s3gen.inference(speech_tokens=w[None], ref_dict=dict(gen))
        sync(device)
        sequential = time.perf_counter() - t0
        try:
            t0 = time.perf_counter()
            model.s3gen.inference(speech_tokens=windows, ref_dict=dict(gen))
            sync(device)
            batched = time.perf_counter() - t0
            error = None
        except Exception as exc:  # the library's S3Gen may refuse a batch
            batched, error = None, f"{type(exc).__name__}: {exc}"
    return {"windows": 2, "tokens_per_window": JOB_TOKENS, "sequential_s": sequential, "batched_s": batched,
            "batched_error": error, "batching_faster": bool(batched is not None and batched < sequential)}


def e2e(model, device: str, tmp: Path) -> dict[str, float]:
    """Whole tts jobs through handler.run_job with an injected worker, from 1 or 4 threads."""
    import handler
    from conditionals_cache import ConditionalsCache
    from optimized_chatterbox import ConditionalsCodec
    from optimized_voice_library import OptimizedVoiceLibrary
    from worker import Worker

    demo = OptimizedVoiceLibrary(REPO)
    library = OptimizedVoiceLibrary(tmp / "library")
    voice = demo.list_voices()[0]
    audio = demo.get_voice_audio_direct(voice["voice_id"])
    library.save_voice("Bench", audio.samples[: int(VOICE_SECONDS * audio.sample_rate)].copy(), audio.sample_rate)
    worker = Worker({"standard": model}, library, ConditionalsCache(ConditionalsCodec(device), disk_dir=None))

    def job(i):
        return {"text": TEXTS[i], "voice_name": "Bench", "max_new_tokens": JOB_TOKENS, "seed": 100 + i}

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
    audio = demo.get_voice_audio_direct(demo.list_voices()[0]["voice_id"])
    conds = model.prepare_conditionals_from_array(audio.samples[: int(VOICE_SECONDS * audio.sample_rate)],
                                                  audio.sample_rate)

    def job(i, seed=None, n=JOB_TOKENS):
        return model.speech_job(TEXTS[i], conditionals=conds, exaggeration=0.5, max_new_tokens=n,
                                seed=seed if seed is not None else i, **SAMPLING)

    result: dict[str, Any] = {"device": device, "torch": torch.__version__, "threads": torch.get_num_threads(),
                              "platform": platform.platform(), "job_tokens": JOB_TOKENS,
                              "engine": model.engine_stats()}
    if device == "cuda":
        result["gpu"] = torch.cuda.get_device_name()

    logger.info("batch 1: library vs engine, %d tokens", JOB_TOKENS)
    first = job(0, seed=7)
    library_run(model, first, 2, 7, device)  # warm-up of the library path
    list(model.speech_tokens(job(0, seed=7, n=2), flush_every=None))  # and of the engine
    lib_s, lib_tokens = library_run(model, first, JOB_TOKENS, 7, device)
    t0 = time.perf_counter()
    eng_tokens = list(model.speech_tokens(first, flush_every=None))
    eng_s = time.perf_counter() - t0
    result["library_ms_per_token"] = lib_s / max(len(lib_tokens), 1) * 1000
    result["engine_ms_per_token"] = eng_s / max(len(eng_tokens), 1) * 1000
    result["batch1_same_tokens"] = lib_tokens == eng_tokens

    logger.info("concurrent jobs: %s", concurrency)
    throughput = {}
    for c in concurrency:
        throughput[str(c)] = concurrent_throughput(model, [job(i) for i in range(c)])
        logger.info("  %d jobs: %.2f tokens/s", c, throughput[str(c)]["tokens_per_s"])
    result["tokens_per_s"] = {c: t["tokens_per_s"] for c, t in throughput.items()}
    result["tokens_per_s_wall"] = {c: t["tokens_per_s_wall"] for c, t in throughput.items()}
    one = result["tokens_per_s"]["1"]
    result["aggregate_speedup_4"] = result["tokens_per_s"]["4"] / one
    result["aggregate_speedup_8"] = result["tokens_per_s"]["8"] / one
    result["aggregate_speedup_4_wall"] = result["tokens_per_s_wall"]["4"] / result["tokens_per_s_wall"]["1"]
    result["aggregate_speedup_8_wall"] = result["tokens_per_s_wall"]["8"] / result["tokens_per_s_wall"]["1"]

    logger.info("tiny T3 (%d layers, width %d)", TINY_LAYERS, TINY_WIDTH)
    tiny = tiny_ms_per_token(device)
    result["tiny_ms_per_token_library"] = tiny["library"]
    result["tiny_ms_per_token_engine"] = tiny["engine"]
    result["tiny_matmul_floor_ms"] = tiny["matmul_floor"]
    result["tiny_overhead_ratio"] = (tiny["engine"] - tiny["matmul_floor"]) / (tiny["library"] - tiny["matmul_floor"])

    if not args.skip_s3gen_batch:
        logger.info("S3Gen: batched windows vs one after the other")
        result["s3gen_batch"] = s3gen_batch(model, conds.gen, device)

    logger.info("end to end through handler.run_job")
    with tempfile.TemporaryDirectory() as tmp:
        result["e2e_jobs_per_min"] = e2e(model, device, Path(tmp))
    result["e2e_speedup_4"] = result["e2e_jobs_per_min"]["4"] / result["e2e_jobs_per_min"]["1"]
    result["engine"] = model.engine_stats()
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
    if "s3gen_batch" in r:
        s = r["s3gen_batch"]
        rows.append(("S3Gen 2 windows: sequential / batched s", f"{s['sequential_s']:.2f} / "
                     f"{s['batched_s'] if s['batched_s'] is None else round(s['batched_s'], 2)}",
                     "batch faster" if s["batching_faster"] else "batching not faster"))
    for c, v in r["e2e_jobs_per_min"].items():
        rows.append((f"e2e jobs/min, concurrency {c}", f"{v:.2f}", ""))
    rows += [("e2e speedup at 4", f"{r['e2e_speedup_4']:.2f}x", "goal >= 1.5x"),
             ("peak memory MB", f"{r['peak_memory_mb']:.0f}", ""), ("wall s", f"{r['wall_s']:.0f}", "")]
    width = max(len(a) for a, _, _ in rows)
    return "\n".join(f"{a:<{width}}  {b:>16}  {c}" for a, b, c in rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default=None)
    parser.add_argument("--out", type=Path, default=None, help="write the JSON here")
    parser.add_argument("--skip-s3gen-batch", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    result = run(args)
    print(table(result))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2, default=str) + "\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
