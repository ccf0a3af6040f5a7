"""The OpenAI speech layer without a server: request mapping, errors, streamed encoders,
speed, and RunPod's OpenAI passthrough on the queue handler."""
from __future__ import annotations

import base64
import io

import av
import numpy as np
import pytest
import soundfile as sf

from chatterbox_worker.audio.streaming import SPEECH_FORMATS, AudioStreamEncoder, atempo_factors, encode_speech
from chatterbox_worker.contract.errors import JobError, ServerError, ServiceUnavailableError, VoiceNotFoundError
from chatterbox_worker.http.openai_speech import (
    OpenAIError,
    as_openai_error,
    model_variant,
    parse_speech_request,
    tts_request,
    voice_fields,
)
from tests.http_servers import tone

SR = 24000


def decode(data: bytes, fmt: str) -> tuple[np.ndarray, int]:
    """Decode what a client receives: PyAV for the containers, numpy for raw PCM."""
    if fmt == "pcm":
        return np.frombuffer(data, "<i2").astype(np.float32) / 32767.0, SR
    container = av.open(io.BytesIO(data))
    frames = [f.to_ndarray().reshape(-1) for f in container.decode(audio=0)]
    rate = container.streams.audio[0].rate
    return np.concatenate(frames).astype(np.float32), rate


def dominant_hz(samples: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(samples))
    return float(np.fft.rfftfreq(samples.size, 1 / rate)[int(spectrum.argmax())])


# -- request mapping ---------------------------------------------------------------------

@pytest.mark.parametrize("name, variant", [("tts-1", "standard"), ("tts-1-hd", "standard"),
                                           ("gpt-4o-mini-tts", "standard"), ("chatterbox", "standard"),
                                           ("chatterbox-multilingual", "multilingual"),
                                           ("chatterbox-turbo", "turbo"), ("TTS-1", "standard")])
def test_model_names_map_to_variants(name, variant):
    assert model_variant(name) == variant


def test_an_unknown_model_is_404_naming_model():
    with pytest.raises(OpenAIError) as info:
        model_variant("whisper-1")
    assert (info.value.status, info.value.param, info.value.code) == (404, "model", "model_not_found")


def test_voices_resolve_alias_then_id_then_name(library, monkeypatch):
    monkeypatch.setenv("OPENAI_VOICE_ALIASES", "alloy=Bella,echo=Eric")
    assert voice_fields("alloy", library) == {"voice_name": "Bella"}
    assert voice_fields("ECHO", library) == {"voice_name": "Eric"}
    assert voice_fields("de16e46c", library) == {"voice_id": "de16e46c"}
    assert voice_fields("Dana", library) == {"voice_name": "Dana"}
    assert voice_fields(parse_speech_request({"model": "tts-1", "input": "x", "voice": {"id": "abc"}}).voice,
                        library) == {"voice_id": "abc"}


def test_default_aliases_name_shipped_voices(library):
    from chatterbox_worker.settings import get_settings

    names = {v["speaker_name"] for v in library.list_voices()}
    assert set(get_settings().voice_aliases.values()) <= names
    assert {"alloy", "echo", "nova", "onyx", "shimmer", "fable"} <= set(get_settings().voice_aliases)


def test_extras_become_tts_fields(library):
    speech = parse_speech_request({"model": "chatterbox-multilingual", "input": "Hola", "voice": "Amy",
                                   "exaggeration": 0.9, "cfg_weight": 0.2, "temperature": 0.7, "seed": 7,
                                   "language": "es", "max_new_tokens": 30})
    request = tts_request(speech, library)
    assert (request.text, request.model, request.voice_name, request.exaggeration, request.cfg_weight,
            request.temperature, request.seed, request.language_id, request.max_new_tokens) == \
           ("Hola", "multilingual", "Amy", 0.9, 0.2, 0.7, 7, "es", 30)


@pytest.mark.parametrize("body, param", [
    ({"model": "tts-1", "voice": "Amy"}, "input"),
    ({"model": "tts-1", "input": "", "voice": "Amy"}, "input"),
    ({"model": "tts-1", "input": "x" * 5001, "voice": "Amy"}, "input"),
    ({"model": "tts-1", "input": "Hi"}, "voice"),
    ({"model": "tts-1", "input": "Hi", "voice": "Amy", "response_format": "ogg"}, "response_format"),
    ({"model": "tts-1", "input": "Hi", "voice": "Amy", "speed": 4.5}, "speed"),
    ({"model": "tts-1", "input": "Hi", "voice": "Amy", "speed": 0.1}, "speed"),
    ({"model": "tts-1", "input": "Hi", "voice": "Amy", "stream_format": "chunks"}, "stream_format"),
    ({"model": "tts-1", "input": "Hi", "voice": "Amy", "exaggeration": 9}, "exaggeration"),
    ({"model": "tts-1", "input": "Hi", "voice": "Amy", "voices": "Amy"}, "voices"),
    ({"input": "Hi", "voice": "Amy"}, "model"),
    ({"model": "tts-1", "input": "Hi", "voice": 5}, "voice"),
    ({"model": "tts-1", "input": "Hi", "voice": {"name": "Amy"}}, "voice"),
])
def test_a_bad_request_is_422_naming_the_param(body, param):
    with pytest.raises(OpenAIError) as info:
        parse_speech_request(body)
    assert info.value.status == 422 and info.value.param == param
    assert set(info.value.body()["error"]) == {"message", "type", "param", "code"}


def test_contract_rules_name_the_openai_param(library):
    speech = parse_speech_request({"model": "tts-1", "input": "Hi", "voice": "Amy", "language": "es"})
    with pytest.raises(JobError) as info:
        tts_request(speech, library)
    assert as_openai_error(info.value).param == "language"


@pytest.mark.parametrize("exc, status", [
    (VoiceNotFoundError("voice_name", "no such voice"), 404),
    (JobError("text", "bad"), 400),
    (ServerError("model", "out of memory"), 500),
    (ServiceUnavailableError("load failed"), 503),
    (RuntimeError("boom"), 500),
])
def test_failures_map_to_statuses(exc, status):
    error = as_openai_error(exc)
    assert error.status == status
    assert set(error.body()["error"]) == {"message", "type", "param", "code"}


# -- encoders ----------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", SPEECH_FORMATS)
def test_every_format_streams_into_one_decodable_file(fmt):
    wav = tone(2.0, SR, 440.0)
    encoder = AudioStreamEncoder(fmt, SR)
    pieces = [encoder.push(wav[i:i + 11520]) for i in range(0, wav.size, 11520)]
    pieces.append(encoder.finish())
    assert pieces[0], "the first window must produce bytes at once"
    samples, rate = decode(b"".join(pieces), fmt)
    assert abs(samples.size / rate - 2.0) < 0.15
    assert abs(dominant_hz(samples, rate) - 440.0) < 5


@pytest.mark.parametrize("fmt", SPEECH_FORMATS)
def test_whole_clip_encodes(fmt):
    samples, rate = decode(encode_speech(tone(1.0, SR), SR, fmt), fmt)
    assert abs(samples.size / rate - 1.0) < 0.15


def test_whole_wav_has_its_length_and_streamed_wav_reads_to_the_end():
    whole = encode_speech(tone(1.0, SR), SR, "wav")
    assert sf.info(io.BytesIO(whole)).frames == SR
    encoder = AudioStreamEncoder("wav", SR)
    streamed = encoder.push(tone(0.5, SR)) + encoder.push(tone(0.5, SR)) + encoder.finish()
    assert sf.read(io.BytesIO(streamed))[0].size == SR


@pytest.mark.parametrize("speed", [0.25, 0.5, 1.5, 2.0, 4.0])
def test_speed_changes_duration_and_keeps_pitch(speed):
    wav = tone(2.0, SR, 300.0)
    encoder = AudioStreamEncoder("pcm", SR, speed)
    data = b"".join(encoder.push(wav[i:i + 4800]) for i in range(0, wav.size, 4800)) + encoder.finish()
    samples, _ = decode(data, "pcm")
    assert abs(samples.size / SR - 2.0 / speed) < 0.1 * (2.0 / speed) + 0.05
    assert abs(dominant_hz(samples, SR) - 300.0) < 10


def test_atempo_factors_stay_in_one_stages_range():
    for speed in (0.25, 0.3, 1.0, 3.9, 4.0):
        factors = atempo_factors(speed)
        assert all(0.5 <= f <= 2.0 for f in factors) and abs(np.prod(factors) - speed) < 1e-9


# -- RunPod's OpenAI passthrough on the queue handler -------------------------------------

def test_queue_job_with_openai_route_returns_base64_speech(run_job):
    result = run_job({"openai_route": "/v1/audio/speech",
                      "openai_input": {"model": "tts-1", "input": "Hello there.", "voice": "alloy",
                                       "response_format": "aac"}})
    assert result["format"] == "aac" and result["content_type"] == "audio/aac"
    samples, _ = decode(base64.b64decode(result["audio"]), "aac")
    assert samples.size > 0


def test_queue_job_lists_models_and_voices(run_job):
    models = run_job({"openai_route": "/v1/models"})
    assert {m["id"] for m in models["data"]} >= {"tts-1", "chatterbox"}
    assert next(m for m in models["data"] if m["id"] == "tts-1")["loaded"] is True
    voices = run_job({"openai_route": "/v1/audio/voices"})
    assert {"id", "name"} <= set(voices["voices"][0])


@pytest.mark.parametrize("job_input, field", [
    ({"openai_route": "/v1/chat/completions", "openai_input": {}}, "openai_route"),
    ({"openai_route": "/v1/audio/speech", "openai_input": {"model": "tts-1", "voice": "Amy"}}, "input"),
    ({"openai_route": "/v1/audio/speech", "openai_input": {"model": "x", "input": "Hi", "voice": "Amy"}}, "model"),
    ({"openai_route": "/v1/audio/speech", "openai_input": ["not", "an", "object"]}, "openai_input"),
    ({"openai_route": "/v1/audio/speech",
      "openai_input": {"model": "tts-1", "input": "Hi", "voice": "nobody-here"}}, "voice_name"),
])
def test_queue_openai_errors_keep_the_job_error_shape(run_job, job_input, field):
    result = run_job(job_input)
    assert list(result) == ["error"] and isinstance(result["error"], str)
    assert result["error"].startswith(f"{field}:"), result


def test_stream_handler_answers_openai_routes_with_one_result(worker, monkeypatch):
    import handler

    monkeypatch.setattr(handler, "get_worker", lambda: worker)
    items = list(handler.stream_handler({"id": "j", "input": {"openai_route": "/v1/models"}}))
    assert len(items) == 1 and items[0]["object"] == "list"


def test_delete_voice_job_removes_saved_voices_only(run_job):
    saved = run_job({"operation": "upload_voice", "voice_name": "Temp Voice",
                     "reference_audio": base64.b64encode(encode_speech(tone(6.0, SR), SR, "wav")).decode()})
    voice_id = saved["voice_info"]["voice_id"]
    partial = run_job({"operation": "delete_voice", "voice_name": "Temp"})
    assert partial["error"].startswith("voice_name:") and "exactly" in partial["error"]
    assert run_job({"operation": "delete_voice", "voice_name": "Temp Voice"})["deleted"]["voice_id"] == voice_id
    assert run_job({"operation": "delete_voice", "voice_id": voice_id})["error"].startswith("voice_id:")
    shipped = run_job({"operation": "delete_voice", "voice_name": "Amy"})
    assert "shipped" in shipped["error"] and not shipped["error"].startswith("server")
