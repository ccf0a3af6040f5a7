"""RunPod entry point of the Chatterbox TTS worker.

Run one job:      python handler.py --test_input '{"input": {"text": "Hello"}}'
Serve on RunPod:  python -u handler.py
The job contract lives in request_schema.py and the job types in job_operations.py.
"""
from __future__ import annotations

import atexit
import logging
import os
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

from job_errors import JobError, ServiceUnavailableError
from request_schema import TTSRequest, parse_request

logger = logging.getLogger("chatterbox_worker")

DEFAULT_MODELS = "standard"
# Voices prepared in the background at start-up ("all" or a count); readiness never waits.
PRELOAD_VOICES = os.environ.get("PRELOAD_VOICES", "")
PRELOAD_MAX_SECONDS = float(os.environ.get("PRELOAD_MAX_SECONDS", "300"))
_worker = None
_worker_error: str | None = None
_worker_lock = threading.Lock()


MODEL_VARIANTS = ("standard", "multilingual", "turbo")


def enabled_models() -> list[str]:
    names = [n.strip().lower() for n in os.environ.get("CHATTERBOX_MODELS", DEFAULT_MODELS).split(",") if n.strip()]
    unknown = sorted(set(names) - set(MODEL_VARIANTS))
    if unknown or not names:
        raise ValueError(f"CHATTERBOX_MODELS={os.environ.get('CHATTERBOX_MODELS')!r}: "
                         f"choose from {', '.join(MODEL_VARIANTS)}")
    return list(dict.fromkeys(names))


def load_model(variant: str):
    if variant == "standard":
        from optimized_chatterbox import create_optimized_tts

        return create_optimized_tts()
    from optimized_variants import create_variant_tts

    return create_variant_tts(variant)


def load_worker():
    """Load the model(s), the voice library and the conditionals cache."""
    # Imported here: torch and chatterbox take seconds to import, and the unit tests
    # (which import this module) run without them.
    from conditionals_cache import ConditionalsCache, default_cache_dir
    from job_operations import Worker
    from optimized_chatterbox import ConditionalsCodec
    from optimized_voice_library import initialize_optimized_voice_library
    from voice_usage import USAGE_FILENAME, VoiceUsage

    models = {name: load_model(name) for name in enabled_models()}
    device = next(iter(models.values())).device
    cache = ConditionalsCache(ConditionalsCodec(device), disk_dir=default_cache_dir())
    library = initialize_optimized_voice_library()
    usage = VoiceUsage(library.library_dir / USAGE_FILENAME)
    usage.start()
    atexit.register(usage.stop)
    worker = Worker(models, library, cache, usage=usage)
    if PRELOAD_VOICES:
        threading.Thread(target=worker.preload, args=(PRELOAD_VOICES, PRELOAD_MAX_SECONDS),
                         name="preload-voices", daemon=True).start()
    return worker


def service_unavailable(exc: Exception) -> dict[str, Any]:
    # RunPod replaces a worker whose result asks for it, instead of routing jobs to it.
    return {"error": f"service: this worker cannot serve jobs ({exc}); it will be replaced",
            "refresh_worker": True}


def error_response(exc: Exception) -> dict[str, Any]:
    """The one error shape: a job's fault names its field; anything else says what broke."""
    if isinstance(exc, JobError):
        logger.info("rejected job: %s", exc)
        return exc.to_response()
    if isinstance(exc, ServiceUnavailableError):
        return service_unavailable(exc)
    logger.error("job failed", exc_info=exc)
    return {"error": f"internal: {type(exc).__name__}: {exc}"}


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


def run_job(job_input: Any, worker_source: Callable[[], Any],
            progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Validate and run one job's input; every failure becomes ``{"error": str}``."""
    try:
        request, warnings = parse_request(job_input)
        result = worker_source().run(request, progress)
        if warnings:
            result["warnings"] = warnings
        return result
    except Exception as exc:  # the worker must answer every job, and keep serving
        return error_response(exc)


def handle(job_input: Any, progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    return run_job(job_input, get_worker, progress)


def progress_reporter(job: Any) -> Callable[[int, int], None] | None:
    """Send RunPod progress updates for long jobs, when running under the RunPod SDK."""
    serverless = getattr(sys.modules.get("runpod"), "serverless", None)
    if serverless is None or not isinstance(job, dict) or "id" not in job:
        return None
    return lambda done, total: serverless.progress_update(job, f"{done}/{total} text chunks done")


def handler(job: dict[str, Any]) -> dict[str, Any]:
    """The default handler: one dict per job, as the deployed worker's clients expect."""
    return handle(job.get("input") if isinstance(job, dict) else None, progress_reporter(job))


def stream_handler(job: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The ``STREAM_RESULTS=true`` handler: ``tts`` jobs yield audio chunks as they are made.

    Other operations yield their one result. An error is yielded as the last item.
    """
    job_input = job.get("input") if isinstance(job, dict) else None
    try:
        request, warnings = parse_request(job_input)
        if not isinstance(request, TTSRequest):
            yield handle(job_input)
            return
        for item in get_worker().tts_stream(request):
            if warnings and "metrics" in item:
                item["warnings"] = warnings
            yield item
    except Exception as exc:  # the worker must answer every job, and keep serving
        yield error_response(exc)


def serverless_config(argv: list[str]) -> dict[str, Any]:
    """The dict handler by default; the generator when STREAM_RESULTS is set.

    ``--test_input`` never iterates a generator, so a local test run always uses the dict one.
    """
    streaming = os.environ.get("STREAM_RESULTS", "").lower() in ("1", "true", "yes")
    if streaming and "--test_input" not in argv:
        return {"handler": stream_handler, "return_aggregate_stream": True}
    return {"handler": handler}


if __name__ == "__main__":
    import runpod

    logging.basicConfig(level=os.environ.get("LOG_LEVEL", "INFO"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        get_worker()  # load before the first job, so readiness means ready
    except ServiceUnavailableError:
        pass  # every job will say why, and ask RunPod to replace this worker
    runpod.serverless.start(serverless_config(sys.argv))
