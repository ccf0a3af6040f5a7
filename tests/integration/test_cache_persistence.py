"""The conditionals cache on disk survives a restart (two processes, real tensors) and is
versioned by the checkpoint it was computed with."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.real_model import bitwise_equal, conditionals_tensors

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def version(model) -> str:
    """The loaded model's version, as the worker computes it at start-up (hashes the checkpoint)."""
    from chatterbox_worker.conditionals.fingerprint import model_version

    assert model.checkpoint_dir is not None  # from_local records where the weights came from
    return model_version(model.checkpoint_dir)

# A second process opens the same cache directory without any model: a build call would
# fail, so getting conditionals back proves they came from disk.
RESTARTED = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    import torch
    from chatterbox_worker.conditionals.cache import CacheKey, ConditionalsCache
    from optimized_chatterbox import ConditionalsCodec

    def no_model():
        raise SystemExit("the restarted process had to recompute")

    cache = ConditionalsCache(ConditionalsCodec("cpu"), disk_dir=Path({disk!r}),
                              model_versions={{"standard": {version!r}}})
    lookup = cache.get_or_build(CacheKey("standard", {key!r}), no_model)
    tensors = {{f"t3.{{k}}": v for k, v in vars(lookup.conditionals.t3).items() if torch.is_tensor(v)}}
    tensors.update({{f"gen.{{k}}": v for k, v in lookup.conditionals.gen.items() if torch.is_tensor(v)}})
    torch.save(tensors, {out!r})
    print(json.dumps({{"source": lookup.source}}))
""")


def test_restart_reads_conditionals_from_disk(model, version, short_library_dir, tmp_path):
    from chatterbox_worker.conditionals.cache import CacheKey, ConditionalsCache
    from optimized_chatterbox import ConditionalsCodec
    from optimized_voice_library import OptimizedVoiceLibrary

    voice = OptimizedVoiceLibrary(short_library_dir).list_voices()[0]
    audio = OptimizedVoiceLibrary(short_library_dir).get_voice_audio(voice["voice_id"])
    disk = tmp_path / "conditionals"
    cache = ConditionalsCache(ConditionalsCodec("cpu"), disk_dir=disk, model_versions={"standard": version})
    key = CacheKey("standard", audio.content_hash)
    built = cache.get_or_build(key, lambda: model.prepare_conditionals_from_array(audio.samples, audio.sample_rate))
    assert built.source == "computed"
    assert cache.flush(timeout=60)
    assert list((disk / "standard" / version).iterdir()) == [
        disk / "standard" / version / f"{audio.content_hash}.safetensors"]
    assert cache.disk_path(key) == disk / "standard" / version / f"{audio.content_hash}.safetensors"

    out = tmp_path / "restarted.pt"
    code = RESTARTED.format(repo=str(REPO), disk=str(disk), key=audio.content_hash, out=str(out), version=version)
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=300)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout.strip().splitlines()[-1]) == {"source": "disk"}
    restored = torch.load(out, weights_only=True)
    original = conditionals_tensors(built.conditionals)
    assert restored.keys() >= original.keys()
    assert all(torch.equal(restored[k], original[k]) for k in original)

    # Other weights on the same volume do not read these conditionals.
    other = ConditionalsCache(ConditionalsCodec("cpu"), disk_dir=disk, model_versions={"standard": "0.0.0-other"})
    assert other.get_or_build(key, lambda: built.conditionals, persist=False).source == "computed"


def test_corrupt_file_on_disk_is_rebuilt(model, version, short_library_dir, tmp_path):
    from chatterbox_worker.conditionals.cache import CacheKey, ConditionalsCache
    from optimized_chatterbox import ConditionalsCodec
    from optimized_voice_library import OptimizedVoiceLibrary

    library = OptimizedVoiceLibrary(short_library_dir)
    audio = library.get_voice_audio(library.list_voices()[1]["voice_id"])
    key = CacheKey("standard", audio.content_hash)
    cache = ConditionalsCache(ConditionalsCodec("cpu"), disk_dir=tmp_path, model_versions={"standard": version})
    path = cache.disk_path(key)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"\x00garbage that is not safetensors")
    build = lambda: model.prepare_conditionals_from_array(audio.samples, audio.sample_rate)  # noqa: E731
    lookup = cache.get_or_build(key, build)
    assert cache.flush(timeout=60)
    assert lookup.source == "computed" and cache.stats()["disk_errors"] == 1
    assert bitwise_equal(ConditionalsCodec("cpu").load(path, cache.disk_metadata(key)), lookup.conditionals)


def test_real_checkpoint_fingerprint_follows_tensor_values(ckpt_dir, tmp_path):
    """On the voice encoder's real weights (5.7 MB; copying the whole 3 GB would be slow)."""
    from chatterbox_worker.conditionals.fingerprint import fingerprint_checkpoint

    copy = tmp_path / "ckpt"
    copy.mkdir()
    shutil.copy(ckpt_dir / "ve.safetensors", copy / "ve.safetensors")
    first = fingerprint_checkpoint(copy)
    assert fingerprint_checkpoint(copy) == first

    tensors = load_file(str(copy / "ve.safetensors"))
    name = sorted(tensors)[0]
    tensors[name].view(-1)[0] += 1.0
    save_file(tensors, str(copy / "ve.safetensors"), metadata={"format": "pt"})
    changed = fingerprint_checkpoint(copy)
    assert changed != first and fingerprint_checkpoint(copy) == changed
