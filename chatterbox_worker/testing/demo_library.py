"""The demo voice library shipped at the root of the source tree, and writable copies of it.

Jobs may save, replace and delete voices, so a test or a soak run serves a copy, never the
shipped files themselves.
"""
from __future__ import annotations

import shutil
from pathlib import Path

# The source tree's root: the demo library's catalog and voices sit there.
REPO_ROOT = Path(__file__).resolve().parents[2]
DEMO_LIBRARY_DIR = REPO_ROOT
LIBRARY_FILES = ("voice_catalog.json", "name_mapping.json")
LIBRARY_VOICE_DIR = "voice_embeddings"


def copy_demo_library(target: Path, source: Path = DEMO_LIBRARY_DIR) -> Path:
    """Copy the demo library's catalog files and voices into ``target`` (created if missing,
    which may already exist empty); returns ``target``."""
    target = Path(target)
    target.mkdir(parents=True, exist_ok=True)
    for name in LIBRARY_FILES:
        if (source / name).exists():
            shutil.copy(source / name, target)
    shutil.copytree(source / LIBRARY_VOICE_DIR, target / LIBRARY_VOICE_DIR)
    return target
