"""The cache key of a build: a hash of every source file of this package, the chatterbox and
torch versions and the seed. Any edit to the builder changes it, so the next call rebuilds."""
from __future__ import annotations

import hashlib
from importlib import metadata
from pathlib import Path

KEY_LENGTH = 12
PACKAGE_DIR = Path(__file__).resolve().parent


def package_version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "missing"


def builder_sources() -> list[Path]:
    """Every Python file of the builder package, in a stable order."""
    return sorted(PACKAGE_DIR.rglob("*.py"), key=lambda p: p.relative_to(PACKAGE_DIR).as_posix())


def cache_key(seed: int = 0) -> str:
    """Short hash of the builder's sources, the chatterbox and torch versions and the seed."""
    digest = hashlib.sha256()
    for source in builder_sources():
        # The name counts too, so moving code between files changes the key.
        digest.update(source.relative_to(PACKAGE_DIR).as_posix().encode() + b"\0")
        digest.update(source.read_bytes() + b"\0")
    for part in (package_version("chatterbox-tts"), package_version("torch"), str(int(seed))):
        digest.update(b"\0" + part.encode())
    return digest.hexdigest()[:KEY_LENGTH]
