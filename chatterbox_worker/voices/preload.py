"""Start-up preloading: the most-used voices' conditionals are ready before their jobs arrive."""
from __future__ import annotations

import logging
import time

from chatterbox_worker.pipeline.speech import NEUTRAL_EXAGGERATION, conditionals
from chatterbox_worker.serving.worker import Worker
from chatterbox_worker.voices.sources import library_voice

logger = logging.getLogger(__name__)


def preload_voices(worker: Worker, spec: str, max_seconds: float) -> int:
    """Prepare library voices' conditionals ahead of jobs; stops at ``max_seconds``.

    ``spec`` is "all" or a count N (``PRELOAD_VOICES``): the N most-used voices (by
    ``voice_usage.json``; catalog order among voices never used). Most-used voices go first
    either way, so the time bound cuts the least used. Returns how many voices were
    prepared. Runs in a background thread, so it never delays readiness.
    """
    voice_ids = [v["voice_id"] for v in worker.library.list_voices()]
    if worker.usage is not None:
        voice_ids = worker.usage.most_used(voice_ids)
    spec = spec.strip().lower()
    if spec != "all":
        if not spec.isdigit():  # settings refuse such a value; a direct caller gets a log line
            logger.error("PRELOAD_VOICES=%r: expected 'all' or a number of voices; nothing preloaded", spec)
            return 0
        voice_ids = voice_ids[: int(spec)]
    deadline = time.monotonic() + max_seconds
    done = 0
    for voice_id in voice_ids:
        if time.monotonic() >= deadline:
            logger.info("preload stopped at its %.0f s bound after %d voices", max_seconds, done)
            break
        try:
            prompt = library_voice(worker.library, voice_id=voice_id)
            for model in worker.models.values():
                conditionals(worker, model, prompt, NEUTRAL_EXAGGERATION, use_cache=True, count_use=False)
            done += 1
        except Exception as exc:  # a bad voice must not stop the others
            logger.warning("preload skipped voice %s: %s", voice_id, exc)
    logger.info("preloaded conditionals for %d voices", done)
    return done
