"""Build a random-weights Chatterbox checkpoint that the library's own ``from_local`` loads.

    python scripts/make_random_checkpoint.py --out DIR [--variant V] [--seed 0] [--force]
    python scripts/make_random_checkpoint.py --cached [--variant V] [--seed 0] [--force] [--prune]

The builder is ``chatterbox_worker.testing.random_checkpoint`` (its docstring describes the
files and the cache); this script is its command line, runnable from a source checkout.
``--cached`` prints the checkpoint directory as the last line of stdout.
"""
from __future__ import annotations

import sys
from pathlib import Path

# Run as a file, the script's own folder is on sys.path, not the source tree it lives in.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from chatterbox_worker.testing.random_checkpoint.cli import main

if __name__ == "__main__":
    sys.exit(main())
