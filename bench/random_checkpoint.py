"""The checkpoint a benchmark loads: CHATTERBOX_CKPT_DIR, else the cached random-weights one."""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def checkpoint_dir(variant: str = "standard") -> Path:
    configured = os.environ.get("CHATTERBOX_CKPT_DIR") if variant == "standard" else None
    if configured:
        return Path(configured)
    spec = importlib.util.spec_from_file_location("make_random_checkpoint", REPO / "scripts" / "make_random_checkpoint.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.ensure_checkpoint(variant)
