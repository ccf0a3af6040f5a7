"""The deployed worker's file-based voice path, kept for rollback and as the benchmark baseline.

Each voice's array is written to a temporary WAV file and handed to the library's own
``ChatterboxTTS.prepare_conditionals(path)``, which reads it back. Nothing is cached. The
job contract and everything after the conditionals are shared with ``handler.py``, and the
worker is loaded the same way (``serving.bootstrap``: a failed load is remembered and
answered with ``service: ...``), so a comparison of the two measures the voice path alone.
Generation uses the same bounded sampling call: the library's ``generate`` hard-codes 1000
new speech tokens.

Roll back by starting this file instead of handler.py: ``python -u handler_legacy.py``.
"""
from __future__ import annotations

import logging
import os
import tempfile
import threading
from typing import Any

from chatterbox_worker.serving.bootstrap import WorkerLoader, configure_logging, load_model
from chatterbox_worker.serving.jobs import run_job
from handler import progress_reporter

logger = logging.getLogger("chatterbox_worker.legacy")

# The deployed worker wrote soundfile's default WAV subtype: 16-bit PCM.
LEGACY_WAV_SUBTYPE = "PCM_16"
TEMP_PREFIX = "chatterbox-voice-"
# The library's prepare_conditionals stores its result on the shared model (self.conds):
# two jobs must not interleave between that write and the read that follows it.
_conds_lock = threading.Lock()


def file_conditionals(model, prompt, exaggeration: float, use_cache: bool) -> tuple[Any, str]:
    """Array → temporary WAV → library ``prepare_conditionals(path)``; the file is always removed."""
    import soundfile as sf
    from chatterbox.tts import ChatterboxTTS

    fd, path = tempfile.mkstemp(suffix=".wav", prefix=TEMP_PREFIX)
    os.close(fd)
    try:
        sf.write(path, prompt.samples, prompt.sample_rate, subtype=LEGACY_WAV_SUBTYPE)
        with _conds_lock:
            ChatterboxTTS.prepare_conditionals(model, path, exaggeration=exaggeration)
            return model.conds, "computed"
    finally:
        os.unlink(path)


def load_worker():
    from chatterbox_worker.serving.worker import Worker
    from optimized_voice_library import initialize_optimized_voice_library

    models = {"standard": load_model("standard")}
    return Worker(models, initialize_optimized_voice_library(), cache=None, conditioner=file_conditionals)


loader = WorkerLoader(lambda: load_worker())


def get_worker():
    return loader.get()


def handler(job: dict[str, Any]) -> dict[str, Any]:
    return run_job(job.get("input") if isinstance(job, dict) else None, get_worker, progress_reporter(job))


if __name__ == "__main__":
    import runpod

    configure_logging()
    runpod.serverless.start({"handler": handler})
