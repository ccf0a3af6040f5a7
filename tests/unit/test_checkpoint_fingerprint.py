"""Checkpoint fingerprints: every byte of the weights counts, and unchanged files are not rehashed."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from chatterbox_worker.conditionals import fingerprint as cf
from chatterbox_worker.conditionals.cache import CacheKey


@pytest.fixture(autouse=True)
def fresh_process_memo(monkeypatch):
    monkeypatch.setattr(cf, "_process_memo", {})


@pytest.fixture
def ckpt(tmp_path) -> Path:
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    rng = np.random.default_rng(1)
    save_file({"a": rng.standard_normal((4, 4)).astype(np.float32)}, str(ckpt / "ve.safetensors"))
    save_file({"b": rng.standard_normal(32).astype(np.float32)}, str(ckpt / "s3gen.safetensors"))
    (ckpt / "tokenizer.json").write_text(json.dumps({"vocab": {"[START]": 0}}))
    (ckpt / "conds.pt").write_bytes(b"builtin voice")
    return ckpt


def change_one_value(path: Path) -> None:
    tensors = load_file(str(path))
    name = sorted(tensors)[0]
    tensors[name].flat[0] += 1.0
    save_file(tensors, str(path))


def count_hashes(monkeypatch) -> list[str]:
    hashed: list[str] = []
    real = cf.sha256_file

    def counting(path):
        hashed.append(Path(path).name)
        return real(path)

    monkeypatch.setattr(cf, "sha256_file", counting)
    return hashed


def test_stable_and_sensitive_to_one_tensor_value(ckpt):
    first = cf.fingerprint_checkpoint(ckpt)
    assert cf.fingerprint_checkpoint(ckpt) == first and len(first) == 64
    change_one_value(ckpt / "s3gen.safetensors")
    assert cf.fingerprint_checkpoint(ckpt) != first


@pytest.mark.parametrize("change", ["tokenizer", "builtin voice", "rename", "new weights file"])
def test_every_file_the_model_reads_counts(ckpt, change):
    before = cf.fingerprint_checkpoint(ckpt)
    if change == "tokenizer":
        (ckpt / "tokenizer.json").write_text(json.dumps({"vocab": {"[START]": 1}}))
    elif change == "builtin voice":
        (ckpt / "conds.pt").write_bytes(b"another voice")
    elif change == "rename":
        (ckpt / "ve.safetensors").rename(ckpt / "ve2.safetensors")
    else:
        save_file({"c": np.ones(3, np.float32)}, str(ckpt / "t3_cfg.safetensors"))
    assert cf.fingerprint_checkpoint(ckpt) != before


def test_files_that_change_no_output_are_ignored(ckpt):
    before = cf.fingerprint_checkpoint(ckpt)
    (ckpt / "README.md").write_text("model card")
    (ckpt / ".gitattributes").write_text("*.safetensors filter=lfs")
    (ckpt / ".tmp-partial.safetensors").write_bytes(b"half written")
    (ckpt / "models--ResembleAI--chatterbox").mkdir()  # a download cache beside the weights
    assert cf.fingerprint_checkpoint(ckpt) == before


def test_symlinked_files_are_followed(ckpt, tmp_path):
    linked = tmp_path / "snapshot"
    linked.mkdir()
    for path in ckpt.iterdir():
        (linked / path.name).symlink_to(path)  # a hub snapshot links its files to blobs
    assert cf.fingerprint_checkpoint(linked) == cf.fingerprint_checkpoint(ckpt)


def test_sidecar_memo_skips_unchanged_files(ckpt, tmp_path, monkeypatch):
    monkeypatch.setattr(cf, "RACY_WINDOW_SECONDS", -1.0)  # treat the fresh test files as settled
    sidecar = tmp_path / "memo" / "fingerprints.json"
    hashed = count_hashes(monkeypatch)
    first = cf.fingerprint_checkpoint(ckpt, sidecar)
    assert len(hashed) == 4 and sidecar.is_file()

    monkeypatch.setattr(cf, "_process_memo", {})  # a new process: only the sidecar remembers
    hashed.clear()
    assert cf.fingerprint_checkpoint(ckpt, sidecar) == first and hashed == []

    change_one_value(ckpt / "ve.safetensors")
    monkeypatch.setattr(cf, "_process_memo", {})
    assert cf.fingerprint_checkpoint(ckpt, sidecar) != first and hashed == ["ve.safetensors"]


@pytest.mark.parametrize("content", ["{not json", '{"format": 1, "files": {"x": {"size": 1}}}',
                                     '{"format": 99, "files": {}}', "[]"])
def test_bad_sidecar_is_ignored(ckpt, tmp_path, content):
    expected = cf.fingerprint_checkpoint(ckpt)
    sidecar = tmp_path / "fingerprints.json"
    sidecar.write_text(content)
    cf._process_memo.clear()
    assert cf.fingerprint_checkpoint(ckpt, sidecar) == expected


def test_sidecar_of_another_file_version_is_not_trusted(ckpt, tmp_path, monkeypatch):
    monkeypatch.setattr(cf, "RACY_WINDOW_SECONDS", -1.0)
    sidecar = tmp_path / "fingerprints.json"
    cf.fingerprint_checkpoint(ckpt, sidecar)
    # Forge the memo: same identity, wrong digest. A changed file must not match it.
    data = json.loads(sidecar.read_text())
    for fields in data["files"].values():
        fields["sha256"] = "0" * 64
    sidecar.write_text(json.dumps(data))
    cf._process_memo.clear()
    change_one_value(ckpt / "ve.safetensors")
    cf._process_memo.clear()
    hashed = count_hashes(monkeypatch)
    cf.fingerprint_checkpoint(ckpt, sidecar)
    assert "ve.safetensors" in hashed


def test_recently_changed_files_are_not_memoised(ckpt):
    # Timestamps are as fine as the filesystem's clock tick: a file written just now could
    # be written again within the same tick and look unchanged.
    cf.fingerprint_checkpoint(ckpt)
    assert cf._process_memo == {}


def test_model_version_is_library_and_checkpoint(ckpt):
    version = cf.model_version(ckpt)
    library, digest = version.rsplit("-", 1)
    assert library == cf.library_version() and len(digest) == cf.VERSION_DIGEST_CHARS
    assert cf.fingerprint_checkpoint(ckpt).startswith(digest)
    CacheKey("standard", version)  # usable as a directory name in the cache
    assert cf.model_version(None) == cf.library_version()
