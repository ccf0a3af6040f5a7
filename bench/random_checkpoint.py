"""The checkpoint a benchmark loads: CHATTERBOX_CKPT_DIR, else the cached random-weights one."""
from __future__ import annotations

import os
from pathlib import Path


def checkpoint_dir(variant: str = "standard") -> Path:
    configured = os.environ.get("CHATTERBOX_CKPT_DIR") if variant == "standard" else None
    if configured:
        return Path(configured)
    from chatterbox_worker.testing.random_checkpoint import ensure_checkpoint

    return ensure_checkpoint(variant)
