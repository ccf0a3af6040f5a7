"""The integration tier: the real chatterbox classes on CPU over a random-weights checkpoint.

One model is loaded per session. Voices are cut to a few seconds and token bounds are
tiny, because S3Gen's cost on CPU grows with the prompt and the speech length.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from chatterbox_worker.testing.demo_library import DEMO_LIBRARY_DIR
from chatterbox_worker.testing.random_checkpoint import ensure_checkpoint
from tests.real_model import N_SHORT_VOICES, SHORT_VOICE_SECONDS

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")
# Four jobs share a decode step (enough to prove batching with three concurrent jobs) while
# the KV cache of each loaded model stays small beside the three models some tests load.
os.environ.setdefault("ENGINE_MAX_SLOTS", "4")


@pytest.fixture(scope="session")
def ckpt_dir() -> Path:
    configured = os.environ.get("CHATTERBOX_CKPT_DIR")
    if configured:
        return Path(configured)
    return ensure_checkpoint("standard")


@pytest.fixture(scope="session")
def model(ckpt_dir):
    from optimized_chatterbox import create_optimized_tts

    return create_optimized_tts("cpu", ckpt_dir)


@pytest.fixture(scope="session")
def short_library_dir(tmp_path_factory) -> Path:
    """A library of short voices cut from the shipped demo voices (real espeak speech)."""
    from optimized_voice_library import OptimizedVoiceLibrary

    demo = OptimizedVoiceLibrary(DEMO_LIBRARY_DIR)
    target = tmp_path_factory.mktemp("short_library")
    short = OptimizedVoiceLibrary(target)
    for voice in demo.list_voices()[:N_SHORT_VOICES]:
        audio = demo.get_voice_audio(voice["voice_id"])
        n = int(SHORT_VOICE_SECONDS * audio.sample_rate)
        short.save_voice(voice["speaker_name"], audio.samples[:n].copy(), audio.sample_rate,
                         gender=voice["gender"])
    return target


@pytest.fixture
def real_worker(model, short_library_dir, tmp_path):
    from chatterbox_worker.conditionals.cache import ConditionalsCache
    from chatterbox_worker.serving.worker import Worker
    from optimized_chatterbox import ConditionalsCodec
    from optimized_voice_library import OptimizedVoiceLibrary

    library_dir = shutil.copytree(short_library_dir, tmp_path / "library")  # jobs may save voices
    cache = ConditionalsCache(ConditionalsCodec("cpu"), disk_dir=tmp_path / "conditionals")
    return Worker({"standard": model}, OptimizedVoiceLibrary(library_dir), cache)
