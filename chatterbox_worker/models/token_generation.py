"""Generation through the decode engine: the one ``synthesize`` / ``stream`` pair.

Speech tokens come from the model's T3 engine (:mod:`chatterbox_worker.engine`): every call from
any thread becomes a job there, batched with the others into shared T3 steps, drawing from
its own seeded generator. ``synthesize`` decodes the tokens once at the end; ``stream``
decodes each window on the calling thread as soon as its tokens are drawn, while the engine
goes on. Each variant says how its text and options become a :class:`DecodeJob`
(``decode_job``); everything after that is shared.
"""
from __future__ import annotations

import math
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from chatterbox.models.t3.modules.cond_enc import T3Cond
from chatterbox.tts import Conditionals

from chatterbox_worker.engine import EngineConfig, SamplingParams, T3Engine, TokenStream
from chatterbox_worker.engine.cancellation import raise_if_cancelled
from chatterbox_worker.models.interface import ModelStats
from chatterbox_worker.models.options import GenerationOptions
from chatterbox_worker.models.registry import VariantSpec
from chatterbox_worker.models.s3gen_windows import SPEECH_VOCAB_SIZE, decode_window, stream_windows
from chatterbox_worker.pipeline.job_metrics import note_memory_retries
from chatterbox_worker.pipeline.parallel_chunks import tokens_drawn
from chatterbox_worker.settings import get_settings

SPEECH_START_TOKEN = SPEECH_VOCAB_SIZE  # T3's start-of-speech token (hp.start_speech_token)
DEFAULT_CHUNK_TOKENS = 50
# Two threads may ask for a model's engine at once; one builds it.
_ENGINE_CREATION = threading.Lock()


def engine_config(on_gpu: bool) -> EngineConfig:
    """The decode engine's settings from the worker's: as many slots as jobs it takes at once
    (more would only reserve memory), unless ENGINE_MAX_SLOTS says otherwise."""
    s = get_settings()
    return EngineConfig(max_slots=s.engine_max_slots or s.concurrent_jobs(on_gpu),
                        max_context_tokens=s.engine_max_context_tokens, dtype=s.t3_dtype,
                        cuda_graphs=s.cuda_graphs, kv_memory_fraction=s.engine_kv_memory_fraction)


@dataclass
class DecodeJob:
    """One generation, ready to decode: T3's inputs and sampling settings for the engine,
    the voice's S3Gen conditionals and the variant's S3Gen steps for the windows."""

    t3_cond: T3Cond
    text_tokens: torch.Tensor
    params: SamplingParams
    gen: dict
    # Turbo ends every utterance with a little silence and decodes with fewer flow steps.
    tail: torch.Tensor | None = None
    n_cfm_timesteps: int | None = None
    # Basic mode of the standard and multilingual models decodes what the library's
    # drop_invalid_tokens keeps: tokens after a sampled start-of-speech token.
    cut_at_start_token: bool = True
    # False when the seed was drawn for the job rather than asked for: its S3Gen windows may
    # then share calls with other jobs' (see run_s3gen).
    exact_seed: bool = True


def cfg_text_batch(tokens: torch.Tensor, hp) -> torch.Tensor:
    """Text tokens as T3 takes them: a batch of two (conditional, unconditional), framed by
    the start and stop text tokens. Always two rows: T3 inference assumes it, and the
    library's own generate crashes on cfg_weight=0 because it then passes one."""
    tokens = torch.cat([tokens, tokens], dim=0)
    tokens = torch.nn.functional.pad(tokens, (1, 0), value=hp.start_text_token)
    return torch.nn.functional.pad(tokens, (0, 1), value=hp.stop_text_token)


def token_cap(max_new_tokens: int | None) -> int:
    """A job's speech-token cap, or the configured default."""
    return max_new_tokens or get_settings().chatterbox_max_new_tokens


def sampling_params(options: GenerationOptions) -> SamplingParams:
    """The engine's sampling settings for the standard and multilingual loops."""
    return SamplingParams(max_new_tokens=token_cap(options.max_new_tokens), temperature=options.temperature,
                          top_p=options.top_p, min_p=options.min_p, top_k=options.top_k,
                          repetition_penalty=options.repetition_penalty, cfg_weight=options.cfg_weight,
                          seed=options.seed)


def _flush_every(chunk_size: int, first_chunk_size: int | None) -> int:
    """Tokens are handed over in groups that divide every window, so no window waits."""
    return math.gcd(first_chunk_size, chunk_size) if first_chunk_size else chunk_size


def _max_ahead(chunk_size: int, first_chunk_size: int | None) -> int | None:
    """A stream's pace (STREAM_WINDOWS_AHEAD): T3 may draw this many tokens beyond those its
    S3Gen decode has taken, so the next window is ready when the current one is sent, and
    the compute beyond that goes to the decode in progress (and to the jobs beside it)."""
    windows = get_settings().stream_windows_ahead
    return windows * max(chunk_size, first_chunk_size or 0) if windows else None


class WindowStream:
    """A stream's windows; ``close`` also cancels its engine job when no window was taken
    yet (closing a generator that never started runs none of its code)."""

    def __init__(self, windows: Iterator[np.ndarray], tokens: TokenStream):
        self._windows, self._tokens = windows, tokens

    def __iter__(self) -> WindowStream:
        return self

    def __next__(self) -> np.ndarray:
        return next(self._windows)

    def close(self) -> None:
        close = getattr(self._windows, "close", None)
        if close is not None:
            close()
        self._tokens.close()


class EngineGenerationMixin:
    """A model's T3 engine and the generation calls that run through it.

    Mixed in before a Chatterbox library class (which provides ``t3``); the class provides
    ``spec`` (its registry entry) and ``decode_job``.
    """

    spec: VariantSpec

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._t3_engine: T3Engine | None = None

    # -- the decode engine -------------------------------------------------------------

    def _create_engine(self) -> T3Engine:
        """A started T3 engine for this model's T3, with the variant's recipe."""
        config = engine_config(on_gpu=self.t3.device.type == "cuda")
        engine = T3Engine(self.t3, self.spec.recipe, config)
        engine.start()
        return engine

    @property
    def engine(self) -> T3Engine:
        """This model's T3 engine, started on first use (thread-safe)."""
        if self._t3_engine is None:
            with _ENGINE_CREATION:
                if self._t3_engine is None:
                    self._t3_engine = self._create_engine()
        return self._t3_engine

    def close(self) -> None:
        """Stop this model's T3 engine, so that the model can be freed."""
        with _ENGINE_CREATION:
            engine, self._t3_engine = self._t3_engine, None
        if engine is not None:
            engine.stop()

    def engine_stats(self) -> ModelStats:
        """Counters of the T3 engine (jobs, tokens, steps, out-of-memory retries; None before it
        starts) and of the S3Gen lane (calls, windows, calls shared by several windows)."""
        engine = self._t3_engine.stats() if self._t3_engine is not None else None
        return ModelStats(engine, self.s3gen_lane.stats())

    def warm_up(self) -> None:
        """Start the engine now: allocate its KV cache and, on a GPU, capture its CUDA graphs."""
        self.engine  # noqa: B018 - the property starts it

    # -- generation --------------------------------------------------------------------

    @property
    def generation_defaults(self) -> GenerationOptions:
        """The options ``synthesize`` and ``stream`` use when given none (the variant's)."""
        return self.spec.defaults

    def options(self, **changes: Any) -> GenerationOptions:
        """The variant's default options with some fields changed."""
        return self.spec.options(**changes)

    def decode_job(self, text: str, conditionals: Conditionals | None, options: GenerationOptions) -> DecodeJob:
        """The variant's steps from text, voice and options to a job for the engine."""
        raise NotImplementedError

    def synthesize(self, text: str, *, conditionals: Conditionals | None = None,
                   options: GenerationOptions | None = None) -> np.ndarray:
        """Text to a float32 waveform at ``self.sr``: every token first, then one S3Gen decode.

        ``conditionals`` None speaks in the checkpoint's built-in voice; ``options`` None
        uses the variant's defaults.
        """
        options = options or self.generation_defaults
        job = self.decode_job(text, conditionals, options)
        tokens_stream = self.speech_tokens(job, flush_every=None)
        tokens = list(tokens_stream)
        tokens_drawn()  # a chunk decoded side by side frees its T3 slot while S3Gen decodes it
        note_memory_retries(tokens_stream.retries)  # the engine replayed the job after running out of memory
        if job.cut_at_start_token and SPEECH_START_TOKEN in tokens:
            tokens = tokens[tokens.index(SPEECH_START_TOKEN) + 1:]
        raise_if_cancelled()  # a job nobody waits for skips its S3Gen decode
        wav = decode_window(self, tokens, 0, job.gen, tail=job.tail, n_cfm_timesteps=job.n_cfm_timesteps,
                            seed=job.params.seed, exact_seed=job.exact_seed)
        return self._watermark(wav) if options.watermark else wav

    def stream(self, text: str, *, conditionals: Conditionals | None = None,
               options: GenerationOptions | None = None, chunk_size: int = DEFAULT_CHUNK_TOKENS,
               first_chunk_size: int | None = None) -> Iterator[np.ndarray]:
        """Yield audio every ``chunk_size`` speech tokens (the first window:
        ``first_chunk_size``) while T3 is still sampling.

        The job is built and submitted here, so a bad option fails the call rather than the
        first window, and its tokens are already drawn while the caller is busy with earlier
        audio (a long stream opens its next sentence early). Close the stream to cancel it.
        """
        options = options or self.generation_defaults
        job = self.decode_job(text, conditionals, options)
        tokens = self.speech_tokens(job, flush_every=_flush_every(chunk_size, first_chunk_size),
                                    max_ahead=_max_ahead(chunk_size, first_chunk_size))
        return WindowStream(self._stream(job, chunk_size, options.watermark, first_chunk_size, tokens), tokens)

    def speech_tokens(self, job: DecodeJob, *, forced_tokens: list[int] | None = None,
                      flush_every: int | None = 1, max_ahead: int | None = None) -> TokenStream:
        """The job's speech tokens as the engine draws them (its stop token excluded),
        handed over every ``flush_every`` tokens (None: all at the end), at most
        ``max_ahead`` of them waiting for the caller (None: no bound)."""
        return self.engine.submit(job.t3_cond, job.text_tokens, job.params, forced_tokens=forced_tokens,
                                  flush_every=flush_every, max_ahead=max_ahead)

    def _stream(self, job: DecodeJob, chunk_size: int, watermark: bool,
                first_chunk_size: int | None = None, tokens: TokenStream | None = None) -> Iterator[np.ndarray]:
        """Each window of ``chunk_size`` tokens (the first: ``first_chunk_size``) is decoded
        as soon as it is drawn (from ``tokens`` when the job is already submitted)."""
        if tokens is None:
            tokens = self.speech_tokens(job, flush_every=_flush_every(chunk_size, first_chunk_size))
        try:
            for wav in stream_windows(self, tokens, job.gen, chunk_size=chunk_size, watermark=watermark,
                                      tail=job.tail, n_cfm_timesteps=job.n_cfm_timesteps, seed=job.params.seed,
                                      exact_seed=job.exact_seed, first_chunk_size=first_chunk_size):
                yield wav
                raise_if_cancelled()  # before the next window's S3Gen decode
        finally:
            tokens.close()  # a consumer that stops early cancels the job in the engine
            note_memory_retries(tokens.retries)
