"""Soak test: hundreds of mixed jobs through ``handler.handler`` in one process, watching for leaks.

Every operation runs (tts in all three modes with library voices and uploaded audio,
voice_cloning, upload_voice, the listing and search operations, voice_conversion and
voice_transfer in both modes), with about a fifth of the jobs malformed on purpose. The
worker serves a temporary copy of the demo library, with a temporary conditionals cache
and ``tempfile.tempdir`` pointed at a fresh, empty directory.

It reports resident memory at the start, after warm-up and at the end, open file
descriptors, files left in the temp directory and job counts by outcome, and exits
non-zero when descriptors grow past a small slack, a temp file is left behind, a job
fails in a way it should not (an internal error, a good job rejected, a bad job served),
or an exception escapes the handler.

    python scripts/soak.py                        # 300 jobs, stub model (no torch), ~10 s
    python scripts/soak.py --jobs 2000 --seed 7 --json soak.json
    python scripts/soak.py --real --jobs 20       # the real model via bootstrap.load_worker (slow)

The run itself is ``chatterbox_worker.testing.soak`` (its jobs: ``chatterbox_worker.testing.jobs``);
tests/unit/test_soak.py runs a short one with the stub model in the default test run.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

# Run as a file, the script's own folder is on sys.path, not the source tree it lives in.
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")

from chatterbox_worker.testing.soak import (  # noqa: E402 (after the path set-up)
    ALL_OUTCOMES,
    DEFAULT_JOBS,
    DEFAULT_SEED,
    SoakConfig,
    soak,
)
from chatterbox_worker.testing.stub_worker import stub_worker  # noqa: E402

logger = logging.getLogger("soak")

QUIET_LOGGERS = ("chatterbox_worker", "optimized_voice_library")


def real_worker(library_dir: Path, cache_dir: Path):
    """The deployed worker (torch, chatterbox weights), pointed at the temporary library and cache.

    ``load_worker`` finds both through the environment; soak() restores it afterwards.
    """
    from chatterbox_worker.serving.bootstrap import load_worker
    from chatterbox_worker.settings import reload_settings

    os.environ["VOICE_LIBRARY_DIR"] = str(library_dir)
    os.environ["CONDITIONALS_CACHE_DIR"] = str(cache_dir)
    reload_settings()  # the worker reads its settings once; the soak sets them late
    return load_worker()



def markdown_table(figures: dict[str, Any]) -> str:
    rows = [
        ("Jobs", figures["jobs"]),
        ("Seed", figures["seed"]),
        ("Model", figures["model"]),
        ("Wall time (s)", figures["wall_s"]),
        ("RSS at start (MiB)", figures["rss_start_mib"]),
        (f"RSS after warm-up, {figures['warmup_jobs']} jobs (MiB)", figures["rss_warmup_mib"]),
        ("RSS at end (MiB)", figures["rss_end_mib"]),
        ("RSS growth, warm-up to end (MiB)", figures["rss_growth_mib"]),
        ("Open fds at start", figures["fds_start"]),
        ("Open fds at end", figures["fds_end"]),
        ("Files left in temp dir", figures["temp_files_left"]),
        ("Stray .tmp- files in library/cache", figures["stray_temp_files"]),
    ]
    rows += [(f"Outcome: {name}", figures["outcomes"].get(name, 0)) for name in ALL_OUTCOMES]
    rows.append(("Result", "PASS" if figures["passed"] else "FAIL: " + "; ".join(figures["failures"])))
    width = max(len(str(name)) for name, _ in rows)
    lines = [f"| {'Metric':<{width}} | Value |", f"|{'-' * (width + 2)}|-------|"]
    lines += [f"| {name:<{width}} | {value} |" for name, value in rows]
    return "\n".join(lines)



def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=DEFAULT_JOBS, help=f"jobs to run (default {DEFAULT_JOBS})")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="seed of the job mix")
    parser.add_argument("--json", type=Path, default=None, metavar="PATH", help="write the figures here")
    parser.add_argument("--real", action="store_true",
                        help="load the real model with bootstrap.load_worker (torch, weights; slow)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary library and cache")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="keep the worker's INFO logs (every rejected job, every save)")
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error("--jobs must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not args.verbose:
        # The worker logs each rejected job and each saved voice at INFO; hundreds of those
        # lines would bury the soak's own figures.
        for name in QUIET_LOGGERS:
            logging.getLogger(name).setLevel(logging.WARNING)
    config = SoakConfig(jobs=args.jobs, seed=args.seed, keep=args.keep, model="real" if args.real else "stub")
    try:
        figures = soak(config, real_worker if args.real else stub_worker)
    except Exception:
        logger.exception("the soak run itself failed")
        return 2
    for kind, counts in figures["by_kind"].items():
        logger.info("%-34s %s", kind, ", ".join(f"{k}={v}" for k, v in sorted(counts.items())))
    for failure in figures["failures"]:
        logger.error("FAIL: %s", failure)
    if args.json is not None:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
        logger.info("figures written to %s", args.json)
    print(markdown_table(figures))
    return 0 if figures["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())

