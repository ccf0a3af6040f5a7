"""Every job type, from a validated request to a JSON-ready response.

The data path of a speech job, one function per step:
request → :func:`voice_sources.resolve_voice` (prompt array) → ``Worker.conditionals``
(cache) → model ``synthesize``/``stream`` (audio) → :func:`encode_output` (response).

The model is anything with the :class:`SpeechModel` methods: the real
``OptimizedChatterboxTTS``, or the stub the unit tests use. This module imports no torch.
"""
from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from audio_io import encode_audio, encode_audio_base64, join_audio_chunks, normalize_audio, resample
from conditionals_cache import CacheKey, ConditionalsCache
from job_errors import JobError
from optimized_voice_library import OptimizedVoiceLibrary
from request_schema import (
    MAX_SEED,
    ListVoicesRequest,
    Request,
    SearchVoicesRequest,
    TTSRequest,
    UploadVoiceRequest,
    VoiceCloningRequest,
    VoiceConversionRequest,
    VoiceTransferRequest,
)
from result_delivery import deliver_audio
from text_chunking import split_text
from voice_sources import (
    MAX_CLONE_SECONDS,
    MIN_CLONE_SECONDS,
    VoicePrompt,
    library_voice,
    resolve_voice,
    uploaded_voice,
)
from voice_usage import VoiceUsage

logger = logging.getLogger(__name__)

# Input audio for conversion: longer clips are cut, as the deployed worker did.
MAX_CONVERSION_INPUT_SECONDS = 120.0
MS = 1000.0


class SpeechModel(Protocol):
    sr: int
    variant: str

    def prepare_conditionals_from_array(self, samples: np.ndarray, sample_rate: int,
                                        exaggeration: float = 0.5) -> Any: ...
    def default_conditionals(self) -> Any: ...
    def synthesize(self, text: str, **kwargs: Any) -> np.ndarray: ...
    def stream(self, text: str, **kwargs: Any) -> Iterator[np.ndarray]: ...
    def convert_voice(self, samples: np.ndarray, sample_rate: int, target: Any, **kwargs: Any) -> np.ndarray: ...
    def release_memory(self) -> None: ...


# (model, prompt, exaggeration, use_cache) -> (conditionals, cache source)
Conditioner = Callable[[SpeechModel, VoicePrompt, float, bool], tuple[Any, str]]


@dataclass
class Timer:
    """Wall-clock milliseconds per named stage of one job."""

    start: float = field(default_factory=time.perf_counter)
    stages: dict[str, float] = field(default_factory=dict)

    def measure(self, stage: str):
        timer = self

        class _Stage:
            def __enter__(self):
                self.t0 = time.perf_counter()

            def __exit__(self, *exc):
                timer.stages[stage] = timer.stages.get(stage, 0.0) + (time.perf_counter() - self.t0) * MS

        return _Stage()

    def metrics(self, audio_seconds: float, cache_source: str | None) -> dict[str, Any]:
        generation_ms = self.stages.get("generation_ms", 0.0)
        return {
            "voice_load_ms": round(self.stages.get("voice_load_ms", 0.0), 3),
            "conditionals_ms": round(self.stages.get("conditionals_ms", 0.0), 3),
            "generation_ms": round(generation_ms, 3),
            "encode_ms": round(self.stages.get("encode_ms", 0.0), 3),
            "total_ms": round((time.perf_counter() - self.start) * MS, 3),
            "audio_seconds": round(audio_seconds, 4),
            "rtf": round(generation_ms / MS / audio_seconds, 4) if audio_seconds > 0 else None,
            "cache_hit": cache_source in ("memory", "disk"),
            "cache_source": cache_source,
        }


def is_out_of_memory(exc: BaseException) -> bool:
    # torch.cuda.OutOfMemoryError, matched by name so that this module needs no torch.
    return type(exc).__name__ == "OutOfMemoryError" or "CUDA out of memory" in str(exc)


def encode_output(wav: np.ndarray, model_sr: int, *, output_format: str, sample_rate: int | None = None,
                  normalization: str | None = None, key: str = "audio") -> tuple[dict[str, str], int]:
    """Normalise, resample, encode and deliver: ({key: base64} or {key_url: url}, sample rate)."""
    wav = normalize_audio(wav, normalization)
    out_sr = sample_rate or model_sr
    wav = resample(wav, model_sr, out_sr)
    return deliver_audio(encode_audio(wav, out_sr, output_format), output_format, key=key), out_sr


def stream_audio(model: SpeechModel, text: str, conds: Any, chunk_size: int,
                 sampling: dict[str, Any]) -> Iterator[np.ndarray]:
    """Audio chunks for ``text``, sentence chunk by sentence chunk, as the model makes them."""
    for sentence_chunk in split_text(text) or [text]:
        for wav in model.stream(sentence_chunk, conditionals=conds, chunk_size=chunk_size, **sampling):
            if wav.size:  # an empty window (the model stopped right after a full one) is no chunk
                yield wav


def chunk_detail(index: int, samples: int, sample_rate: int, latency_s: float) -> dict[str, Any]:
    return {"chunk_index": index, "samples": int(samples), "duration": round(samples / sample_rate, 4),
            "latency": round(latency_s, 4)}


def streaming_metrics(details: list[dict[str, Any]], generation_s: float, audio_s: float) -> dict[str, Any]:
    """The contract's ``streaming_metrics``; latencies are seconds since generation started."""
    return {
        "total_chunks": len(details),
        "first_chunk_latency": details[0]["latency"] if details else None,
        "total_generation_time": round(generation_s, 4),
        "audio_duration": round(audio_s, 4),
        "rtf": round(generation_s / audio_s, 4) if audio_s > 0 else None,
        "chunk_details": details,
    }


def new_seed() -> int:
    return secrets.randbelow(MAX_SEED + 1)


@dataclass(frozen=True)
class _TTSJob:
    """What every tts mode has decided before generating."""

    model: SpeechModel
    prompt: VoicePrompt | None
    conds: Any
    source: str | None
    seed: int
    sampling: dict[str, Any]


class Worker:
    """Serves validated requests with loaded models, the voice library and the cache."""

    def __init__(self, models: dict[str, SpeechModel], library: OptimizedVoiceLibrary,
                 cache: ConditionalsCache | None = None, conditioner: Conditioner | None = None,
                 disabled_models_hint: str = "CHATTERBOX_MODELS", usage: VoiceUsage | None = None):
        self.models = models
        self.library = library
        self.cache = cache
        self.usage = usage
        self._conditioner = conditioner or self._array_conditionals
        self._hint = disabled_models_hint
        self._lock = threading.Lock()

    # -- steps -------------------------------------------------------------------------

    def model_for(self, variant: str) -> SpeechModel:
        model = self.models.get(variant)
        if model is None:
            loaded = ", ".join(sorted(self.models)) or "none"
            raise JobError("model", f"model {variant!r} is not loaded on this worker (loaded: {loaded}); "
                                    f"add it to {self._hint}, e.g. {self._hint}=standard,{variant}")
        return model

    def _array_conditionals(self, model: SpeechModel, prompt: VoicePrompt, exaggeration: float,
                            use_cache: bool) -> tuple[Any, str]:
        def build():
            return model.prepare_conditionals_from_array(prompt.samples, prompt.sample_rate, exaggeration)

        if not use_cache or self.cache is None:
            return build(), "computed"
        lookup = self.cache.get_or_build(CacheKey(model.variant, prompt.content_hash), build)
        return lookup.conditionals, lookup.source

    def conditionals(self, model: SpeechModel, prompt: VoicePrompt | None, exaggeration: float,
                     use_cache: bool, count_use: bool = True) -> tuple[Any, str | None]:
        if prompt is None:
            return model.default_conditionals(), None
        if count_use and self.usage is not None and prompt.voice_id:
            self.usage.record(prompt.voice_id)
        min_seconds = getattr(model, "min_prompt_seconds", 0.0)
        if prompt.duration <= min_seconds:
            raise JobError(prompt.field, f"is {prompt.duration:.2f} s long; the {model.variant} model needs "
                                         f"a voice longer than {min_seconds:g} s")
        return self._with_memory_retry(lambda: self._conditioner(model, prompt, exaggeration, use_cache))

    def _with_memory_retry(self, call: Callable[[], Any]) -> Any:
        """On GPU out-of-memory, free the cache and allocator once and retry."""
        try:
            return call()
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
            logger.warning("out of GPU memory; evicting cached conditionals and retrying once")
            if self.cache is not None:
                self.cache.evict(1.0)
            for model in self.models.values():
                model.release_memory()
        try:
            return call()
        except Exception as exc:
            if is_out_of_memory(exc):
                raise JobError("model", "out of GPU memory even after freeing the cache; "
                                        "try shorter text or fewer concurrent jobs") from None
            raise

    def preload(self, spec: str, max_seconds: float) -> int:
        """Prepare library voices' conditionals ahead of jobs; stops at ``max_seconds``.

        ``spec`` is "all" or a count N: the N most-used voices (by ``voice_usage.json``;
        catalog order among voices never used). Most-used voices go first either way, so
        the time bound cuts the least used. Returns how many voices were prepared. Runs in
        a background thread, so it never delays readiness.
        """
        voice_ids = [v["voice_id"] for v in self.library.list_voices()]
        if self.usage is not None:
            voice_ids = self.usage.most_used(voice_ids)
        spec = spec.strip().lower()
        if spec != "all":
            if not spec.isdigit():
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
                prompt = library_voice(self.library, voice_id=voice_id)
                for model in self.models.values():
                    self.conditionals(model, prompt, 0.5, use_cache=True, count_use=False)
                done += 1
            except Exception as exc:  # a bad voice must not stop the others
                logger.warning("preload skipped voice %s: %s", voice_id, exc)
        logger.info("preloaded conditionals for %d voices", done)
        return done

    # -- dispatch ----------------------------------------------------------------------

    def run(self, request: Request, progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
        """Serve one request; ``progress(done, total)`` hears about long multi-chunk jobs."""
        if isinstance(request, TTSRequest):
            return self.tts(request, progress)
        if isinstance(request, VoiceCloningRequest):
            return self.voice_cloning(request)
        if isinstance(request, UploadVoiceRequest):
            return self.upload_voice(request)
        if isinstance(request, ListVoicesRequest):
            return self.list_voices(request)
        if isinstance(request, SearchVoicesRequest):
            return self.search_voices(request)
        if isinstance(request, VoiceConversionRequest):
            return self.voice_conversion(request)
        if isinstance(request, VoiceTransferRequest):
            return self.voice_transfer(request)
        raise JobError("operation", f"unsupported request {type(request).__name__}")

    # -- speech ------------------------------------------------------------------------

    def _sampling(self, request: TTSRequest | VoiceCloningRequest, exaggeration: float,
                  cfg_weight: float, seed: int) -> dict[str, Any]:
        sampling = dict(exaggeration=exaggeration, cfg_weight=cfg_weight, temperature=request.temperature,
                        repetition_penalty=request.repetition_penalty, min_p=request.min_p,
                        top_p=request.top_p, max_new_tokens=request.max_new_tokens, seed=seed)
        if request.effective_language_id is not None:
            sampling["language_id"] = request.effective_language_id
        return sampling

    def _speak(self, model: SpeechModel, text: str, conds: Any, sampling: dict[str, Any],
               progress: Callable[[int, int], None] | None = None) -> np.ndarray:
        """Long text is spoken sentence-chunk by chunk with one voice, then joined."""
        chunks = split_text(text) or [text]
        parts = []
        for chunk in chunks:
            parts.append(self._with_memory_retry(lambda: model.synthesize(chunk, conditionals=conds, **sampling)))
            if progress is not None and len(chunks) > 1:
                progress(len(parts), len(chunks))
        return join_audio_chunks(parts, model.sr)

    def _speak_streaming(self, model: SpeechModel, text: str, conds: Any, sampling: dict[str, Any],
                         chunk_size: int, started: float) -> tuple[np.ndarray, dict[str, Any]]:
        details, pieces = [], []
        for wav in stream_audio(model, text, conds, chunk_size, sampling):
            details.append(chunk_detail(len(details), wav.size, model.sr, time.perf_counter() - started))
            pieces.append(wav)
        audio = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.float32)
        return audio, streaming_metrics(details, time.perf_counter() - started, audio.size / model.sr)

    def _prepare_tts(self, request: TTSRequest, timer: Timer) -> "_TTSJob":
        model = self.model_for(request.model)
        with timer.measure("voice_load_ms"):
            prompt = resolve_voice(self.library, voice_id=request.voice_id, voice_name=request.voice_name,
                                   audio=request.reference_audio,
                                   max_seconds=request.max_reference_duration_sec)
        exaggeration = request.effective_exaggeration
        with timer.measure("conditionals_ms"):
            conds, source = self.conditionals(model, prompt, exaggeration, request.cache)
        seed = request.seed if request.seed is not None else new_seed()
        return _TTSJob(model, prompt, conds, source, seed,
                       self._sampling(request, exaggeration, request.effective_cfg_weight, seed))

    @staticmethod
    def _tts_fields(request: TTSRequest, job: "_TTSJob") -> dict[str, Any]:
        prompt = job.prompt
        return {
            "text": request.text,
            "mode": request.mode,
            "seed": job.seed,
            "parameters": {
                "voice_cloning": prompt is not None,
                "voice_id": (prompt.voice_id if prompt else None) or "none",
                "voice_name": (prompt.voice_name if prompt else None) or "none",
                "voice_source": prompt.source if prompt else "builtin",
                "exaggeration": job.sampling["exaggeration"],
                "cfg_weight": job.sampling["cfg_weight"],
                "temperature": request.temperature,
                "model": request.model,
                "language_id": request.effective_language_id,
            },
        }

    def tts(self, request: TTSRequest, progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
        timer = Timer()
        job = self._prepare_tts(request, timer)
        model = job.model
        response: dict[str, Any] = {}
        with timer.measure("generation_ms"):
            if request.mode == "basic":
                wav = self._speak(model, request.text, job.conds, job.sampling, progress)
            else:
                wav, response["streaming_metrics"] = self._speak_streaming(
                    model, request.text, job.conds, job.sampling, request.effective_chunk_size,
                    time.perf_counter())
        with timer.measure("encode_ms"):
            audio, out_sr = encode_output(wav, model.sr, output_format=request.output_format,
                                          sample_rate=request.sample_rate,
                                          normalization=request.audio_normalization)
        response.update({**audio, "sample_rate": out_sr, "format": request.output_format,
                         "duration": round(wav.size / model.sr, 4), **self._tts_fields(request, job),
                         "metrics": timer.metrics(wav.size / model.sr, job.source)})
        return response

    def tts_stream(self, request: TTSRequest) -> Iterator[dict[str, Any]]:
        """Audio chunks as they are made (RunPod ``/stream``), then one item with the metrics.

        Each chunk is ``{chunk_index, audio, format, sample_rate, is_last}``; ``is_last`` marks
        the final audio chunk. Chunks are encoded one by one, so each is a complete file
        (use ``pcm_16`` to concatenate them byte for byte). Normalisation needs the whole
        signal, so streamed chunks are not normalised.
        """
        timer = Timer()
        job = self._prepare_tts(request, timer)
        model, out_sr = job.model, request.sample_rate or job.model.sr
        started = time.perf_counter()
        chunks = stream_audio(model, request.text, job.conds, request.effective_chunk_size, job.sampling)
        details, total_samples = [], 0
        pending = next(chunks, None)
        while pending is not None:
            following = next(chunks, None)
            with timer.measure("encode_ms"):
                audio = encode_audio_base64(resample(pending, model.sr, out_sr), out_sr, request.output_format)
            details.append(chunk_detail(len(details), pending.size, model.sr, time.perf_counter() - started))
            total_samples += pending.size
            yield {"chunk_index": len(details) - 1, "audio": audio, "format": request.output_format,
                   "sample_rate": out_sr, "is_last": following is None}
            pending = following
        generation = time.perf_counter() - started
        timer.stages["generation_ms"] = generation * MS - timer.stages.get("encode_ms", 0.0)
        duration = total_samples / model.sr
        yield {
            **self._tts_fields(request, job),
            "streaming_metrics": streaming_metrics(details, generation, duration),
            "metrics": timer.metrics(duration, job.source),
        }

    # -- voice library -----------------------------------------------------------------

    def _save_upload(self, name: str, prompt: VoicePrompt, description: str, gender: str) -> tuple[dict, VoicePrompt]:
        """Store a voice at the model rate and return it as the library will serve it."""
        samples = resample(prompt.samples, prompt.sample_rate, self.library_sample_rate)
        entry = self.library.save_voice(name, samples, self.library_sample_rate, description=description,
                                        gender=gender, original_file="upload")
        return entry, library_voice(self.library, voice_id=entry["voice_id"])

    @property
    def library_sample_rate(self) -> int:
        return next(iter(self.models.values())).sr if self.models else 24000

    @staticmethod
    def _voice_info(entry: dict | None, name: str | None, description: str, duration: float,
                    sample_rate: int) -> dict[str, Any]:
        entry = entry or {}
        return {
            "voice_id": entry.get("voice_id", "none"),
            "voice_name": entry.get("speaker_name", name or "none"),
            "description": description,
            "duration": round(entry.get("duration", duration), 4),
            "sample_rate": entry.get("sample_rate", sample_rate),
            "created_at": entry.get("created_at"),
            "type": entry.get("type", "unsaved"),
        }

    def voice_cloning(self, request: VoiceCloningRequest) -> dict[str, Any]:
        timer = Timer()
        model = self.model_for(request.model)
        with timer.measure("voice_load_ms"):
            prompt = uploaded_voice(request.reference_audio, "reference_audio",
                                    max_seconds=MAX_CLONE_SECONDS, min_seconds=MIN_CLONE_SECONDS)
            entry = None
            if request.save_to_library:
                entry, prompt = self._save_upload(request.voice_name, prompt, request.voice_description,
                                                  request.gender)
        with timer.measure("conditionals_ms"):
            conds, source = self.conditionals(model, prompt, request.exaggeration, request.cache)
        seed = request.seed if request.seed is not None else new_seed()
        sampling = self._sampling(request, request.exaggeration, request.effective_cfg_weight, seed)
        with timer.measure("generation_ms"):
            wav = self._speak(model, request.text, conds, sampling)
        with timer.measure("encode_ms"):
            audio, out_sr = encode_output(wav, model.sr, output_format=request.output_format,
                                          sample_rate=request.sample_rate,
                                          normalization=request.audio_normalization, key="sample_audio")
        saved = entry is not None
        return {
            "success": True,
            "voice_info": self._voice_info(entry, request.voice_name, request.voice_description,
                                           prompt.duration, prompt.sample_rate),
            **audio,
            "sample_rate": out_sr,
            "format": request.output_format,
            "saved_to_library": saved,
            "seed": seed,
            "message": (f"Voice '{entry['speaker_name']}' saved to the library as {entry['voice_id']}"
                        if saved else "Voice cloned; not saved (save_to_library is false)"),
            "metrics": timer.metrics(wav.size / model.sr, source),
        }

    def upload_voice(self, request: UploadVoiceRequest) -> dict[str, Any]:
        timer = Timer()
        with timer.measure("voice_load_ms"):
            prompt = uploaded_voice(request.reference_audio, "reference_audio",
                                    max_seconds=MAX_CLONE_SECONDS, min_seconds=MIN_CLONE_SECONDS)
            entry, _ = self._save_upload(request.voice_name, prompt, request.voice_description, request.gender)
        return {
            "success": True,
            "voice_info": self._voice_info(entry, request.voice_name, request.voice_description,
                                           prompt.duration, prompt.sample_rate),
            "saved_to_library": True,
            "message": f"Voice '{entry['speaker_name']}' saved to the library as {entry['voice_id']}",
            "metrics": timer.metrics(0.0, None),
        }

    def stats(self) -> dict[str, Any]:
        stats = dict(self.library.get_stats())
        stats["conditionals_cache"] = self.cache.stats() if self.cache else None
        stats["models_loaded"] = sorted(self.models)
        return stats

    def list_voices(self, request: ListVoicesRequest) -> dict[str, Any]:
        timer = Timer()
        voices = self.library.list_voices()
        if request.operation == "list_voices":
            return {"voices": voices, "total_voices": len(voices), "stats": self.stats(),
                    "metrics": timer.metrics(0.0, None)}
        return {"local_voices": voices, "total_local_voices": len(voices), "stats": self.stats(),
                "metrics": timer.metrics(0.0, None)}

    def search_voices(self, request: SearchVoicesRequest) -> dict[str, Any]:
        timer = Timer()
        voices = self.library.search_voices(request.query, request.gender)
        return {"voices": voices, "total_results": len(voices), "query": request.query,
                "gender": request.gender, "metrics": timer.metrics(0.0, None)}

    # -- conversion --------------------------------------------------------------------

    def _convert(self, request: VoiceConversionRequest | VoiceTransferRequest, target: VoicePrompt,
                 timer: Timer) -> tuple[dict[str, Any], float]:
        model = self.model_for("standard")
        with timer.measure("voice_load_ms"):
            source = uploaded_voice(request.input_audio, "input_audio", max_seconds=MAX_CONVERSION_INPUT_SECONDS)
        with timer.measure("conditionals_ms"):
            conds, cache_source = self.conditionals(model, target, 0.5, request.cache)
        seed = request.seed if request.seed is not None else new_seed()
        with timer.measure("generation_ms"):
            wav = self._with_memory_retry(lambda: model.convert_voice(
                source.samples, source.sample_rate, conds, watermark=not request.no_watermark, seed=seed))
        with timer.measure("encode_ms"):
            audio, out_sr = encode_output(wav, model.sr, output_format=request.output_format,
                                          sample_rate=request.sample_rate)
        return {
            **audio,
            "sample_rate": out_sr,
            "duration": round(wav.size / model.sr, 4),
            "format": request.output_format,
            "model": "s3gen",
            "operation": request.operation,
            "seed": seed,
            "metrics": timer.metrics(wav.size / model.sr, cache_source),
        }, source.duration

    def voice_conversion(self, request: VoiceConversionRequest) -> dict[str, Any]:
        timer = Timer()
        with timer.measure("voice_load_ms"):
            target = resolve_voice(self.library, voice_id=request.voice_id, voice_name=request.voice_name,
                                   audio=request.target_speaker, audio_field="target_speaker")
        response, _ = self._convert(request, target, timer)
        return response

    def voice_transfer(self, request: VoiceTransferRequest) -> dict[str, Any]:
        timer = Timer()
        with timer.measure("voice_load_ms"):
            target = resolve_voice(self.library, voice_id=request.voice_id, voice_name=request.voice_name,
                                   audio=request.target_audio, audio_field="target_audio")
        response, input_duration = self._convert(request, target, timer)
        if request.transfer_mode == "embedding":
            info = {"transfer_mode": "embedding", "target_voice": target.voice_name,
                    "target_voice_id": target.voice_id, "source": "library"}
        else:
            info = {"transfer_mode": "audio", "target_source": "target_audio",
                    "target_duration": round(target.duration, 4)}
        response.update({
            "transfer_info": info,
            "input_duration": round(input_duration, 4),
            "processing_time": round(response["metrics"]["total_ms"] / MS, 4),
        })
        return response
