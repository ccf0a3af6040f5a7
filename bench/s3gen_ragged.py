"""Benchmark: S3Gen windows of unequal length, each alone vs one ragged call.

This is a benchmark, not a test: pytest only collects ``tests/``. It loads the standard
model (a random-weights checkpoint unless CHATTERBOX_CKPT_DIR names real weights) and
decodes the same unseeded windows two ways, REPS times each, alternating:

- ``alone``: each window in its own S3Gen call (what the lane does with S3GEN_RAGGED_BATCH off
  when no two waiting windows have equal lengths);
- ``ragged``: all of them in one call (``s3gen.ragged``: each window's encoder and vocoder
  alone, the flow decoder batched over right-padded rows).

Two sets of windows: ``chunks``, the basic-mode chunks of a job (one voice, WINDOW_TOKENS
lengths), and ``voices``, the same lengths with every other window in a second voice whose
prompt is shorter. It reports medians, the ratio ``alone / ragged`` per set, the largest
difference between a window's audio alone and in the ragged call, peak memory, and
``parts``: one window's encoder, flow decoder and vocoder seconds (what batching can reach).

    python bench/s3gen_ragged.py --out bench/results/vm-cpu-s3gen-ragged.json      # ~6 min, 2 CPU cores
    python bench/s3gen_ragged.py --device cuda --out bench/results/gpu-s3gen-ragged.json
"""
from __future__ import annotations

import logging
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
# bench/ holds http.py, which must not shadow the standard library's http package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(REPO))
os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bench import report  # noqa: E402
from bench.random_checkpoint import checkpoint_dir  # noqa: E402 (after the path set-up above)
from bench.report import aligned, environment, load_average, peak_memory_mb  # noqa: E402

logger = logging.getLogger("benchmark")

# Speech tokens of four basic-mode chunks after the control tokens are cut: unequal, as a
# job's sentences are.
WINDOW_TOKENS = (22, 26, 30, 34)
CUDA_WINDOW_TOKENS = (110, 130, 150, 170, 95, 125, 140, 160)
VOICE_SECONDS, OTHER_VOICE_SECONDS = 3.0, 2.0
REPS = 3


def sync(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def voice_gen(model, name: str, seconds: float) -> dict:
    from optimized_voice_library import OptimizedVoiceLibrary

    audio = OptimizedVoiceLibrary(REPO).get_voice_audio_by_name(name)
    samples = audio.samples[: int(seconds * audio.sample_rate)].copy()
    return model.prepare_conditionals_from_array(samples, audio.sample_rate).gen


def windows_for(lengths, gens: list[dict]) -> list:
    import torch

    from chatterbox_worker.s3gen.lane import Window

    g = torch.Generator().manual_seed(0)
    return [Window(tokens=torch.randint(0, 6561, (n,), generator=g), gen=gens[i % len(gens)], seed=i, exact=False)
            for i, n in enumerate(lengths)]


def timed(fn, device: str) -> tuple[float, Any]:
    sync(device)
    start = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - start, out


def compare(model, windows, device: str) -> dict[str, Any]:
    """Each window alone vs all in one ragged call, REPS times alternating; medians and the audio gap."""
    alone_s, ragged_s = [], []
    for _ in range(REPS):
        t, alone = timed(lambda: [model._decode_windows([w])[0] for w in windows], device)
        alone_s.append(t)
        t, ragged = timed(lambda: model._decode_windows(windows), device)
        ragged_s.append(t)
    diff = max(float(abs(a - b).max()) for a, b in zip(alone, ragged))
    peak = max(float(abs(a).max()) for a in alone)
    alone_med, ragged_med = statistics.median(alone_s), statistics.median(ragged_s)
    return {"window_tokens": [int(w.tokens.numel()) for w in windows], "alone_s": alone_s, "ragged_s": ragged_s,
            "alone_median_s": alone_med, "ragged_median_s": ragged_med, "speedup": alone_med / ragged_med,
            "max_abs_diff": diff, "audio_peak": peak}


def parts(model, window, device: str) -> dict[str, float]:
    """Seconds of one window's S3Gen parts alone: the encoder (its solve only recorded), the
    flow decoder's solve, and the vocoder."""
    import torch

    from chatterbox_worker.s3gen import noise, ragged

    solves: list = []
    rows = noise.generators(window.seed, model.device)
    tokens = window.tokens[None].to(model.device)
    with torch.inference_mode(), noise.drawing_from(rows):
        with ragged.deferring(solves):
            encoder_s, placeholder = timed(
                lambda: model.s3gen.flow_inference(tokens, ref_dict=dict(window.gen), finalize=True), device)
        decoder_s, (row,) = timed(lambda: ragged.solve_together(model.s3gen.flow.decoder, solves), device)
        mel = row[:, :, row.size(-1) - placeholder.size(-1):]
        vocoder_s, _ = timed(lambda: model.s3gen.hift_inference(mel, None), device)
    total = encoder_s + decoder_s + vocoder_s
    return {"window_tokens": int(window.tokens.numel()), "encoder_s": encoder_s, "decoder_s": decoder_s,
            "vocoder_s": vocoder_s, "decoder_share": decoder_s / total}


def run(args) -> dict[str, Any]:
    import torch

    from optimized_chatterbox import create_optimized_tts

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    started = time.perf_counter()
    model = create_optimized_tts(device, checkpoint_dir())
    gen, other = voice_gen(model, "Amy", VOICE_SECONDS), voice_gen(model, "Bella", OTHER_VOICE_SECONDS)
    lengths = CUDA_WINDOW_TOKENS if device == "cuda" else WINDOW_TOKENS
    model._decode_windows(windows_for(lengths[:2], [gen]))  # warm-up
    result: dict[str, Any] = {**environment(device), "reps": REPS}
    result["parts"] = parts(model, windows_for(lengths[1:2], [gen])[0], device)
    for name, gens in (("chunks", [gen]), ("voices", [gen, other])):
        logger.info("%s: %d windows alone, then in one ragged call", name, len(lengths))
        result[name] = compare(model, windows_for(lengths, gens), device)
    result["peak_memory_mb"] = peak_memory_mb(device)
    result["load_average"] = load_average()
    result["wall_s"] = time.perf_counter() - started
    return result


def table(r: dict[str, Any]) -> str:
    rows = [("device", r["device"], f"{r['threads']} threads")]
    p = r["parts"]
    rows.append((f"one {p['window_tokens']}-token window: encoder / decoder / vocoder s",
                 f"{p['encoder_s']:.2f} / {p['decoder_s']:.2f} / {p['vocoder_s']:.2f}",
                 f"decoder {p['decoder_share']:.0%}"))
    for name in ("chunks", "voices"):
        s = r[name]
        rows += [(f"{name}: tokens per window", ",".join(map(str, s["window_tokens"])), ""),
                 (f"{name}: alone / ragged, median s", f"{s['alone_median_s']:.2f} / {s['ragged_median_s']:.2f}",
                  f"speed-up {s['speedup']:.2f}x"),
                 (f"{name}: max |alone - ragged|", f"{s['max_abs_diff']:.1e}", f"audio peak {s['audio_peak']:.3f}")]
    rows += [("peak memory MB", f"{r['peak_memory_mb']:.0f}", ""), ("wall s", f"{r['wall_s']:.0f}", "")]
    return aligned(rows, width=18)


def main(argv: list[str] | None = None) -> int:
    cli = report.parser(__doc__)
    args = cli.parse_args(argv)
    report.start_logging()
    result = run(args)
    report.finish(result, table(result), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
