"""``voice_cloning`` and ``upload_voice``: a reference clip becomes a library voice.

Cloning is "save the voice, then speak a sample through the speech pipeline", so the
sample is made exactly as a later ``tts`` job in that voice would make it.
"""
from __future__ import annotations

from typing import Any

from chatterbox_worker.audio.codec import resample
from chatterbox_worker.contract.request_schema import UploadVoiceRequest, VoiceCloningRequest
from chatterbox_worker.pipeline.job_metrics import Timer
from chatterbox_worker.pipeline.speech import encode_output, prepare_speech, speak
from chatterbox_worker.serving.worker import Worker
from chatterbox_worker.voices.sources import MAX_CLONE_SECONDS, MIN_CLONE_SECONDS, VoicePrompt, library_voice, uploaded_voice


def _reference(request: VoiceCloningRequest | UploadVoiceRequest) -> VoicePrompt:
    return uploaded_voice(request.reference_audio, "reference_audio", max_seconds=MAX_CLONE_SECONDS,
                          min_seconds=MIN_CLONE_SECONDS)


def save_voice(worker: Worker, request: VoiceCloningRequest | UploadVoiceRequest,
               prompt: VoicePrompt) -> tuple[dict[str, Any], VoicePrompt]:
    """Store a voice at the model rate; returns its catalog entry and the voice as the library serves it."""
    rate = worker.library_sample_rate
    entry = worker.library.save_voice(request.voice_name, resample(prompt.samples, prompt.sample_rate, rate), rate,
                                      description=request.voice_description, gender=request.gender,
                                      original_file="upload")
    return entry, library_voice(worker.library, voice_id=entry["voice_id"])


def voice_info(entry: dict[str, Any] | None, request: VoiceCloningRequest | UploadVoiceRequest,
               prompt: VoicePrompt) -> dict[str, Any]:
    entry = entry or {}
    return {
        "voice_id": entry.get("voice_id", "none"),
        "voice_name": entry.get("speaker_name", request.voice_name or "none"),
        "description": request.voice_description,
        "duration": round(entry.get("duration", prompt.duration), 4),
        "sample_rate": entry.get("sample_rate", prompt.sample_rate),
        "created_at": entry.get("created_at"),
        "type": entry.get("type", "unsaved"),
    }


def saved_message(entry: dict[str, Any]) -> str:
    return f"Voice '{entry['speaker_name']}' saved to the library as {entry['voice_id']}"


def clone_voice(worker: Worker, request: VoiceCloningRequest, progress=None) -> dict[str, Any]:
    timer = Timer()
    worker.model_for(request.model)  # an unloaded model fails the job before anything is saved
    with timer.measure("voice_load_ms"):
        prompt = _reference(request)
        entry = None
        if request.save_to_library:
            entry, prompt = save_voice(worker, request, prompt)
    job = prepare_speech(worker, request, prompt, timer, exaggeration=request.exaggeration,
                         cfg_weight=request.effective_cfg_weight)
    with timer.measure("generation_ms"):
        wav = speak(worker, job, request.text, progress)
    with timer.measure("encode_ms"):
        audio, out_sr = encode_output(wav, job.model.sr, output_format=request.output_format,
                                      sample_rate=request.sample_rate,
                                      normalization=request.audio_normalization, key="sample_audio")
    return {
        "success": True,
        "voice_info": voice_info(entry, request, prompt),
        **audio,
        "sample_rate": out_sr,
        "format": request.output_format,
        "saved_to_library": entry is not None,
        "seed": job.seed,
        "message": saved_message(entry) if entry else "Voice cloned; not saved (save_to_library is false)",
        "metrics": timer.metrics(wav.size / job.model.sr, job.cache_source),
    }


def upload_voice(worker: Worker, request: UploadVoiceRequest, progress=None) -> dict[str, Any]:
    timer = Timer()
    with timer.measure("voice_load_ms"):
        prompt = _reference(request)
        entry, _ = save_voice(worker, request, prompt)
    return {
        "success": True,
        "voice_info": voice_info(entry, request, prompt),
        "saved_to_library": True,
        "message": saved_message(entry),
        "metrics": timer.metrics(0.0, None),
    }
