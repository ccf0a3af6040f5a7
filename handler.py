"""RunPod entry point of the Chatterbox TTS worker.

Run one job:      python handler.py --test_input '{"input": {"text": "Hello"}}'
Serve on RunPod:  python -u handler.py
The job contract lives in request_schema.py and the job types in job_operations.py.
"""
from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from typing import Any

from job_errors import JobError, ServiceUnavailableError
from request_schema import parse_request

logger = logging.getLogger("chatterbox_worker")

DEFAULT_MODELS = "standard"
# Voices prepared in the background at start-up ("all" or a count); readiness never waits.
PRELOAD_VOICES = os.environ.get("PRELOAD_VOICES", "")
PRELOAD_MAX_SECONDS = float(os.environ.get("PRELOAD_MAX_SECONDS", "300"))
_worker = None
_worker_error: str | None = None
_worker_lock = threading.Lock()


def enabled_models() -> list[str]:
    names = [n.strip() for n in os.environ.get("CHATTERBOX_MODELS", DEFAULT_MODELS).split(",") if n.strip()]
    unknown = sorted(set(names) - {"standard"})
    if unknown:
        raise ValueError(f"CHATTERBOX_MODELS names {unknown}; this worker serves: standard")
    return names


def load_worker():
    """Load the model(s), the voice library and the conditionals cache."""
    # Imported here: torch and chatterbox take seconds to import, and the unit tests
    # (which import this module) run without them.
    from conditionals_cache import ConditionalsCache, default_cache_dir
    from job_operations import Worker
    from optimized_chatterbox import ConditionalsCodec, create_optimized_tts
    from optimized_voice_library import initialize_optimized_voice_library

    models = {name: create_optimized_tts() for name in enabled_models()}
    device = next(iter(models.values())).device
    cache = ConditionalsCache(ConditionalsCodec(device), disk_dir=default_cache_dir())
    worker = Worker(models, initialize_optimized_voice_library(), cache)
    if PRELOAD_VOICES:
        threading.Thread(target=worker.preload, args=(PRELOAD_VOICES, PRELOAD_MAX_SECONDS),
                         name="preload-voices", daemon=True).start()
    return worker


def get_worker():
    """The process's worker, loaded once; a failed load is remembered, not retried per job."""
    global _worker, _worker_error
    with _worker_lock:
        if _worker is None and _worker_error is None:
            try:
                _worker = load_worker()
            except Exception as exc:  # the worker must answer every job, even now
                logger.exception("the worker could not start")
                _worker_error = f"{type(exc).__name__}: {exc}"
        if _worker_error is not None:
            raise ServiceUnavailableError(_worker_error)
        return _worker


def run_job(job_input: Any, worker_source: Callable[[], Any]) -> dict[str, Any]:
    """Validate and run one job's input; every failure becomes ``{"error": str}``."""
    try:
        request, warnings = parse_request(job_input)
        result = worker_source().run(request)
        if warnings:
            result["warnings"] = warnings
        return result
    except JobError as exc:
        logger.info("rejected job: %s", exc)
        return exc.to_response()
    except ServiceUnavailableError as exc:
        # RunPod replaces a worker whose result asks for it, instead of routing jobs to it.
        return {"error": f"service: this worker cannot serve jobs ({exc}); it will be replaced",
                "refresh_worker": True}
    except Exception as exc:
        logger.exception("job failed")
        return {"error": f"internal: {type(exc).__name__}: {exc}"}


def handle(job_input: Any) -> dict[str, Any]:
    return run_job(job_input, get_worker)


def handler(job: dict[str, Any]) -> dict[str, Any]:
    return handle(job.get("input") if isinstance(job, dict) else None)


if __name__ == "__main__":
    import runpod

    logging.basicConfig(level=os.environ.get("LOG_LEVEL", "INFO"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        get_worker()  # load before the first job, so readiness means ready
    except ServiceUnavailableError:
        pass  # every job will say why, and ask RunPod to replace this worker
    runpod.serverless.start({"handler": handler})
