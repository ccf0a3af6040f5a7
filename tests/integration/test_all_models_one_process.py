"""All three models in one worker process, loaded through handler.py's own loading code.

Its own module, so that it runs in a fresh subprocess while this pytest process holds no
model of its own yet: three models beside the tier's session models would crowd 24 GB.
"""
from __future__ import annotations

import os

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_all_three_models_serve_from_one_worker_process(tmp_path):
    """CHATTERBOX_MODELS=standard,multilingual,turbo loads all three through handler.py's own
    loading code in one process, and a job for each model succeeds; peak RSS is reported."""
    import json
    import resource
    import subprocess
    import sys

    from chatterbox_worker.testing import random_checkpoint as script
    from chatterbox_worker.testing.demo_library import REPO_ROOT as REPO
    from chatterbox_worker.testing.demo_library import copy_demo_library

    env = {**os.environ,
           "CHATTERBOX_MODELS": "standard,multilingual,turbo",
           "CHATTERBOX_CKPT_DIR": os.environ.get("CHATTERBOX_CKPT_DIR") or str(script.ensure_checkpoint("standard")),
           "CHATTERBOX_MULTILINGUAL_CKPT_DIR": os.environ.get("CHATTERBOX_MULTILINGUAL_CKPT_DIR")
           or str(script.ensure_checkpoint("multilingual")),
           "CHATTERBOX_TURBO_CKPT_DIR": os.environ.get("CHATTERBOX_TURBO_CKPT_DIR")
           or str(script.ensure_checkpoint("turbo")),
           "CONDITIONALS_CACHE_DIR": str(tmp_path / "conditionals"),
           "VOICE_LIBRARY_DIR": str(copy_demo_library(tmp_path / "library")),
           "CHATTERBOX_DEVICE": "cpu"}
    code = (
        "import json, handler\n"
        "out = {}\n"
        "for model, extra in (('standard', {}), ('multilingual', {'language_id': 'de'}), ('turbo', {})):\n"
        "    job = {'text': 'Hallo.', 'voice_name': 'Amy', 'model': model, 'max_new_tokens': 2, 'seed': 1, **extra}\n"
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
