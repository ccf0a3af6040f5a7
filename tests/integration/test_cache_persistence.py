"""The conditionals cache on disk survives a restart: two processes, real tensors."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from real_model import bitwise_equal, conditionals_tensors

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]

# A second process opens the same cache directory without any model: a build call would
# fail, so getting conditionals back proves they came from disk.
RESTARTED = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    sys.path.insert(0, {repo!r})
    import torch
    from conditionals_cache import CacheKey, ConditionalsCache
    from optimized_chatterbox import ConditionalsCodec

    def no_model():
        raise SystemExit("the restarted process had to recompute")

    cache = ConditionalsCache(ConditionalsCodec("cpu"), disk_dir=Path({disk!r}))
    lookup = cache.get_or_build(CacheKey("standard", {key!r}), no_model)
    tensors = {{f"t3.{{k}}": v for k, v in vars(lookup.conditionals.t3).items() if torch.is_tensor(v)}}
    tensors.update({{f"gen.{{k}}": v for k, v in lookup.conditionals.gen.items() if torch.is_tensor(v)}})
    torch.save(tensors, {out!r})
    print(json.dumps({{"source": lookup.source}}))
""")


def test_restart_reads_conditionals_from_disk(model, short_library_dir, tmp_path):
    from conditionals_cache import CacheKey, ConditionalsCache
    from optimized_chatterbox import ConditionalsCodec
    from optimized_voice_library import OptimizedVoiceLibrary

    voice = OptimizedVoiceLibrary(short_library_dir).list_voices()[0]
    audio = OptimizedVoiceLibrary(short_library_dir).get_voice_audio_direct(voice["voice_id"])
    disk = tmp_path / "conditionals"
    cache = ConditionalsCache(ConditionalsCodec("cpu"), disk_dir=disk)
    built = cache.get_or_build(CacheKey("standard", audio.content_hash),
                               lambda: model.prepare_conditionals_from_array(audio.samples, audio.sample_rate))
    assert built.source == "computed"
    assert list((disk / "standard").iterdir()) == [disk / "standard" / f"{audio.content_hash}.safetensors"]

    out = tmp_path / "restarted.pt"
    code = RESTARTED.format(repo=str(REPO), disk=str(disk), key=audio.content_hash, out=str(out))
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=300)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout.strip().splitlines()[-1]) == {"source": "disk"}
    restored = torch.load(out, weights_only=True)
    original = conditionals_tensors(built.conditionals)
    assert restored.keys() >= original.keys()
    assert all(torch.equal(restored[k], original[k]) for k in original)


def test_corrupt_file_on_disk_is_rebuilt(model, short_library_dir, tmp_path):
    from conditionals_cache import CacheKey, ConditionalsCache
    from optimized_chatterbox import ConditionalsCodec
    from optimized_voice_library import OptimizedVoiceLibrary

    library = OptimizedVoiceLibrary(short_library_dir)
    audio = library.get_voice_audio_direct(library.list_voices()[1]["voice_id"])
    key = CacheKey("standard", audio.content_hash)
    path = tmp_path / "standard" / f"{audio.content_hash}.safetensors"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"\x00garbage that is not safetensors")
    cache = ConditionalsCache(ConditionalsCodec("cpu"), disk_dir=tmp_path)
    build = lambda: model.prepare_conditionals_from_array(audio.samples, audio.sample_rate)  # noqa: E731
    lookup = cache.get_or_build(key, build)
    assert lookup.source == "computed" and cache.stats()["disk_errors"] == 1
    assert bitwise_equal(ConditionalsCodec("cpu").load(path, key.metadata()), lookup.conditionals)
