"""The random-weights checkpoint's cache key covers every source file of its builder, so any
edit to the builder rebuilds the checkpoint instead of reusing a stale one."""
from __future__ import annotations

import shutil
from pathlib import Path

from chatterbox_worker.testing.random_checkpoint import key


def test_the_key_hashes_every_python_file_of_the_builder_package():
    sources = {p.relative_to(key.PACKAGE_DIR).as_posix() for p in key.builder_sources()}
    on_disk = {p.relative_to(key.PACKAGE_DIR).as_posix() for p in key.PACKAGE_DIR.rglob("*.py")}
    assert sources == on_disk
    assert {"builders.py", "tokenizers.py", "cache.py", "cli.py", "__init__.py"} <= sources


def test_editing_any_builder_file_changes_the_key(tmp_path, monkeypatch):
    copy = Path(shutil.copytree(key.PACKAGE_DIR, tmp_path / "random_checkpoint"))
    monkeypatch.setattr(key, "PACKAGE_DIR", copy)
    original = key.cache_key(0)
    assert original == key.cache_key(0)
    for source in sorted(copy.rglob("*.py")):
        text = source.read_text()
        source.write_text(text + "\n# edited\n")
        assert key.cache_key(0) != original, source.name
        source.write_text(text)
    assert key.cache_key(0) == original
