"""Building the worker, in one place for every entry point (queue handler, HTTP server, legacy).

:func:`load_worker` loads the models, the voice library and the conditionals cache;
:data:`loader`, a :class:`WorkerLoader`, holds the process's one worker, loaded on first
use, with a failed load remembered so that every job says why instead of loading again.
A test gives the process another worker, or another loader, by replacing ``loader``.
"""
from __future__ import annotations

import atexit
import logging
import threading
from collections.abc import Callable
from typing import Any

from chatterbox_worker.contract.errors import ServiceUnavailableError
from chatterbox_worker.settings import SettingsError, get_settings

logger = logging.getLogger("chatterbox_worker")

FINGERPRINT_MEMO = "checkpoint-fingerprints.json"
CACHE_FLUSH_AT_EXIT_SECONDS = 30.0
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
DEFAULT_LOG_LEVEL = "INFO"


def load_model(variant: str):
    """One model variant, as the variant registry says to load it (its checkpoint setting)."""
    from chatterbox_worker.models.library_warnings import silence_library_warnings
    from chatterbox_worker.models.registry import load_model as load_variant

    silence_library_warnings()
    return load_variant(variant)


def load_worker():
    """Load the model(s), the voice library and the conditionals cache."""
    # Imported here: torch and chatterbox take seconds to import, and the unit tests
    # (which import this module) run without them.
    from chatterbox_worker.conditionals.cache import ConditionalsCache
    from chatterbox_worker.conditionals.fingerprint import model_version
    from chatterbox_worker.serving.worker import Worker
    from chatterbox_worker.voices.preload import preload_voices
    from chatterbox_worker.voices.usage import USAGE_FILENAME, VoiceUsage
    from optimized_chatterbox import ConditionalsCodec
    from optimized_voice_library import initialize_optimized_voice_library

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


class WorkerLoader:
    """One worker per process, loaded once; a failed load is remembered, not retried per job."""

    def __init__(self, load: Callable[[], Any]):
        self._load = load
        self._lock = threading.Lock()
        self.worker: Any = None
        self.error: str | None = None

    def get(self) -> Any:
        """The worker; raises :class:`ServiceUnavailableError` (saying why) if it could not load."""
        with self._lock:
            if self.worker is None and self.error is None:
                try:
                    get_settings()  # a bad variable stops start-up here, before anything loads
                    self.worker = self._load()
                except SettingsError as exc:  # names the variable to fix
                    logger.error("bad configuration: %s", exc)
                    self.error = str(exc)
                except Exception as exc:  # the worker must answer every job, even now
                    logger.exception("the worker could not start")
                    self.error = f"{type(exc).__name__}: {exc}"
            if self.error is not None:
                raise ServiceUnavailableError(self.error)
            return self.worker


# Resolved at load time, so that a replaced ``load_worker`` is the one called.
loader = WorkerLoader(lambda: load_worker())


def get_worker():
    """The process's worker (see :class:`WorkerLoader`)."""
    return loader.get()


def max_concurrent_jobs() -> int:
    """``MAX_CONCURRENT_JOBS``, or what the loaded models' device takes well."""
    worker = loader.worker
    device = str(getattr(next(iter(worker.models.values()), None), "device", "cpu")) if worker else "cpu"
    return get_settings().concurrent_jobs(on_gpu=device.startswith("cuda"))


def configure_logging() -> None:
    try:
        level = get_settings().log_level
    except SettingsError:
        level = DEFAULT_LOG_LEVEL  # the bad setting is reported by every job
    logging.basicConfig(level=level, format=LOG_FORMAT)
