"""RunPod entry point of the Chatterbox TTS worker.

Run one job:      python handler.py --test_input '{"input": {"text": "Hello"}}'
Serve on RunPod:  python -u handler.py
The job contract lives in request_schema.py; the operations and their registry in operations/.
"""
from __future__ import annotations

import atexit
import logging
import sys
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

from chatterbox_worker.http import openai_api
from chatterbox_worker import operations
from chatterbox_worker.serving.async_bridge import run_blocking, stream_from_thread
from chatterbox_worker.contract.errors import JobError, ServerError, ServiceUnavailableError
from chatterbox_worker.settings import SettingsError, get_settings

logger = logging.getLogger("chatterbox_worker")

FINGERPRINT_MEMO = "checkpoint-fingerprints.json"
CACHE_FLUSH_AT_EXIT_SECONDS = 30.0

_worker = None
_worker_error: str | None = None
_worker_lock = threading.Lock()


def load_model(variant: str):
    if variant == "standard":
        from optimized_chatterbox import create_optimized_tts

        return create_optimized_tts()
    from chatterbox_worker.models.variants import create_variant_tts

    return create_variant_tts(variant)


def load_worker():
    """Load the model(s), the voice library and the conditionals cache."""
    # Imported here: torch and chatterbox take seconds to import, and the unit tests
    # (which import this module) run without them.
    from chatterbox_worker.conditionals.fingerprint import model_version
    from chatterbox_worker.conditionals.cache import ConditionalsCache
    from optimized_chatterbox import ConditionalsCodec
    from optimized_voice_library import initialize_optimized_voice_library
    from chatterbox_worker.voices.preload import preload_voices
    from chatterbox_worker.voices.usage import USAGE_FILENAME, VoiceUsage
    from chatterbox_worker.serving.worker import Worker

    settings = get_settings()
    models = {name: load_model(name) for name in settings.models}
    device = next(iter(models.values())).device
    disk_dir = settings.conditionals_disk_dir
    # A memo on the volume lets later starts skip hashing ~3 GB of weights.
    memo = disk_dir / FINGERPRINT_MEMO if disk_dir else None
    versions = {name: model_version(model.checkpoint_dir, memo) for name, model in models.items()}
    cache = ConditionalsCache(ConditionalsCodec(device), disk_dir=disk_dir, model_versions=versions)
    library = initialize_optimized_voice_library()
    usage = VoiceUsage(library.library_dir / USAGE_FILENAME)
    usage.start()
    atexit.register(usage.stop)
    atexit.register(cache.flush, CACHE_FLUSH_AT_EXIT_SECONDS)  # a stuck volume must not hang shutdown
    worker = Worker(models, library, cache, usage=usage)
    if settings.preload_voices:
        threading.Thread(target=preload_voices, args=(worker, settings.preload_voices, settings.preload_max_seconds),
                         name="preload-voices", daemon=True).start()
    return worker


def service_unavailable(exc: Exception) -> dict[str, Any]:
    # RunPod replaces a worker whose result asks for it, instead of routing jobs to it.
    return {"error": f"service: this worker cannot serve jobs ({exc}); it will be replaced",
            "refresh_worker": True}


def error_response(exc: Exception) -> dict[str, Any]:
    """The one error shape: a job's fault names its field; anything else says what broke."""
    if isinstance(exc, ServerError):
        logger.error("job failed on the server's side", exc_info=exc)
        return exc.to_response()
    if isinstance(exc, JobError):
        logger.info("rejected job: %s", exc)
        return exc.to_response()
    if isinstance(exc, (ServiceUnavailableError, SettingsError)):  # a bad variable: every job names it
        return service_unavailable(exc)
    logger.error("job failed", exc_info=exc)
    return {"error": f"internal: {type(exc).__name__}: {exc}"}


def get_worker():
    """The process's worker, loaded once; a failed load is remembered, not retried per job."""
    global _worker, _worker_error
    with _worker_lock:
        if _worker is None and _worker_error is None:
            try:
                get_settings()  # a bad variable stops start-up here, before anything loads
                _worker = load_worker()
            except SettingsError as exc:  # names the variable to fix
                logger.error("bad configuration: %s", exc)
                _worker_error = str(exc)
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
        if isinstance(job_input, dict) and "openai_route" in job_input:  # RunPod's OpenAI passthrough
            return openai_api.run_route(job_input, worker_source)
        job = operations.parse_request(job_input)
        return operations.run(worker_source(), job, progress)
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
    if isinstance(job_input, dict) and "openai_route" in job_input:  # one result, as on the dict handler
        yield run_job(job_input, get_worker)
        return
    try:
        parsed = operations.parse_request(job_input)
        yield from operations.stream(get_worker(), parsed)
    except Exception as exc:  # the worker must answer every job, and keep serving
        yield error_response(exc)


async def async_handler(job: dict[str, Any]) -> dict[str, Any]:
    """:func:`handler` off the event loop, so that RunPod can run several jobs at once."""
    return await run_blocking(handler, job)


async def async_stream_handler(job: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
    """:func:`stream_handler` off the event loop; each item is posted the moment it is made."""
    async for item in stream_from_thread(lambda: stream_handler(job)):
        yield item


def max_concurrent_jobs() -> int:
    """``MAX_CONCURRENT_JOBS``, or what the loaded models' device takes well."""
    device = str(getattr(next(iter(_worker.models.values()), None), "device", "cpu")) if _worker else "cpu"
    return get_settings().concurrent_jobs(on_gpu=device.startswith("cuda"))


def configure_logging() -> None:
    try:
        level = get_settings().log_level
    except SettingsError:
        level = "INFO"  # the bad setting is reported by every job
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def serverless_config(argv: list[str]) -> dict[str, Any]:
    """The dict handler by default; the generator when STREAM_RESULTS is set. Both are async,
    and RunPod gives the worker up to ``max_concurrent_jobs()`` jobs at once.

    ``--test_input`` never iterates a generator, so a local test run uses the plain dict one.
    """
    if "--test_input" in argv:
        return {"handler": handler}
    limit = max_concurrent_jobs()
    config = {"handler": async_handler, "concurrency_modifier": lambda current: limit}
    if get_settings().stream_results:
        config.update(handler=async_stream_handler, return_aggregate_stream=True)
    return config


if __name__ == "__main__":
    import runpod

    configure_logging()
    try:
        get_worker()  # load before the first job, so readiness means ready
    except ServiceUnavailableError:
        pass  # every job will say why, and ask RunPod to replace this worker
    try:
        config = serverless_config(sys.argv)
    except SettingsError:
        config = {"handler": handler}  # every job answers with the bad setting
    runpod.serverless.start(config)
