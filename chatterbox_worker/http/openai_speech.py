"""OpenAI's ``POST /v1/audio/speech`` on the worker's own speech pipeline.

The OpenAI request becomes a ``tts`` job (:class:`~chatterbox_worker.contract.request_schema.TTSRequest`), so it is
validated by the same rules and spoken by the same functions as a queue job: the model
names map to the worker's models, OpenAI's voice names map to library voices through
``OPENAI_VOICE_ALIASES``, and the Chatterbox knobs ride along as extra fields. What is new
here is only the output: the OpenAI formats (through :mod:`chatterbox_worker.audio.streaming`),
streamed as raw audio or as server-sent events (errors take OpenAI's shape,
:mod:`chatterbox_worker.http.openai_errors`).
"""
from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from chatterbox_worker.audio.streaming import (
    LENGTH_IN_HEADER_FORMATS,
    MAX_SPEED,
    MIN_SPEED,
    SPEECH_FORMATS,
    SPEECH_MIME_TYPES,
    AudioStreamEncoder,
    encode_speech,
)
from chatterbox_worker.contract.errors import JobError
from chatterbox_worker.contract.limits import (
    LIBRARY_MAX_NEW_TOKENS,
    MAX_SEED,
    MAX_TEXT_CHARS,
    OPENAI_MAX_INPUT_CHARS,
    SPEECH_TOKENS_PER_SECOND,
)
from chatterbox_worker.contract.request_schema import TTSRequest, validate_request
from chatterbox_worker.http import metrics as http_metrics
from chatterbox_worker.http.openai_errors import OpenAIError, as_openai_error
from chatterbox_worker.pipeline.job_metrics import Timer
from chatterbox_worker.pipeline.pause_tags import check_speakable
from chatterbox_worker.pipeline.speech import SpeechJob, prepare_speech, speak, speak_stream
from chatterbox_worker.settings import get_settings
from chatterbox_worker.voices.sources import resolve_voice

# OpenAI's model names, and Chatterbox's own, to the worker's model variants.
MODEL_VARIANTS_BY_NAME = {
    "tts-1": "standard",
    "tts-1-hd": "standard",
    "gpt-4o-mini-tts": "standard",
    "chatterbox": "standard",
    "chatterbox-multilingual": "multilingual",
    "chatterbox-turbo": "turbo",
}
# The rate every speech format is made at (PCM is documented as 24 kHz 16-bit mono).
SPEECH_SAMPLE_RATE = 24000


# -- errors ----------------------------------------------------------------------------

def validation_error(exc: ValidationError) -> OpenAIError:
    """The first rule a request broke, named by its field (HTTP 422, like FastAPI's own)."""
    errors = exc.errors(include_url=False)
    first = errors[0]
    param = str(first["loc"][0]) if first["loc"] else None  # "voice", not the union branch "voice.str"
    message = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in errors)
    return OpenAIError(422, message, param=param, code="invalid_value")


# -- the request -----------------------------------------------------------------------

class VoiceRef(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: Annotated[str, Field(min_length=1)]


class SpeechRequest(BaseModel):
    """OpenAI's speech request, plus Chatterbox's knobs (all optional)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str
    # Past OpenAI's 4096 characters, up to the job limit (a chapter), only when asked for;
    # declared before ``input`` so that input's check can read it.
    long_input: bool = False
    input: Annotated[str, Field(min_length=1, max_length=MAX_TEXT_CHARS)]
    voice: Annotated[str, Field(min_length=1)] | VoiceRef
    response_format: Literal[SPEECH_FORMATS] = "mp3"
    speed: Annotated[float, Field(ge=MIN_SPEED, le=MAX_SPEED)] = 1.0
    # OpenAI's default is a raw audio stream; "sse" wraps it in events. ``stream: false``
    # (an extra) asks for one model call for the whole clip, sent with its length. A format
    # whose header carries the length (flac, wav) is sent whole unless stream_format is named.
    stream_format: Literal["audio", "sse"] | None = None
    stream: bool = True
    instructions: str | None = None  # gpt-4o-mini-tts style prompts; Chatterbox has no such input
    # Chatterbox extras
    exaggeration: Annotated[float, Field(ge=0.0, le=2.0)] | None = None
    cfg_weight: Annotated[float, Field(ge=0.0, le=3.0)] | None = None
    temperature: Annotated[float, Field(gt=0.0, le=5.0)] | None = None
    seed: Annotated[int, Field(ge=0, le=MAX_SEED)] | None = None
    language: str | None = None
    max_new_tokens: Annotated[int, Field(ge=1, le=LIBRARY_MAX_NEW_TOKENS)] | None = None

    @field_validator("input")
    @classmethod
    def _speakable_input(cls, value: str, info: ValidationInfo) -> str:
        if len(value) > OPENAI_MAX_INPUT_CHARS and not info.data.get("long_input"):
            raise ValueError(f"is {len(value)} characters, over OpenAI's {OPENAI_MAX_INPUT_CHARS}; send "
                             f"\"long_input\": true to speak up to {MAX_TEXT_CHARS}")
        return check_speakable(value)

    @property
    def streamed(self) -> bool:
        if self.stream_format is not None:
            return True
        return self.stream and self.response_format not in LENGTH_IN_HEADER_FORMATS

    @property
    def mime_type(self) -> str:
        return "text/event-stream" if self.stream_format == "sse" else SPEECH_MIME_TYPES[self.response_format]


def parse_speech_request(body: Any) -> SpeechRequest:
    if not isinstance(body, dict):
        raise OpenAIError(400, f"the request body must be a JSON object, got {type(body).__name__}", code="invalid_json")
    try:
        return SpeechRequest.model_validate(body)
    except ValidationError as exc:
        raise validation_error(exc) from None


def model_variant(name: str) -> str:
    variant = MODEL_VARIANTS_BY_NAME.get(name.strip().lower())
    if variant is None:
        raise OpenAIError(404, f"model {name!r} does not exist; use one of {', '.join(MODEL_VARIANTS_BY_NAME)}",
                          param="model", code="model_not_found")
    return variant


def voice_fields(voice: str | VoiceRef, library: Any) -> dict[str, str]:
    """The tts job's voice field: an alias's library voice, a library id, else a library name."""
    if isinstance(voice, VoiceRef):
        return {"voice_id": voice.id}
    alias = get_settings().voice_aliases.get(voice.strip().lower())
    if alias is not None:
        return {"voice_name": alias}
    try:
        library.get_voice_info(voice)
        return {"voice_id": voice}
    except JobError:
        return {"voice_name": voice}


def tts_request(speech: SpeechRequest, library: Any) -> TTSRequest:
    """The ``tts`` job an OpenAI request stands for, validated by the job contract's rules."""
    raw: dict[str, Any] = {"text": speech.input, "model": model_variant(speech.model),
                           **voice_fields(speech.voice, library)}
    extras = {"exaggeration": speech.exaggeration, "cfg_weight": speech.cfg_weight,
              "temperature": speech.temperature, "seed": speech.seed, "language_id": speech.language,
              "max_new_tokens": speech.max_new_tokens}
    raw.update({key: value for key, value in extras.items() if value is not None})
    request, _ = validate_request(TTSRequest, raw)
    return request


# -- speaking ----------------------------------------------------------------------------

@dataclass(frozen=True)
class PreparedSpeech:
    """A request whose voice and conditionals are ready: nothing left to refuse."""

    speech: SpeechRequest
    request: TTSRequest
    job: SpeechJob
    timer: Timer


def prepare(worker: Any, speech: SpeechRequest) -> PreparedSpeech:
    """Everything that can fail on the client's account, before any audio is sent."""
    request = tts_request(speech, worker.library)
    timer = Timer()
    with timer.measure("voice_load_ms"):
        prompt = resolve_voice(worker.library, voice_id=request.voice_id, voice_name=request.voice_name)
    job = prepare_speech(worker, request, prompt, timer, exaggeration=request.effective_exaggeration,
                         cfg_weight=request.effective_cfg_weight)
    return PreparedSpeech(speech, request, job, timer)


def _to_output_rate(wav: np.ndarray, model_sr: int) -> np.ndarray:
    if model_sr == SPEECH_SAMPLE_RATE:
        return wav
    from chatterbox_worker.audio.codec import resample

    return resample(wav, model_sr, SPEECH_SAMPLE_RATE)


def _record(prepared: PreparedSpeech, audio_samples: int, generation_s: float) -> None:
    seconds = audio_samples / prepared.job.model.sr
    http_metrics.record_speech(prepared.request.model, seconds, seconds * SPEECH_TOKENS_PER_SECOND, generation_s,
                               prepared.job.cache_source)


def synthesize(worker: Any, prepared: PreparedSpeech) -> bytes:
    """The whole clip in one model call, encoded."""
    started = time.perf_counter()
    with prepared.timer.measure("generation_ms"):
        wav = speak(worker, prepared.job, prepared.request.text)
    _record(prepared, wav.size, time.perf_counter() - started)
    with prepared.timer.measure("encode_ms"):
        return encode_speech(_to_output_rate(wav, prepared.job.model.sr), SPEECH_SAMPLE_RATE,
                             prepared.speech.response_format, prepared.speech.speed)


def speech_windows(worker: Any, job: SpeechJob, text: str) -> Iterator[np.ndarray]:
    """The one place streamed speech asks the pipeline for windows: a short first window
    (STREAM_FIRST_CHUNK_TOKENS) for fast first audio, then STREAM_CHUNK_TOKENS each."""
    settings = get_settings()
    return speak_stream(worker, job, text, settings.stream_chunk_tokens,
                        first_chunk_size=settings.stream_first_chunk_tokens)


def stream_audio(worker: Any, prepared: PreparedSpeech) -> Iterator[bytes]:
    """Encoded audio, a piece the moment each window is decoded; the pieces form one file."""
    started = time.perf_counter()
    model_sr = prepared.job.model.sr
    with AudioStreamEncoder(prepared.speech.response_format, SPEECH_SAMPLE_RATE, prepared.speech.speed) as encoder:
        for wav in speech_windows(worker, prepared.job, prepared.request.text):
            data = encoder.push(_to_output_rate(wav, model_sr))
            if data:
                yield data
        _record(prepared, round(encoder.samples_in * model_sr / SPEECH_SAMPLE_RATE), time.perf_counter() - started)
        tail = encoder.finish()
    if tail:
        yield tail


def sse_event(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload, separators=(',', ':'))}\n\n"


def stream_sse(worker: Any, prepared: PreparedSpeech) -> Iterator[str]:
    """OpenAI's speech events: ``speech.audio.delta`` per piece, then ``speech.audio.done``.

    An error after the stream has begun cannot change the HTTP status, so it is sent as an
    ``error`` event in OpenAI's shape, and the stream ends.
    """
    try:
        for data in stream_audio(worker, prepared):
            yield sse_event({"type": "speech.audio.delta", "audio": base64.b64encode(data).decode("ascii")})
    except Exception as exc:  # the stream is already open: report it in-band
        yield sse_event({"type": "error", **as_openai_error(exc).body()})
        return
    yield sse_event({"type": "speech.audio.done", "seed": prepared.job.seed})
