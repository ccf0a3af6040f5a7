"""The command line of the checkpoint builder (``scripts/make_random_checkpoint.py`` and
``python -m chatterbox_worker.testing.random_checkpoint``): logs go to stderr, and the
checkpoint directories are the last lines of stdout."""
from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from chatterbox_worker.settings import set_library_env_defaults
from chatterbox_worker.testing.random_checkpoint.cache import (
    CACHE_ENV,
    DEFAULT_CACHE_DIR,
    build_cached,
    build_into,
)
from chatterbox_worker.testing.random_checkpoint.layout import VARIANTS
from chatterbox_worker.testing.random_checkpoint.resources import human, peak_rss_bytes, release_memory

logger = logging.getLogger("make_random_checkpoint")

DESCRIPTION = "Build a random-weights Chatterbox checkpoint that the library's own ``from_local`` loads."
USAGE_EPILOG = """\
    make_random_checkpoint.py --out DIR [--variant V] [--seed 0] [--force]
    make_random_checkpoint.py --cached [--variant V] [--seed 0] [--force] [--prune]

V is standard (default), multilingual, turbo or all. With --out and all each variant goes
to its own sub-directory (DIR/standard ...). --cached builds into
${CHATTERBOX_CKPT_CACHE:-~/.cache/chatterbox-worker/checkpoints}/<V>-<key>, reuses a
completed build, and prints the directory as the last line of stdout (for all: one line
per variant)."""


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=DESCRIPTION, epilog=USAGE_EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--out", type=Path, help="build into this directory")
    where.add_argument("--cached", action="store_true",
                       help=f"build into (or reuse) the cache under ${CACHE_ENV} "
                            f"(default {DEFAULT_CACHE_DIR}); prints the directory last")
    parser.add_argument("--variant", choices=VARIANTS + ("all",), default="standard")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--force", action="store_true",
                        help="rebuild even if complete / overwrite files in a non-empty --out")
    parser.add_argument("--prune", action="store_true",
                        help="with --cached: delete cached builds of the variant under other keys")
    return parser


def build(args: argparse.Namespace) -> list[Path]:
    """Build (or reuse) every variant the arguments name; returns their directories."""
    variants = VARIANTS if args.variant == "all" else (args.variant,)
    paths = []
    for variant in variants:
        if args.cached:
            paths.append(build_cached(variant, args.seed, force=args.force, prune=args.prune))
        else:
            out = args.out / variant if args.variant == "all" else args.out
            paths.append(build_into(out, variant, args.seed, force=args.force))
        release_memory()
    return paths


def main(argv: list[str] | None = None) -> int:
    arg_parser = parser()
    args = arg_parser.parse_args(argv)
    if args.prune and not args.cached:
        arg_parser.error("--prune needs --cached")

    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)s: %(message)s")
    set_library_env_defaults()

    started = time.perf_counter()
    try:
        paths = build(args)
    except FileExistsError as exc:
        arg_parser.error(str(exc))
    logger.info("done in %.1f s (peak RSS %s)", time.perf_counter() - started, human(peak_rss_bytes()))
    for path in paths:
        print(path, flush=True)
    return 0
