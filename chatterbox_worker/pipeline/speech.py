"""The speech pipeline every generating operation runs, one function per step.

voice prompt (``voice_sources``) → :func:`conditionals` (cache) → :func:`speak` /
:func:`speak_stream` / :func:`convert` (audio) → :func:`encode_output` (response audio).

TTS, streaming, cloning, conversion and transfer all pass through these functions, and so
through the one out-of-memory policy (:func:`with_memory_retry`): free the conditionals
cache and the allocator, retry once, then fail with a server error. The model is anything
with the :class:`SpeechModel` methods: the real ``OptimizedChatterboxTTS`` or the unit
tests' stub. This module imports no torch.
"""
from __future__ import annotations

import logging
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from chatterbox_worker.audio.codec import encode_audio, join_audio_chunks, normalize_audio, resample
from chatterbox_worker.conditionals.cache import CacheKey
from chatterbox_worker.contract.delivery import deliver_audio
from chatterbox_worker.contract.errors import JobError, OutOfMemoryJobError, is_out_of_memory
from chatterbox_worker.contract.limits import MAX_SEED
from chatterbox_worker.models.interface import SpeechModel
from chatterbox_worker.models.options import GenerationOptions
from chatterbox_worker.models.registry import variant_spec
from chatterbox_worker.pipeline.job_metrics import Timer, note_memory_retries
from chatterbox_worker.pipeline.text_chunking import split_text
from chatterbox_worker.voices.sources import VoicePrompt

if TYPE_CHECKING:
    from chatterbox_worker.serving.worker import Worker

logger = logging.getLogger(__name__)

T = TypeVar("T")
Progress = Callable[[int, int], None]
# Exaggeration of conditionals that only S3Gen reads (conversion, preloading): T3's
# emotion input is rebuilt per call, so the cached entry serves every exaggeration.
NEUTRAL_EXAGGERATION = 0.5




# -- out of memory ---------------------------------------------------------------------

def free_memory(worker: Worker) -> None:
    logger.warning("out of device memory; evicting cached conditionals and freeing the allocator")
    if worker.cache is not None:
        worker.cache.evict(1.0)
    for model in worker.models.values():
        model.release_memory()


def _memory_exhausted() -> OutOfMemoryJobError:
    return OutOfMemoryJobError("model", "out of GPU memory even after freeing the cache; try shorter text "
                                        "or fewer concurrent jobs")


def with_memory_retry(worker: Worker, call: Callable[[], T]) -> T:
    """``call()``; on out-of-memory, free what the worker holds and try once more."""
    try:
        return call()
    except Exception as exc:
        if not is_out_of_memory(exc):
            raise
        free_memory(worker)
        note_memory_retries()
    try:
        return call()
    except Exception as exc:
        if is_out_of_memory(exc):
            raise _memory_exhausted() from exc
        raise


def stream_with_memory_retry(worker: Worker, produce: Callable[[], Iterator[T]]) -> Iterator[T]:
    """The same policy for a stream: retried only while nothing has been yielded yet,
    since a client that already has audio cannot be sent the start again."""
    yielded = False
    for attempt in (1, 2):
        try:
            for item in produce():
                yielded = True
                yield item
            return
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
            if yielded or attempt == 2:
                raise _memory_exhausted() from exc
            free_memory(worker)
            note_memory_retries()


# -- conditionals ----------------------------------------------------------------------

def _computed_conditionals(worker: Worker, model: SpeechModel, prompt: VoicePrompt, exaggeration: float,
                           use_cache: bool) -> tuple[Any, str]:
    if worker.conditioner is not None:
        return worker.conditioner(model, prompt, exaggeration, use_cache)

    def build():
        return model.prepare_conditionals_from_array(prompt.samples, prompt.sample_rate, exaggeration)

    if not use_cache or worker.cache is None:
        return build(), "computed"
    # A one-off upload is kept in memory only: written to disk it would never be read again.
    lookup = worker.cache.get_or_build(CacheKey(model.variant, prompt.content_hash), build,
                                       persist=prompt.source == "library")
    return lookup.conditionals, lookup.source


def conditionals(worker: Worker, model: SpeechModel, prompt: VoicePrompt | None, exaggeration: float,
                 use_cache: bool, *, count_use: bool = True) -> tuple[Any, str | None]:
    """The model's conditionals for a voice (the built-in one for None) and where they came from."""
    if prompt is None:
        return model.default_conditionals(), None
    if count_use and worker.usage is not None and prompt.voice_id:
        worker.usage.record(prompt.voice_id)
    min_seconds = getattr(model, "min_prompt_seconds", 0.0)
    if prompt.duration <= min_seconds:
        raise JobError(prompt.field, f"is {prompt.duration:.2f} s long; the {model.variant} model needs "
                                     f"a voice longer than {min_seconds:g} s")
    return with_memory_retry(worker, lambda: _computed_conditionals(worker, model, prompt, exaggeration, use_cache))


# -- generation ------------------------------------------------------------------------

def new_seed() -> int:
    return secrets.randbelow(MAX_SEED + 1)


@dataclass(frozen=True)
class SpeechJob:
    """Everything a speech operation has decided before it generates."""

    model: SpeechModel
    prompt: VoicePrompt | None
    conditionals: Any
    cache_source: str | None
    seed: int
    options: GenerationOptions


def prepare_speech(worker: Worker, request: Any, prompt: VoicePrompt | None, timer: Timer, *,
                   exaggeration: float, cfg_weight: float) -> SpeechJob:
    """Conditionals and generation options for a ``tts`` or ``voice_cloning`` request."""
    model = worker.model_for(request.model)
    with timer.measure("conditionals_ms"):
        conds, source = conditionals(worker, model, prompt, exaggeration, request.cache)
    seed = request.seed if request.seed is not None else new_seed()
    # The request sets every sampling knob; the variant's defaults fill the rest (top_k).
    options = variant_spec(model.variant).options(
        exaggeration=exaggeration, cfg_weight=cfg_weight, temperature=request.temperature,
        repetition_penalty=request.repetition_penalty, min_p=request.min_p, top_p=request.top_p,
        max_new_tokens=request.max_new_tokens, seed=seed, language_id=request.effective_language_id,
        # A drawn seed lets the job's S3Gen windows share calls (model.run_s3gen).
        exact_seed=request.seed is not None)
    return SpeechJob(model, prompt, conds, source, seed, options)


def speak(worker: Worker, job: SpeechJob, text: str, progress: Progress | None = None) -> np.ndarray:
    """Long text is spoken sentence-chunk by chunk with one voice, then joined."""
    chunks = split_text(text) or [text]
    parts = []
    for chunk in chunks:
        parts.append(with_memory_retry(
            worker, lambda: job.model.synthesize(chunk, conditionals=job.conditionals, options=job.options)))
        if progress is not None and len(chunks) > 1:
            progress(len(parts), len(chunks))
    return join_audio_chunks(parts, job.model.sr)


def speak_stream(worker: Worker, job: SpeechJob, text: str, chunk_size: int,
                 first_chunk_size: int | None = None) -> Iterator[np.ndarray]:
    """Audio windows for ``text``, each yielded the moment the model has decoded it.

    ``first_chunk_size`` makes the stream's first window shorter than the rest, so that the
    first audio leaves early; later sentence chunks use ``chunk_size`` throughout.
    """
    for index, sentence_chunk in enumerate(split_text(text) or [text]):
        first = {"first_chunk_size": first_chunk_size} if index == 0 and first_chunk_size else {}
        windows = stream_with_memory_retry(worker, lambda: job.model.stream(
            sentence_chunk, conditionals=job.conditionals, options=job.options, chunk_size=chunk_size, **first))
        for wav in windows:
            if wav.size:  # an empty window (the model stopped right after a full one) is no chunk
                yield wav


def convert(worker: Worker, model: SpeechModel, source: VoicePrompt, target_conditionals: Any, *,
            watermark: bool, seed: int, exact_seed: bool = True) -> np.ndarray:
    """``source`` spoken in the target voice (S3Gen voice conversion)."""
    return with_memory_retry(worker, lambda: model.convert_voice(
        source.samples, source.sample_rate, target_conditionals, watermark=watermark, seed=seed,
        exact_seed=exact_seed))


# -- output ----------------------------------------------------------------------------

def encode_output(wav: np.ndarray, model_sr: int, *, output_format: str, sample_rate: int | None = None,
                  normalization: str | None = None, key: str = "audio") -> tuple[dict[str, str], int]:
    """Normalise, resample, encode and deliver: ({key: base64} or {key_url: url}, sample rate)."""
    wav = normalize_audio(wav, normalization)
    out_sr = sample_rate or model_sr
    wav = resample(wav, model_sr, out_sr)
    return deliver_audio(encode_audio(wav, out_sr, output_format), output_format, key=key), out_sr
