"""Plot the reference voice and both paths' output for one seed, with their difference.

    python scripts/plot_fidelity.py [--out docs/fidelity.png] [--tokens 40]

The same library voice and seed go through the legacy handler (temp WAV → the library's
prepare_conditionals(path)) and the optimized one (array → conditionals). The demo voices
sit on the 16-bit grid, so the legacy temp WAV is lossless and the difference is zero.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")

logger = logging.getLogger("plot_fidelity")
VOICE = "Amy"
TEXT = "The quick brown fox jumps over the lazy dog."
SEED = 7


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(REPO / "docs" / "fidelity.png"))
    parser.add_argument("--tokens", type=int, default=40)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    import handler
    import handler_legacy
    from chatterbox_worker.audio.codec import decode_audio_base64
    from chatterbox_worker.conditionals.cache import ConditionalsCache
    from chatterbox_worker.serving.worker import Worker
    from chatterbox_worker.testing.random_checkpoint import ensure_checkpoint
    from optimized_chatterbox import ConditionalsCodec, create_optimized_tts
    from optimized_voice_library import OptimizedVoiceLibrary

    ckpt = os.environ.get("CHATTERBOX_CKPT_DIR") or ensure_checkpoint("standard")
    model = create_optimized_tts("cpu", ckpt)
    library = OptimizedVoiceLibrary(REPO)
    handler.get_worker = lambda: Worker({"standard": model}, library,
                                        ConditionalsCache(ConditionalsCodec("cpu"), disk_dir=None))
    handler_legacy.get_worker = lambda: Worker({"standard": model}, library, cache=None,
                                               conditioner=handler_legacy.file_conditionals)
    job = {"input": {"text": TEXT, "voice_name": VOICE, "seed": SEED, "max_new_tokens": args.tokens}}
    optimized = decode_audio_base64(handler.handler(job)["audio"], "audio").samples
    legacy = decode_audio_base64(handler_legacy.handler(job)["audio"], "audio").samples
    reference = library.get_voice_audio_by_name(VOICE)
    difference = optimized - legacy
    logger.info("max |optimized - legacy| = %g over %d samples", np.abs(difference).max(), difference.size)

    fig, axes = plt.subplots(4, 1, figsize=(10, 8), constrained_layout=True)
    series = [
        (reference.samples, reference.sample_rate, f"reference voice '{VOICE}' (library array)"),
        (legacy, 24000, "legacy path output (temp WAV → prepare_conditionals(path))"),
        (optimized, 24000, "optimized path output (array → conditionals)"),
        (difference, 24000, f"difference (max |Δ| = {np.abs(difference).max():.3g})"),
    ]
    for ax, (samples, sr, title) in zip(axes, series):
        ax.plot(np.arange(samples.size) / sr, samples, linewidth=0.5)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("seconds")
    fig.suptitle(f"Same voice, seed {SEED}, {args.tokens} speech tokens (random-weights checkpoint: noise)")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=80)
    logger.info("wrote %s", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
