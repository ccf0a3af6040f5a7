"""The speech pipeline every generating operation runs, one function per step.

voice prompt (``voices.sources``) → :func:`conditionals` (cache) → :func:`speak` /
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

from chatterbox_worker.audio.codec import encode_audio, normalize_audio, resample
from chatterbox_worker.conditionals.cache import CacheKey
from chatterbox_worker.contract.delivery import deliver_audio
from chatterbox_worker.contract.errors import JobError, OutOfMemoryJobError, is_out_of_memory
from chatterbox_worker.contract.limits import MAX_SEED
from chatterbox_worker.models.interface import SpeechModel
from chatterbox_worker.models.options import GenerationOptions
from chatterbox_worker.models.registry import variant_spec
from chatterbox_worker.pipeline.chunk_plan import (
    Chunk,
    Joiner,
    chunk_chars,
    chunk_seed,
    chunk_token_cap,
    chunks_of,
    plan_text,
    silence,
)
from chatterbox_worker.pipeline.job_metrics import Timer, note_memory_retries
from chatterbox_worker.pipeline.parallel_chunks import chunk_audio
from chatterbox_worker.pipeline.pause_tags import Silence
from chatterbox_worker.settings import get_settings
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


class OpenedStream:
    """A stream opened now (``produce()`` is called at once, so the model submits its
    tokens now), read later under the memory policy of :func:`stream_with_memory_retry`.
    ``close`` cancels it whether or not it was read."""

    def __init__(self, worker: Worker, produce: Callable[[], Iterator[T]]):
        self._produce = produce
        try:
            self._first: Iterator[T] | None = produce()
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
            self._first = None  # the retry below frees memory and opens it again
        self._current: Iterator[T] | None = None
        self._windows = stream_with_memory_retry(worker, self._take)

    def _take(self) -> Iterator[T]:
        first, self._first = self._first, None
        self._current = first if first is not None else self._produce()
        return self._current

    def __iter__(self) -> OpenedStream:
        return self

    def __next__(self) -> T:
        return next(self._windows)

    def close(self) -> None:
        self._windows.close()
        for windows in (self._first, self._current):
            if windows is not None:
                _close(windows)
        self._first = self._current = None


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
        max_new_tokens=chunk_token_cap(model.variant, request.max_new_tokens), seed=seed, language_id=request.effective_language_id,
        # A drawn seed lets the job's S3Gen windows share calls (model.run_s3gen).
        exact_seed=request.seed is not None)
    return SpeechJob(model, prompt, conds, source, seed, options)


def _chunk_options(options: GenerationOptions, index: int) -> GenerationOptions:
    return options if options.seed is None else options.but(seed=chunk_seed(options.seed, index))


def speak_blocks(worker: Worker, job: SpeechJob, text: str, progress: Progress | None = None,
                 *, slots: int | None = None) -> Iterator[np.ndarray]:
    """The job's audio in text order, block by block (see :class:`chunk_plan.Joiner`).

    The text's chunks (within the variant's bound) are decoded side by side, at most
    ``slots`` at once (default JOB_CHUNK_SLOTS; see :mod:`parallel_chunks`), each with its
    own seed derived from the job's; pause tags become exact silence. ``progress(done,
    total)`` counts finished chunks. Raises ``JobError('text', ...)`` on a bad pause tag.
    """
    plan = plan_text(text, chunk_chars(job.model.variant))
    joiner = Joiner(plan, job.model.sr)

    def synthesize(chunk: Chunk) -> np.ndarray:
        options = _chunk_options(job.options, chunk.index)
        return with_memory_retry(worker, lambda: job.model.synthesize(
            chunk.text, conditionals=job.conditionals, options=options))

    slots = slots or get_settings().job_chunk_slots
    for wav in chunk_audio(chunks_of(plan), synthesize, slots=slots, progress=progress):
        yield from joiner.add(wav)
    yield from joiner.finish()


def speak(worker: Worker, job: SpeechJob, text: str, progress: Progress | None = None) -> np.ndarray:
    """Long text is spoken sentence-chunk by chunk with one voice (chunks side by side),
    then joined: float32 at the model's rate."""
    blocks = list(speak_blocks(worker, job, text, progress))
    return np.concatenate(blocks) if blocks else np.zeros(0, dtype=np.float32)


def _open_stream(worker: Worker, job: SpeechJob, chunk: Chunk, chunk_size: int,
                 first_chunk_size: int | None) -> Iterator[np.ndarray]:
    first = {"first_chunk_size": first_chunk_size} if chunk.index == 0 and first_chunk_size else {}
    options = _chunk_options(job.options, chunk.index)
    return OpenedStream(worker, lambda: job.model.stream(
        chunk.text, conditionals=job.conditionals, options=options, chunk_size=chunk_size, **first))


def speak_stream(worker: Worker, job: SpeechJob, text: str, chunk_size: int,
                 first_chunk_size: int | None = None) -> Iterator[np.ndarray]:
    """Audio windows for ``text``, each yielded the moment the model has decoded it.

    ``first_chunk_size`` makes the stream's first window shorter than the rest, so that the
    first audio leaves early; later sentence chunks use ``chunk_size`` throughout. Once a
    chunk's first window is decoded, the next STREAM_LOOKAHEAD_CHUNKS chunks are opened:
    their prefill and first speech tokens run while this chunk's later windows are decoded
    and sent, so a sentence boundary leaves no gap (never their audio: each window is
    decoded only when its turn comes, and each chunk's T3 is paced, STREAM_WINDOWS_AHEAD).
    Opening them only after the first window keeps their prefill off the first audio and
    off the boundary window. A pause tag is one window of exact silence.
    """
    plan = plan_text(text, chunk_chars(job.model.variant))
    lookahead = get_settings().stream_lookahead_chunks
    opened: dict[int, Iterator[np.ndarray]] = {}
    chunks = chunks_of(plan)
    try:
        for item in plan:
            if isinstance(item, Silence):
                yield silence(item.seconds, job.model.sr)
                continue
            windows = opened.pop(item.index, None) or _open_stream(worker, job, item, chunk_size, first_chunk_size)
            try:
                for number, wav in enumerate(windows):
                    if number == 0:  # after this chunk's first window, so its prefill never delays that one
                        for ahead in chunks[item.index + 1:item.index + 1 + lookahead]:
                            if ahead.index not in opened:
                                opened[ahead.index] = _open_stream(worker, job, ahead, chunk_size, first_chunk_size)
                    if wav.size:  # an empty window (the model stopped right after a full one) is no chunk
                        yield wav
            finally:
                _close(windows)
    finally:
        for windows in opened.values():  # a consumer that stops early cancels the chunks opened ahead
            _close(windows)


def _close(windows: Iterator[np.ndarray]) -> None:
    close = getattr(windows, "close", None)
    if close is not None:
        close()


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
