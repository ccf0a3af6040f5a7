"""Where built checkpoints live: the cache directory, one entry per variant and key, built
once under a lock and reused; and a build into a directory of the caller's choosing."""
from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from chatterbox_worker.settings import Settings, child_environment
from chatterbox_worker.testing.random_checkpoint.builders import build_variant
from chatterbox_worker.testing.random_checkpoint.key import cache_key
from chatterbox_worker.testing.random_checkpoint.layout import COMPLETE_MARKER, check_variant, expected_files

logger = logging.getLogger(__name__)

CACHE_ENV = Settings.env_name("chatterbox_ckpt_cache")
DEFAULT_CACHE_DIR = Settings.model_fields["chatterbox_ckpt_cache"].default

# The child interpreter runs this package's command line; its parent folder (the source
# tree's root) goes on its PYTHONPATH, so the call works from any working directory.
CLI_MODULE = "chatterbox_worker.testing.random_checkpoint"
SOURCE_ROOT = Path(__file__).resolve().parents[3]


def cache_root() -> Path:
    """CHATTERBOX_CKPT_CACHE, read when called (tests point it elsewhere between cases)."""
    return Path(Settings().chatterbox_ckpt_cache).expanduser()


def cached_checkpoint_dir(variant: str = "standard", seed: int = 0) -> Path:
    check_variant(variant)
    return cache_root() / f"{variant}-{cache_key(seed)}"


def is_complete(ckpt_dir: Path, variant: str) -> bool:
    ckpt_dir = Path(ckpt_dir)
    return all((ckpt_dir / rel).is_file() for rel in expected_files(variant))


def ensure_checkpoint(variant: str = "standard", seed: int = 0, *, force: bool = False,
                      in_subprocess: bool = True) -> Path:
    """Return the cached checkpoint directory for ``variant``, building it first if needed.

    The build runs in a child interpreter by default, so that its transient memory (about
    7 GB for standard) is returned to the system before the caller loads the model.
    Concurrent callers are serialised by a lock file; only one builds.
    """
    check_variant(variant)
    target = cached_checkpoint_dir(variant, seed)
    if not force and is_complete(target, variant):
        return target
    if not in_subprocess:
        return build_cached(variant, seed, force=force)
    cmd = [sys.executable, "-m", CLI_MODULE, "--cached", "--variant", variant,
           "--seed", str(int(seed))] + (["--force"] if force else [])
    env = child_environment()
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(SOURCE_ROOT), env.get("PYTHONPATH")) if p)
    result = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"building the {variant} checkpoint failed (exit {result.returncode}): "
                           f"{' '.join(cmd)}")
    if not is_complete(target, variant):
        raise RuntimeError(f"the {variant} checkpoint build finished but {target} is incomplete")
    return target


@contextlib.contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    with open(lock_path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def build_cached(variant: str, seed: int, *, force: bool = False, prune: bool = False) -> Path:
    """Build ``variant`` into its cache entry (or reuse a complete one) and return it."""
    root = cache_root()
    root.mkdir(parents=True, exist_ok=True)
    name = f"{variant}-{cache_key(seed)}"
    final = root / name
    with _locked(root / f".{name}.lock"):
        if not force and is_complete(final, variant):
            logger.info("reusing %s", final)
        else:
            _build_and_swap(variant, seed, root, name)
    _report_other_entries(root, variant, final, prune)
    return final


def _build_and_swap(variant: str, seed: int, root: Path, name: str) -> None:
    """Build into a temporary sibling, then rename it over the entry; the caller holds the lock."""
    final = root / name
    # Left by a killed build or swap; safe to remove since every builder holds the lock.
    for stale in [*root.glob(f".{name}.tmp-*"), *root.glob(f".{name}.old-*")]:
        logger.info("removing stale partial build %s", stale)
        shutil.rmtree(stale, ignore_errors=True)
    tmp = root / f".{name}.tmp-{os.getpid()}"
    tmp.mkdir()
    try:
        build_variant(variant, tmp, seed)
        old = None
        if final.exists():
            old = root / f".{name}.old-{os.getpid()}"
            os.rename(final, old)
        os.rename(tmp, final)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _report_other_entries(root: Path, variant: str, keep: Path, prune: bool) -> None:
    """Cache entries of ``variant`` under other keys (older versions of the builder)."""
    others = sorted(p for p in root.glob(f"{variant}-*") if p.is_dir() and p != keep)
    for other in others:
        if prune:
            logger.info("pruning %s", other)
            shutil.rmtree(other, ignore_errors=True)
        else:
            logger.info("other cached %s checkpoint (remove it, or use --prune): %s", variant, other)


def build_into(out: Path, variant: str, seed: int = 0, *, force: bool = False) -> Path:
    """Build ``variant`` into ``out`` (created if needed). A non-empty ``out`` needs ``force``;
    only the entries this build writes are replaced there."""
    out = Path(out).expanduser().absolute()
    if out.exists() and any(out.iterdir()) and not force:
        raise FileExistsError(f"{out} is not empty (use --force to overwrite its checkpoint files)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        build_variant(variant, tmp, seed)
        out.mkdir(exist_ok=True)
        (out / COMPLETE_MARKER).unlink(missing_ok=True)
        entries = sorted(p.name for p in tmp.iterdir() if p.name != COMPLETE_MARKER)
        for entry in entries + [COMPLETE_MARKER]:
            dest = out / entry
            if dest.is_dir() and not dest.is_symlink():
                shutil.rmtree(dest)
            elif dest.exists() or dest.is_symlink():
                dest.unlink()
            os.rename(tmp / entry, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out

