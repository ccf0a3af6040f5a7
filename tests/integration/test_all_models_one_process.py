"""All three models in one worker process, loaded through handler.py's own loading code.

Its own module, so that it runs in a fresh subprocess while this pytest process holds no
model of its own yet: three models beside the tier's session models would crowd 24 GB.
"""
from __future__ import annotations

import os

import pytest

from tests.real_model import SHORT_VOICE_SECONDS

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# S3Gen's cost grows with the prompt (about 1.2 s of CPU per second of it): the standard and
# multilingual jobs get a short voice; Turbo refuses prompts of 5 s or less.
TURBO_PROMPT_S = 6.0


def short_library(target):
    """Amy cut short for the standard and multilingual jobs, Bella long enough for Turbo."""
    from chatterbox_worker.testing.demo_library import DEMO_LIBRARY_DIR
    from optimized_voice_library import OptimizedVoiceLibrary

    demo, library = OptimizedVoiceLibrary(DEMO_LIBRARY_DIR), OptimizedVoiceLibrary(target)
    for name, seconds in (("Amy", SHORT_VOICE_SECONDS), ("Bella", TURBO_PROMPT_S)):
        audio = demo.get_voice_audio_by_name(name)
        library.save_voice(name, audio.samples[: int(seconds * audio.sample_rate)].copy(), audio.sample_rate)
    return target


def test_all_three_models_serve_from_one_worker_process(tmp_path):
    """CHATTERBOX_MODELS=standard,multilingual,turbo loads all three through handler.py's own
    loading code in one process, and a job for each model succeeds; peak RSS is reported."""
    import json
    import resource
    import subprocess
    import sys

    from chatterbox_worker.testing import random_checkpoint as script
    from chatterbox_worker.testing.demo_library import REPO_ROOT as REPO

    env = {**os.environ,
           "CHATTERBOX_MODELS": "standard,multilingual,turbo",
           "CHATTERBOX_CKPT_DIR": os.environ.get("CHATTERBOX_CKPT_DIR") or str(script.ensure_checkpoint("standard")),
           "CHATTERBOX_MULTILINGUAL_CKPT_DIR": os.environ.get("CHATTERBOX_MULTILINGUAL_CKPT_DIR")
           or str(script.ensure_checkpoint("multilingual")),
           "CHATTERBOX_TURBO_CKPT_DIR": os.environ.get("CHATTERBOX_TURBO_CKPT_DIR")
           or str(script.ensure_checkpoint("turbo")),
           "CONDITIONALS_CACHE_DIR": str(tmp_path / "conditionals"),
           "VOICE_LIBRARY_DIR": str(short_library(tmp_path / "library")),
           "CHATTERBOX_DEVICE": "cpu"}
    code = (
        "import json, handler\n"
        "out = {}\n"
        "for model, voice, extra in (('standard', 'Amy', {}), ('multilingual', 'Amy', {'language_id': 'de'}),\n"
        "                            ('turbo', 'Bella', {})):\n"
        "    job = {'text': 'Hallo.', 'voice_name': voice, 'model': model, 'max_new_tokens': 2, 'seed': 1, **extra}\n"
        "    result = handler.handler({'input': job})\n"
        "    out[model] = result.get('error') or result['parameters']['model']\n"
        "print(json.dumps(out))\n"
    )
    run = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    served = json.loads(run.stdout.strip().splitlines()[-1])
    assert served == {"standard": "standard", "multilingual": "multilingual", "turbo": "turbo"}
    peak_gib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20  # ru_maxrss is KiB
    print(f"peak RSS with all three models loaded: {peak_gib:.1f} GiB")
    assert peak_gib < 24, peak_gib
