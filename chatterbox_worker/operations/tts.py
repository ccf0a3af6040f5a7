"""``tts``: text to speech in a library voice, an uploaded voice or the built-in one.

``basic`` returns the whole clip; ``streaming`` and ``streaming_voice_cloning`` generate
window by window (and, with the streaming handler, send each window as it is decoded).
"""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from chatterbox_worker.audio.codec import encode_audio_base64, resample
from chatterbox_worker.contract.request_schema import TTSRequest
from chatterbox_worker.pipeline.job_metrics import Timer, chunk_detail, streaming_metrics
from chatterbox_worker.pipeline.long_output import deliver_blocks, is_long
from chatterbox_worker.pipeline.speech import (
    Progress,
    SpeechJob,
    encode_output,
    prepare_speech,
    speak,
    speak_blocks,
    speak_stream,
)
from chatterbox_worker.serving.worker import Worker
from chatterbox_worker.voices.sources import resolve_voice


def _prepare(worker: Worker, request: TTSRequest, timer: Timer) -> SpeechJob:
    with timer.measure("voice_load_ms"):
        prompt = resolve_voice(worker.library, voice_id=request.voice_id, voice_name=request.voice_name,
                               audio=request.reference_audio, max_seconds=request.max_reference_duration_sec)
    return prepare_speech(worker, request, prompt, timer, exaggeration=request.effective_exaggeration,
                          cfg_weight=request.effective_cfg_weight)


def speech_fields(request: TTSRequest, job: SpeechJob) -> dict[str, Any]:
    """The response keys that describe what was spoken, and how."""
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
            "exaggeration": job.options.exaggeration,
            "cfg_weight": job.options.cfg_weight,
            "temperature": request.temperature,
            "model": request.model,
            "language_id": request.effective_language_id,
        },
    }


def _response(request: TTSRequest, job: SpeechJob, wav: np.ndarray, timer: Timer, **extra: Any) -> dict[str, Any]:
    with timer.measure("encode_ms"):
        audio, out_sr = encode_output(wav, job.model.sr, output_format=request.output_format,
                                      sample_rate=request.sample_rate, normalization=request.audio_normalization)
    seconds = wav.size / job.model.sr
    return {**audio, "sample_rate": out_sr, "format": request.output_format, "duration": round(seconds, 4),
            **extra, **speech_fields(request, job), "metrics": timer.metrics(seconds, job.cache_source)}


def speak_whole(worker: Worker, request: TTSRequest, progress: Progress | None = None) -> dict[str, Any]:
    """``basic``: the whole clip in one response."""
    timer = Timer()
    job = _prepare(worker, request, timer)
    if is_long(request.text):
        return _long_response(worker, request, job, timer, progress)
    with timer.measure("generation_ms"):
        wav = speak(worker, job, request.text, progress)
    return _response(request, job, wav, timer)


def _long_response(worker: Worker, request: TTSRequest, job: SpeechJob, timer: Timer,
                   progress: Progress | None) -> dict[str, Any]:
    """A chapter: written out while it is made, never held whole (pipeline.long_output)."""
    with timer.measure("generation_ms"):  # generation and encoding interleave here
        long = deliver_blocks(speak_blocks(worker, job, request.text, progress), job.model.sr,
                              output_format=request.output_format, sample_rate=request.sample_rate,
                              normalization=request.audio_normalization)
    return {**long.audio, "sample_rate": long.sample_rate, "format": request.output_format,
            "duration": round(long.seconds, 4), **speech_fields(request, job),
            "metrics": timer.metrics(long.seconds, job.cache_source)}


def speak_windows(worker: Worker, request: TTSRequest, progress: Progress | None = None) -> dict[str, Any]:
    """``streaming`` on the dict handler: windows as the model makes them, joined, with their timings."""
    timer = Timer()
    job = _prepare(worker, request, timer)
    details, pieces = [], []
    with timer.measure("generation_ms"):
        started = timer.elapsed_s()
        for wav in speak_stream(worker, job, request.text, request.effective_chunk_size):
            details.append(chunk_detail(len(details), wav.size, job.model.sr, timer.elapsed_s() - started))
            pieces.append(wav)
        generation_s = timer.elapsed_s() - started
    wav = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.float32)
    metrics = streaming_metrics(details, generation_s, wav.size / job.model.sr)
    return _response(request, job, wav, timer, streaming_metrics=metrics)


def stream(worker: Worker, request: TTSRequest) -> Iterator[dict[str, Any]]:
    """Audio chunks for RunPod's ``/stream``, each sent the moment it is decoded, then one
    last item with the metrics, which marks the end.

    Each chunk is ``{chunk_index, audio, format, sample_rate}``, encoded on its own so that
    each is a complete file (use ``pcm_16`` to concatenate them byte for byte). Whole-signal
    normalisation cannot be applied to a stream, so streamed chunks are not normalised.
    Timings leave out the time this generator sits suspended at ``yield``.
    """
    timer = Timer()
    job = _prepare(worker, request, timer)
    out_sr = request.sample_rate or job.model.sr
    details, total_samples = [], 0
    started = timer.elapsed_s()
    windows = speak_stream(worker, job, request.text, request.effective_chunk_size)
    while True:
        with timer.measure("generation_ms"):
            wav = next(windows, None)
        if wav is None:
            break
        with timer.measure("encode_ms"):
            audio = encode_audio_base64(resample(wav, job.model.sr, out_sr), out_sr, request.output_format)
        details.append(chunk_detail(len(details), wav.size, job.model.sr, timer.elapsed_s() - started))
        total_samples += wav.size
        timer.pause()
        yield {"chunk_index": len(details) - 1, "audio": audio, "format": request.output_format,
               "sample_rate": out_sr}
        timer.resume()
    seconds = total_samples / job.model.sr
    yield {
        **speech_fields(request, job),
        "streaming_metrics": streaming_metrics(details, timer.elapsed_s() - started, seconds),
        "metrics": timer.metrics(seconds, job.cache_source),
    }
