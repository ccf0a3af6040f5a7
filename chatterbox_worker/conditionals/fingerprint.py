"""A fingerprint of a loaded checkpoint: conditionals computed by other weights are never reused.

The conditionals cache keys its disk tier by model version, and a model version is the
chatterbox-tts release plus a digest of the checkpoint's files. A digest of the
safetensors headers alone would not do: a fine-tuned checkpoint has the very same tensor
names, shapes and offsets as the one it came from, so only the tensor *values* differ.
The digest therefore covers every byte of every file the model reads.

Hashing a 3 GB checkpoint costs a few seconds at start-up, so each file's digest is
memoised by (size, mtime_ns, ctime_ns, inode): in process, and optionally in a small JSON
sidecar that a later start (another worker on the same volume, too) reads. ctime is part
of the key because no tool can set it (``cp -p`` and ``rsync -a`` copy mtime, not ctime);
the inode catches a file replaced by rename. A file changed within the last
:data:`RACY_WINDOW_SECONDS` is hashed but not memoised: timestamps are only as fine as
the filesystem's clock tick, so two writes in one tick would otherwise look unchanged.
A missing, unreadable or malformed sidecar is ignored: the digests are simply recomputed.
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import os
import threading
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

from chatterbox_worker.storage.atomic_files import replacing

logger = logging.getLogger(__name__)

# What the three model classes read: weights (safetensors, and .pt for the multilingual
# voice encoder and S3Gen), tokenizers and vocabularies (.json, .txt, .model) and the
# built-in voice (conds.pt). Anything else that sits beside them (README.md,
# .gitattributes in a hub snapshot) changes no output. Including a file the variant does
# not read only costs one recomputation of the conditionals when it changes; leaving out
# one it reads would serve stale conditionals, so the list errs on the wide side.
FINGERPRINTED_SUFFIXES = frozenset({".safetensors", ".pt", ".json", ".txt", ".model"})
CHATTERBOX_DISTRIBUTION = "chatterbox-tts"
UNKNOWN_LIBRARY_VERSION = "unknown"
# A model version shows this many hex digits of the checkpoint digest: 64 bits tell
# checkpoints apart, and the version becomes a directory name.
VERSION_DIGEST_CHARS = 16
# Files changed this recently are not memoised (see the module docstring).
RACY_WINDOW_SECONDS = 2.0
HASH_CHUNK_BYTES = 8 * 1024 * 1024
SIDECAR_FORMAT = 1


@dataclass(frozen=True)
class FileDigest:
    """A file's content digest and the identity of the file version it was computed from."""

    size: int
    mtime_ns: int
    ctime_ns: int
    inode: int
    sha256: str

    def matches(self, st: os.stat_result) -> bool:
        return (self.size, self.mtime_ns, self.ctime_ns, self.inode) == (
            st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)


# Digests already computed by this process, by resolved path.
_process_memo: dict[str, FileDigest] = {}
_process_memo_lock = threading.Lock()


def fingerprinted_files(ckpt_dir: Path) -> list[Path]:
    """The checkpoint's files that define the model's output, sorted by name."""
    return sorted(
        path for path in ckpt_dir.iterdir()
        # is_file follows symlinks: a hub snapshot links its files to blobs.
        if path.suffix in FINGERPRINTED_SUFFIXES and not path.name.startswith(".") and path.is_file()
    )


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(HASH_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def read_sidecar(path: Path) -> dict[str, FileDigest]:
    """The memoised digests in ``path``; anything unreadable counts as no memo at all."""
    try:
        data = json.loads(path.read_text())
        if data.get("format") != SIDECAR_FORMAT:
            return {}
        return {name: FileDigest(**fields) for name, fields in data["files"].items()}
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
        logger.warning("ignoring the unreadable fingerprint sidecar %s (%s)", path, exc)
        return {}


def write_sidecar(path: Path, memo: Mapping[str, FileDigest]) -> None:
    """Best effort: a sidecar that cannot be written costs a rehash at the next start."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with replacing(path) as partial:
            partial.write_text(json.dumps(
                {"format": SIDECAR_FORMAT, "files": {name: asdict(d) for name, d in sorted(memo.items())}},
                indent=1))
    except OSError as exc:
        logger.warning("could not write the fingerprint sidecar %s: %s", path, exc)


def _is_settled(st: os.stat_result, now: float) -> bool:
    return now - max(st.st_mtime_ns, st.st_ctime_ns) / 1e9 > RACY_WINDOW_SECONDS


def file_digest(path: Path, memo: dict[str, FileDigest]) -> str:
    """The file's sha256, from ``memo`` when the file is unchanged; records new settled digests."""
    name = str(path.resolve())
    st = os.stat(path)
    known = memo.get(name)
    if known is not None and known.matches(st):
        return known.sha256
    sha = sha256_file(path)
    after = os.stat(path)
    # Memoise only a digest of a file that did not change while it was read, and whose
    # timestamps are old enough to be told apart from the next write's.
    if FileDigest(st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, sha).matches(after) \
            and _is_settled(after, time.time()):
        memo[name] = FileDigest(st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, sha)
    else:
        memo.pop(name, None)
    return sha


def fingerprint_checkpoint(ckpt_dir: Path, memo_path: Path | None = None) -> str:
    """A sha256 over the names and contents of the checkpoint's files (see the module docstring).

    ``memo_path``: an optional JSON sidecar of per-file digests, read and updated here.
    Without it the digests are memoised for this process only.
    """
    ckpt_dir = Path(ckpt_dir)
    started = time.monotonic()
    with _process_memo_lock:
        memo = dict(_process_memo)
    if memo_path is not None:
        memo.update(read_sidecar(memo_path))
    before = dict(memo)
    overall = hashlib.sha256()
    for path in fingerprinted_files(ckpt_dir):
        overall.update(f"{path.name}\0{file_digest(path, memo)}\n".encode())
    with _process_memo_lock:
        _process_memo.update(memo)
    if memo_path is not None and memo != before:
        # Forget files that are gone (old checkpoints), so the sidecar stays small.
        write_sidecar(memo_path, {name: d for name, d in memo.items() if os.path.exists(name)})
    fingerprint = overall.hexdigest()
    logger.info("checkpoint %s fingerprint %s (%.1f s)", ckpt_dir, fingerprint[:VERSION_DIGEST_CHARS],
                time.monotonic() - started)
    return fingerprint


def library_version() -> str:
    try:
        return importlib.metadata.version(CHATTERBOX_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return UNKNOWN_LIBRARY_VERSION


def model_version(ckpt_dir: Path | None, memo_path: Path | None = None) -> str:
    """``<chatterbox-tts version>-<checkpoint digest prefix>``: the conditionals cache's version.

    A model without a known checkpoint directory (test stubs) gets the library version
    alone: such a model's weights cannot be told apart, so nothing better is possible.
    """
    version = library_version()
    if ckpt_dir is None:
        return version
    return f"{version}-{fingerprint_checkpoint(ckpt_dir, memo_path)[:VERSION_DIGEST_CHARS]}"
