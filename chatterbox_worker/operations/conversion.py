"""``voice_conversion`` and ``voice_transfer``: speech in, the same speech in another voice out.

Both condition S3Gen on the target voice through the speech pipeline (so a library
voice's cached conditionals serve TTS and conversion alike) and differ only in how the
target is named and what the response reports about it.
"""
from __future__ import annotations

from typing import Any

from chatterbox_worker.contract.limits import MS_PER_SECOND
from chatterbox_worker.contract.request_schema import VoiceConversionRequest, VoiceTransferRequest
from chatterbox_worker.pipeline.job_metrics import Timer
from chatterbox_worker.pipeline.speech import NEUTRAL_EXAGGERATION, conditionals, convert, encode_output, new_seed
from chatterbox_worker.serving.worker import Worker
from chatterbox_worker.voices.sources import VoicePrompt, resolve_voice, uploaded_voice

# Input audio for conversion: longer clips are cut, as the deployed worker did.
MAX_CONVERSION_INPUT_SECONDS = 120.0
# Conversion runs on S3Gen, which every loaded variant shares in shape; the standard one serves.
CONVERSION_MODEL = "standard"


def _convert(worker: Worker, request: VoiceConversionRequest | VoiceTransferRequest, target: VoicePrompt,
             timer: Timer) -> tuple[dict[str, Any], VoicePrompt]:
    model = worker.model_for(CONVERSION_MODEL)
    with timer.measure("voice_load_ms"):
        source = uploaded_voice(request.input_audio, "input_audio", max_seconds=MAX_CONVERSION_INPUT_SECONDS)
    with timer.measure("conditionals_ms"):
        conds, cache_source = conditionals(worker, model, target, NEUTRAL_EXAGGERATION, request.cache)
    seed = request.seed if request.seed is not None else new_seed()
    with timer.measure("generation_ms"):
        wav = convert(worker, model, source, conds, watermark=not request.no_watermark, seed=seed,
                      exact_seed=request.seed is not None)
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
    }, source


def _target(worker: Worker, request: VoiceConversionRequest | VoiceTransferRequest, audio: str | None,
            audio_field: str, timer: Timer) -> VoicePrompt:
    with timer.measure("voice_load_ms"):
        return resolve_voice(worker.library, voice_id=request.voice_id, voice_name=request.voice_name,
                             audio=audio, audio_field=audio_field)


def convert_voice(worker: Worker, request: VoiceConversionRequest, progress=None) -> dict[str, Any]:
    timer = Timer()
    target = _target(worker, request, request.target_speaker, "target_speaker", timer)
    response, _ = _convert(worker, request, target, timer)
    return response


def transfer_info(request: VoiceTransferRequest, target: VoicePrompt) -> dict[str, Any]:
    if request.transfer_mode == "embedding":
        return {"transfer_mode": "embedding", "target_voice": target.voice_name,
                "target_voice_id": target.voice_id, "source": "library"}
    return {"transfer_mode": "audio", "target_source": "target_audio", "target_duration": round(target.duration, 4)}


def transfer_voice(worker: Worker, request: VoiceTransferRequest, progress=None) -> dict[str, Any]:
    timer = Timer()
    target = _target(worker, request, request.target_audio, "target_audio", timer)
    response, source = _convert(worker, request, target, timer)
    response.update({
        "transfer_info": transfer_info(request, target),
        "input_duration": round(source.duration, 4),
        "processing_time": round(response["metrics"]["total_ms"] / MS_PER_SECOND, 4),
    })
    return response
