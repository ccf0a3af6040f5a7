"""Every environment variable the worker reads, in one typed object built once at start-up.

Nothing else in the package reads or writes ``os.environ``: the few variables the worker and
its testing kit set for the libraries they load, or for a child process, go through the
functions at the end of this module. Each setting has its default, its bounds
and a one-line description (the README's configuration table lists exactly these). A bad
value stops start-up with a :class:`SettingsError` that names the variable; the handler
then answers every job with that message.
"""
from __future__ import annotations

import contextlib
import functools
import logging
import os
from collections.abc import Iterator
from pathlib import Path

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from chatterbox_worker.contract.limits import LIBRARY_MAX_NEW_TOKENS, MB, MODEL_VARIANTS
from chatterbox_worker.models.registry import variant_spec

# Where RunPod mounts a network volume; caches there survive worker replacement.
RUNPOD_VOLUME = Path("/runpod-volume")
_OFF = ("off", "none", "0", "false")
# Jobs in flight per worker when MAX_CONCURRENT_JOBS is unset: a GPU's decode engine batches
# this many into shared steps; on a CPU more jobs only queue for the same cores.
GPU_CONCURRENT_JOBS = 8
CPU_CONCURRENT_JOBS = 2
# Set for the libraries the worker's tools load: weights are local (no model-hub calls) and
# logs carry no progress bars.
LIBRARY_ENV_DEFAULTS = {"HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1"}


class SettingsError(ValueError):
    """A setting with a bad value; the message starts with the variable's name."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(case_sensitive=False, extra="ignore", frozen=True)

    # -- models ------------------------------------------------------------------------
    chatterbox_models: str = Field(
        "standard", description="Models to load, comma-separated: standard, multilingual, turbo")
    chatterbox_device: str | None = Field(
        None, description="Torch device for the models; default cuda when available, else cpu")
    chatterbox_ckpt_dir: Path | None = Field(
        None, description="Local checkpoint of the standard model; default the model hub (baked into the image)")
    chatterbox_multilingual_ckpt_dir: Path | None = Field(
        None, description="Local checkpoint of the multilingual model")
    chatterbox_turbo_ckpt_dir: Path | None = Field(None, description="Local checkpoint of the Turbo model")
    chatterbox_max_new_tokens: int = Field(
        LIBRARY_MAX_NEW_TOKENS, ge=1, le=LIBRARY_MAX_NEW_TOKENS,
        description="Speech-token cap per text chunk when a job sets no max_new_tokens")

    # -- jobs --------------------------------------------------------------------------
    stream_results: bool = Field(
        False, description="Register the generator handler: tts jobs stream audio chunks on /stream")
    reject_unknown_fields: bool = Field(
        True, description="Refuse jobs with fields outside the contract (false: ignore them with a warning)")
    tts_chunk_max_chars: int = Field(
        300, ge=20, le=5000, description="Longest text chunk spoken in one model call")
    max_audio_base64_mb: float = Field(
        10.0, gt=0, le=100, description="Largest base64 audio field a job may carry")
    max_result_mb: float = Field(
        10.0, gt=0, le=20, description="Largest inline base64 result; larger audio goes to the bucket")
    bucket_endpoint_url: str | None = Field(
        None, description="RunPod bucket for results over MAX_RESULT_MB (with the other BUCKET_* variables)")
    log_level: str = Field("INFO", description="Python logging level")
    max_concurrent_jobs: int | None = Field(
        None, ge=1, le=64, description="Jobs one worker runs at once; default 8 on a GPU, 2 on a CPU")

    # -- voice library -----------------------------------------------------------------
    voice_library_dir: Path | None = Field(
        None, description="Directory holding voice_catalog.json; default the shipped demo library")
    voice_cache_max_voices: int = Field(32, ge=0, description="Decoded voice clips kept in memory")
    voice_cache_max_mb: float = Field(512.0, ge=0, description="Memory bound of the decoded voice clips")
    voice_usage_flush_seconds: float = Field(
        60.0, gt=0, description="How often per-voice job counts are merged into voice_usage.json")
    preload_voices: str = Field(
        "", description="Voices to prepare at start-up, most used first: a count, 'all', or empty for none")
    preload_max_seconds: float = Field(300.0, gt=0, description="Time limit of start-up preloading")

    # -- conditionals cache ------------------------------------------------------------
    conditionals_cache_dir: str | None = Field(
        None, description="Disk tier of the conditionals cache; 'off' disables it; default the network "
                          "volume, else ~/.cache")
    conditionals_cache_max_mb: float = Field(512.0, ge=0, description="Memory bound of the conditionals cache")
    conditionals_disk_max_mb: float = Field(
        2048.0, ge=0, description="Disk bound of the conditionals cache, shared by every worker on the volume")

    # -- decode engine -----------------------------------------------------------------
    engine_max_slots: int | None = Field(
        None, ge=1, le=64,
        description="Jobs per model that share one T3 decode step (continuous batching); default the worker's concurrency")
    engine_max_context_tokens: int = Field(
        2048, ge=256, le=8192, description="KV cache length per job row: prompt, text and speech tokens")
    engine_kv_memory_fraction: float = Field(
        0.5, gt=0, le=0.95, description="Largest share of free GPU memory the T3 KV cache may take")
    t3_dtype: str = Field(
        "auto", pattern="^(auto|float32|bfloat16)$",
        description="T3 backbone precision: auto (bfloat16 on a GPU that has it, else float32), float32, bfloat16")
    cuda_graphs: str = Field(
        "auto", pattern="^(auto|off)$",
        description="Capture the T3 decode step as CUDA graphs at start-up (GPU only): auto or off")
    s3gen_max_batch: int = Field(
        8, ge=1, le=64,
        description="Most waiting S3Gen windows of unseeded jobs decoded in one call (1: each alone); seeded jobs are always decoded alone")
    s3gen_ragged_batch: bool = Field(
        False, description="Let waiting S3Gen windows of unequal length share a call (flow decoder over padded rows; "
                           "measured no faster on a CPU, see bench/s3gen_ragged.py)")

    # -- HTTP mode ---------------------------------------------------------------------
    worker_mode: str = Field(
        "queue", pattern="^(queue|http)$",
        description="queue: RunPod queue handler (handler.py); http: the HTTP server (server.py) for load-balancing endpoints")
    port: int = Field(8000, ge=1, le=65535, description="Port of the HTTP server (RunPod load balancing sets PORT)")
    port_health: int | None = Field(
        None, ge=1, le=65535, description="Port that answers GET /ping in HTTP mode; default the same as PORT")
    http_host: str = Field("0.0.0.0", description="Address the HTTP server binds to")
    api_key: str | None = Field(
        None, description="Bearer token the HTTP server requires on every route but /ping; unset: no token")
    max_request_mb: float = Field(
        25.0, gt=0, le=200, description="Largest HTTP request body, refused before it is read")
    openai_voice_aliases: str = Field(
        "alloy=Amy,ash=Aaron,ballad=Bella,coral=Dana,echo=Aaron,fable=Christopher,nova=Bella,onyx=Eric,"
        "sage=Dana,shimmer=Amy,verse=Eric",
        description="OpenAI voice names mapped to library voices: comma-separated name=voice pairs")
    stream_first_chunk_tokens: int = Field(
        12, ge=1, le=LIBRARY_MAX_NEW_TOKENS,
        description="Speech tokens in the first streamed window of /v1/audio/speech (short: fast first audio)")
    stream_chunk_tokens: int = Field(
        25, ge=1, le=LIBRARY_MAX_NEW_TOKENS,
        description="Speech tokens in each later streamed window of /v1/audio/speech")
    playground: bool = Field(
        True, description="Serve the playground page at / and /playground in HTTP mode (false: 404)")

    # -- long text ---------------------------------------------------------------------
    # A job's sentence chunks run side by side in the decode engine; one job holds at most
    # this many engine slots, so a chapter leaves the rest to the jobs beside it (4 is half
    # of a GPU worker's 8). 1 speaks the chunks one after another.
    job_chunk_slots: int = Field(
        4, ge=1, le=64, description="Most sentence chunks of one job drawing speech tokens at once (1: one after another)")
    stream_lookahead_chunks: int = Field(
        1, ge=0, le=4,
        description="Sentence chunks of a stream whose speech tokens are drawn while earlier audio is sent (0: none)")
    stream_windows_ahead: int = Field(
        1, ge=0, le=16,
        description="Windows of speech tokens a stream may draw ahead of the one being decoded (0: no bound)")

    # -- load and faults -----------------------------------------------------------------
    max_queued_requests: int = Field(
        8, ge=0, le=10000,
        description="Requests that may wait for a slot beyond the running ones; more are refused at once (HTTP 429)")
    queue_timeout_s: float = Field(
        60.0, gt=0, le=600,
        description="Longest wait for a slot before a request is refused (HTTP 429 with Retry-After)")
    request_timeout_s: float = Field(
        270.0, gt=0, le=3600,
        description="A job running longer is stopped with a clear error (with QUEUE_TIMEOUT_S, under RunPod's 5.5 min)")
    shutdown_grace_s: float = Field(
        30.0, ge=0, le=3600,
        description="On SIGTERM, how long jobs in flight may finish before they are cancelled with an error")

    # -- testing kit -------------------------------------------------------------------
    chatterbox_ckpt_cache: str = Field(
        "~/.cache/chatterbox-worker/checkpoints",
        description="Where the random-weights checkpoints of tests and benchmarks are cached (never in an image)")

    @field_validator("openai_voice_aliases")
    @classmethod
    def _aliases(cls, value: str) -> str:
        for pair in filter(None, (p.strip() for p in value.split(","))):
            alias, sep, voice = pair.partition("=")
            if not sep or not alias.strip() or not voice.strip():
                raise ValueError(f"{pair!r}: write name=voice pairs, e.g. alloy=Amy")
        return value

    @field_validator("chatterbox_models")
    @classmethod
    def _known_models(cls, value: str) -> str:
        names = [n.strip().lower() for n in value.split(",") if n.strip()]
        unknown = sorted(set(names) - set(MODEL_VARIANTS))
        if unknown or not names:
            raise ValueError(f"{value!r}: choose from {', '.join(MODEL_VARIANTS)}")
        return ",".join(dict.fromkeys(names))

    @field_validator("preload_voices")
    @classmethod
    def _preload(cls, value: str) -> str:
        value = value.strip().lower()
        if value and value != "all" and not (value.isdigit() and int(value) > 0):
            raise ValueError(f"{value!r}: give a positive count, 'all', or leave it empty")
        return value

    @field_validator("log_level")
    @classmethod
    def _level(cls, value: str) -> str:
        if not isinstance(logging.getLevelName(value.upper()), int):
            raise ValueError(f"{value!r} is not a logging level")
        return value.upper()

    # -- derived values ----------------------------------------------------------------

    @property
    def models(self) -> list[str]:
        return self.chatterbox_models.split(",")

    def checkpoint_dir(self, variant: str) -> Path | None:
        """The variant's local checkpoint directory (its registry entry names the field)."""
        return getattr(self, variant_spec(variant).checkpoint_setting)

    @property
    def conditionals_disk_dir(self) -> Path | None:
        configured = self.conditionals_cache_dir
        if configured:
            return None if configured.strip().lower() in _OFF else Path(configured).expanduser()
        if RUNPOD_VOLUME.is_dir():
            return RUNPOD_VOLUME / "chatterbox-worker" / "conditionals"
        return Path.home() / ".cache" / "chatterbox-worker" / "conditionals"

    @property
    def voice_aliases(self) -> dict[str, str]:
        """OPENAI_VOICE_ALIASES as {alias (lower case): library voice}."""
        pairs = (p.partition("=") for p in self.openai_voice_aliases.split(",") if p.strip())
        return {alias.strip().lower(): voice.strip() for alias, _, voice in pairs}

    @property
    def health_port(self) -> int:
        return self.port_health or self.port

    def concurrent_jobs(self, on_gpu: bool) -> int:
        """Jobs in flight per worker: ``MAX_CONCURRENT_JOBS``, or what the device takes well."""
        if self.max_concurrent_jobs is not None:
            return self.max_concurrent_jobs
        return GPU_CONCURRENT_JOBS if on_gpu else CPU_CONCURRENT_JOBS

    @staticmethod
    def env_name(field: str) -> str:
        return field.upper()


def _describe(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors(include_url=False):
        name = Settings.env_name(str(error["loc"][0])) if error["loc"] else "settings"
        parts.append(f"{name}: {error['msg'].removeprefix('Value error, ')}")
    return "; ".join(parts)


@functools.lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings, read from the environment once."""
    try:
        return Settings()
    except ValidationError as exc:
        raise SettingsError(_describe(exc)) from None


def reload_settings() -> Settings:
    """Read the environment again (tests change it between cases)."""
    get_settings.cache_clear()
    return get_settings()


def mb_to_bytes(megabytes: float) -> int:
    return int(megabytes * MB)


def set_library_env_defaults() -> None:
    """LIBRARY_ENV_DEFAULTS in this process, where the caller has not set them."""
    for name, value in LIBRARY_ENV_DEFAULTS.items():
        os.environ.setdefault(name, value)


def child_environment(**overrides: str) -> dict[str, str]:
    """The environment for a child process: this one's, LIBRARY_ENV_DEFAULTS where unset,
    then ``overrides``."""
    return {**LIBRARY_ENV_DEFAULTS, **os.environ, **overrides}


@contextlib.contextmanager
def environment_overrides(**values: str) -> Iterator[None]:
    """Set ``values`` in this process's environment for the block, then put back what was."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
