"""Malformed jobs, table-driven, across every operation, through ``handler.handler``.

What this suite proves, for each of the cases below:

* the worker answers; no exception escapes the handler;
* the answer is exactly ``{"error": <str>}``, the only shape RunPod keeps for a failure,
  and it is plain JSON (no NaN, no bytes);
* the message names the field the client has to fix (as a whole word, so that
  ``description`` does not pass for ``voice_description``).

And, once all the cases have run against one shared worker:

* a good job still succeeds on that same worker (no rejected job poisoned it);
* no rejected job reached the model or changed the voice library;
* the system temp directory holds no file that was not there before the suite.

The last test depends on running after the cases; pytest runs a module's tests in the
order they are defined.
"""
from __future__ import annotations

import base64
import json
import os
import re
import tempfile

import numpy as np
import pytest

from chatterbox_worker.contract.limits import MAX_DESCRIPTION_CHARS, MAX_NAME_CHARS, MAX_SEED, MAX_TEXT_CHARS
from chatterbox_worker.settings import Settings, mb_to_bytes
from chatterbox_worker.testing.audio_payloads import b64, float_wav_b64, make_wav_b64
from chatterbox_worker.testing.demo_library import copy_demo_library
from chatterbox_worker.testing.stub_worker import stub_worker

MAX_AUDIO_BASE64_BYTES = mb_to_bytes(Settings.model_fields["max_audio_base64_mb"].default)

GOOD_TEXT = "Hello there."
AMY_ID = "de16e46c"  # a voice of the shipped demo library
UNKNOWN_VOICE_ID = "0000beef"  # well formed, but in no library
UNKNOWN_VOICE_NAME = "NoSuchVoiceAnywhere"
PROMPT_SR = 16000
CLONE_SECONDS = 6.0  # over voice_sources.MIN_CLONE_SECONDS, so only the field under test is wrong
SHORT_SECONDS = 2.0  # under voice_sources.MIN_CLONE_SECONDS


# -- audio payloads ----------------------------------------------------------------------


GOOD_AUDIO = make_wav_b64(CLONE_SECONDS, sr=PROMPT_SR)
SHORT_AUDIO = make_wav_b64(SHORT_SECONDS, sr=PROMPT_SR)
_GOOD_WAV_BYTES = base64.b64decode(GOOD_AUDIO)
NOT_BASE64 = "this is not base64!"
BAD_DATA_URI = "data:audio/wav;base64" + GOOD_AUDIO[:64]  # no comma: the prefix does not parse
EMPTY_DATA_URI = "data:audio/wav;base64,"
NON_AUDIO = b64(b"plain text, not an audio file " * 8)
TRUNCATED_HEADER_WAV = b64(_GOOD_WAV_BYTES[:20])  # cut inside the fmt chunk
HEADER_ONLY_WAV = b64(_GOOD_WAV_BYTES[:44])  # a valid header and no samples
# The header still claims 6 s; the 3 s that are there are too short to clone.
HALF_WAV = b64(_GOOD_WAV_BYTES[: len(_GOOD_WAV_BYTES) // 2])
SILENT_AUDIO = float_wav_b64(np.zeros(int(CLONE_SECONDS * PROMPT_SR)))
NAN_AUDIO = float_wav_b64(np.full(int(CLONE_SECONDS * PROMPT_SR), np.nan))
INF_AUDIO = float_wav_b64(np.r_[np.full(PROMPT_SR, 0.1), np.inf, np.full(PROMPT_SR, 0.1)])
OVERSIZED_BASE64 = "A" * (MAX_AUDIO_BASE64_BYTES + 4)  # checked by length, before decoding
CONTROL_CHARS = "bad\x00name"


# -- job builders ------------------------------------------------------------------------


def tts(mode: str = "basic", **fields) -> dict:
    return {"operation": "tts", "mode": mode, "text": GOOD_TEXT, **fields}


def cloning(**fields) -> dict:
    return {"operation": "voice_cloning", "reference_audio": GOOD_AUDIO, "voice_name": "Clone", **fields}


def upload(**fields) -> dict:
    return {"operation": "upload_voice", "reference_audio": GOOD_AUDIO, "voice_name": "Upload", **fields}


def conversion(**fields) -> dict:
    return {"operation": "voice_conversion", "input_audio": SHORT_AUDIO, **fields}


def transfer(mode: str = "embedding", **fields) -> dict:
    return {"operation": "voice_transfer", "transfer_mode": mode, "input_audio": SHORT_AUDIO, **fields}


def without(job: dict, *names: str) -> dict:
    return {k: v for k, v in job.items() if k not in names}


def case(job_input, field: str, case_id: str):
    return pytest.param(job_input, field, id=case_id)


# -- the table ---------------------------------------------------------------------------

TOP_LEVEL_CASES = [
    case("just a string", "input", "input-is-string"),
    case(42, "input", "input-is-int"),
    case(4.2, "input", "input-is-float"),
    case(True, "input", "input-is-bool"),
    case(None, "input", "input-is-null"),
    case([{"text": GOOD_TEXT}], "input", "input-is-list"),
    case({"operation": "dance", "text": GOOD_TEXT}, "operation", "operation-unknown"),
    case({"operation": "TTS", "text": GOOD_TEXT}, "operation", "operation-wrong-case"),
    case({"operation": "", "text": GOOD_TEXT}, "operation", "operation-empty"),
    case({"operation": None, "text": GOOD_TEXT}, "operation", "operation-null"),
    case({"operation": 1, "text": GOOD_TEXT}, "operation", "operation-int"),
    case({"operation": ["tts"], "text": GOOD_TEXT}, "operation", "operation-list"),
    case({"operation": {"name": "tts"}}, "operation", "operation-dict"),
]

TTS_CASES = [
    # text
    case({}, "text", "tts-empty-input"),
    case(without(tts(), "text"), "text", "tts-text-missing"),
    case(tts(text=""), "text", "tts-text-empty"),
    case(tts(text="   \n\t"), "text", "tts-text-blank"),
    case(tts(text="x" * (MAX_TEXT_CHARS + 1)), "text", "tts-text-too-long"),
    case(tts(text=123), "text", "tts-text-int"),
    case(tts(text=None), "text", "tts-text-null"),
    case(tts(text=["Hello."]), "text", "tts-text-list"),
    case(tts(text=True), "text", "tts-text-bool"),
    # exaggeration, cfg_weight and its alias cfg
    case(tts(exaggeration="0.5"), "exaggeration", "tts-exaggeration-string"),
    case(tts(exaggeration=True), "exaggeration", "tts-exaggeration-bool"),
    case(tts(exaggeration=-0.1), "exaggeration", "tts-exaggeration-negative"),
    case(tts(exaggeration=2.5), "exaggeration", "tts-exaggeration-over"),
    case(tts(exaggeration=[0.5]), "exaggeration", "tts-exaggeration-list"),
    case(tts(cfg_weight=3.5), "cfg_weight", "tts-cfg_weight-over"),
    case(tts(cfg_weight=-1), "cfg_weight", "tts-cfg_weight-negative"),
    case(tts(cfg_weight="low"), "cfg_weight", "tts-cfg_weight-string"),
    case(tts(cfg="high"), "cfg", "tts-cfg-string"),
    case(tts(cfg=4.0), "cfg", "tts-cfg-over"),
    case(tts(cfg=0.2, cfg_weight=0.4), "cfg", "tts-cfg-disagrees-with-cfg_weight"),
    # sampling knobs
    case(tts(temperature=0), "temperature", "tts-temperature-zero"),
    case(tts(temperature=-1.0), "temperature", "tts-temperature-negative"),
    case(tts(temperature=5.5), "temperature", "tts-temperature-over"),
    case(tts(temperature="hot"), "temperature", "tts-temperature-string"),
    case(tts(temperature=None), "temperature", "tts-temperature-null"),
    case(tts(temperature=False), "temperature", "tts-temperature-bool"),
    case(tts(max_new_tokens=0), "max_new_tokens", "tts-max_new_tokens-zero"),
    case(tts(max_new_tokens=1001), "max_new_tokens", "tts-max_new_tokens-over"),
    case(tts(max_new_tokens="100"), "max_new_tokens", "tts-max_new_tokens-string"),
    case(tts(max_new_tokens=1.5), "max_new_tokens", "tts-max_new_tokens-float"),
    case(tts(seed=-1), "seed", "tts-seed-negative"),
    case(tts(seed=MAX_SEED + 1), "seed", "tts-seed-over"),
    case(tts(seed="42"), "seed", "tts-seed-string"),
    case(tts(repetition_penalty=0.5), "repetition_penalty", "tts-repetition_penalty-under"),
    case(tts(min_p=1.5), "min_p", "tts-min_p-over"),
    case(tts(top_p=0), "top_p", "tts-top_p-zero"),
    # output
    case(tts(sample_rate=100), "sample_rate", "tts-sample_rate-under"),
    case(tts(sample_rate=96000), "sample_rate", "tts-sample_rate-over"),
    case(tts(sample_rate=22050.0), "sample_rate", "tts-sample_rate-float"),
    case(tts(sample_rate="24000"), "sample_rate", "tts-sample_rate-string"),
    case(tts(sample_rate=True), "sample_rate", "tts-sample_rate-bool"),
    case(tts(output_format="aiff"), "output_format", "tts-output_format-unknown"),
    case(tts(output_format="WAV"), "output_format", "tts-output_format-wrong-case"),
    case(tts(output_format=None), "output_format", "tts-output_format-null"),
    case(tts(output_format=["wav"]), "output_format", "tts-output_format-list"),
    case(tts(audio_normalization="loud"), "audio_normalization", "tts-audio_normalization-unknown"),
    case(tts(audio_normalization=1), "audio_normalization", "tts-audio_normalization-int"),
    # model and language
    case(tts(model="large"), "model", "tts-model-unknown"),
    case(tts(model="turbo"), "model", "tts-model-not-loaded"),
    case(tts(model="multilingual", language_id="fr"), "model", "tts-multilingual-not-loaded"),
    case(tts(language_id="fr"), "language_id", "tts-language_id-with-standard"),
    case(tts(model="multilingual", language_id="xx"), "language_id", "tts-language_id-unsupported"),
    case(tts(model="multilingual", language_id="f"), "language_id", "tts-language_id-too-short"),
    case(tts(cache="yes"), "cache", "tts-cache-string"),
    case(tts(cache=1), "cache", "tts-cache-int"),
    case(tts(mode="turbo"), "mode", "tts-mode-unknown"),
    case(tts(mode=None), "mode", "tts-mode-null"),
    # unknown fields
    case(tts(surprise=1), "surprise", "tts-unknown-field"),
    case(tts(voice="Amy"), "voice", "tts-unknown-field-voice"),
    case(tts(Text="Hi"), "Text", "tts-unknown-field-wrong-case"),
    # voice sources: one at most, and each well formed
    case(tts(voice_id=AMY_ID, voice_name="Amy"), "voice_id", "tts-voice_id-and-voice_name"),
    case(tts(voice_id=AMY_ID, reference_audio=GOOD_AUDIO), "reference_audio", "tts-voice_id-and-reference_audio"),
    case(tts(voice_id=AMY_ID, voice_name="Amy", reference_audio=GOOD_AUDIO), "voice_name",
         "tts-all-three-voice-sources"),
    case(tts(voice_id="../etc/passwd"), "voice_id", "tts-voice_id-path-traversal"),
    case(tts(voice_id="abc"), "voice_id", "tts-voice_id-too-short"),
    case(tts(voice_id="zzzzzzzz"), "voice_id", "tts-voice_id-not-hex"),
    case(tts(voice_id=AMY_ID + "0"), "voice_id", "tts-voice_id-too-long"),
    case(tts(voice_id=UNKNOWN_VOICE_ID), "voice_id", "tts-voice_id-unknown"),
    case(tts(voice_id=12345678), "voice_id", "tts-voice_id-int"),
    case(tts(voice_name=UNKNOWN_VOICE_NAME), "voice_name", "tts-voice_name-unknown"),
    case(tts(voice_name="x" * (MAX_NAME_CHARS + 1)), "voice_name", "tts-voice_name-too-long"),
    case(tts(voice_name=7), "voice_name", "tts-voice_name-int"),
    # reference_audio payloads
    case(tts(reference_audio=NOT_BASE64), "reference_audio", "tts-reference_audio-not-base64"),
    case(tts(reference_audio=BAD_DATA_URI), "reference_audio", "tts-reference_audio-bad-data-uri"),
    case(tts(reference_audio=EMPTY_DATA_URI), "reference_audio", "tts-reference_audio-empty-data-uri"),
    case(tts(reference_audio=""), "reference_audio", "tts-reference_audio-empty"),
    case(tts(reference_audio=NON_AUDIO), "reference_audio", "tts-reference_audio-not-audio"),
    case(tts(reference_audio=TRUNCATED_HEADER_WAV), "reference_audio", "tts-reference_audio-truncated-wav"),
    case(tts(reference_audio=HEADER_ONLY_WAV), "reference_audio", "tts-reference_audio-no-samples"),
    case(tts(reference_audio=SILENT_AUDIO), "reference_audio", "tts-reference_audio-silent"),
    case(tts(reference_audio=NAN_AUDIO), "reference_audio", "tts-reference_audio-nan"),
    case(tts(reference_audio=INF_AUDIO), "reference_audio", "tts-reference_audio-inf"),
    case(tts(reference_audio=123), "reference_audio", "tts-reference_audio-int"),
    case(tts(reference_audio=OVERSIZED_BASE64), "reference_audio", "tts-reference_audio-oversized"),
    case(tts(max_reference_duration_sec=0), "max_reference_duration_sec", "tts-max_reference_duration_sec-zero"),
    case(tts(max_reference_duration_sec=61.0), "max_reference_duration_sec", "tts-max_reference_duration_sec-over"),
    case(tts(max_reference_duration_sec="30"), "max_reference_duration_sec",
         "tts-max_reference_duration_sec-string"),
    # streaming modes
    case(tts("streaming", chunk_size=0), "chunk_size", "streaming-chunk_size-zero"),
    case(tts("streaming", chunk_size=1001), "chunk_size", "streaming-chunk_size-over"),
    case(tts("streaming", chunk_size="25"), "chunk_size", "streaming-chunk_size-string"),
    case(tts("streaming", chunk_size=2.5), "chunk_size", "streaming-chunk_size-float"),
    case(tts("streaming", text=""), "text", "streaming-text-empty"),
    case(tts("streaming", reference_audio=SILENT_AUDIO), "reference_audio", "streaming-reference_audio-silent"),
    case(tts("streaming", voice_name=UNKNOWN_VOICE_NAME), "voice_name", "streaming-voice_name-unknown"),
    case(tts("streaming_voice_cloning"), "voice_id", "svc-no-voice"),
    case(tts("streaming_voice_cloning", voice_id="none"), "voice_id", "svc-voice_id-absent-marker"),
    case(tts("streaming_voice_cloning", reference_audio=NOT_BASE64), "reference_audio",
         "svc-reference_audio-not-base64"),
    case(tts("streaming_voice_cloning", voice_name=UNKNOWN_VOICE_NAME), "voice_name", "svc-voice_name-unknown"),
    case(tts("streaming_voice_cloning", voice_name="Amy", exaggeration=3), "exaggeration",
         "svc-exaggeration-over"),
    case(tts("streaming_voice_cloning", voice_name="Amy", chunk_size=-5), "chunk_size", "svc-chunk_size-negative"),
]

VOICE_CLONING_CASES = [
    case(without(cloning(), "reference_audio"), "reference_audio", "cloning-reference_audio-missing"),
    case(without(cloning(), "voice_name"), "voice_name", "cloning-voice_name-missing-while-saving"),
    case(cloning(reference_audio=SHORT_AUDIO), "reference_audio", "cloning-audio-too-short"),
    case(cloning(reference_audio=HALF_WAV), "reference_audio", "cloning-truncated-wav-too-short"),
    case(cloning(reference_audio=SHORT_AUDIO, save_to_library=False), "reference_audio",
         "cloning-unsaved-audio-too-short"),
    case(cloning(reference_audio=NOT_BASE64), "reference_audio", "cloning-reference_audio-not-base64"),
    case(cloning(reference_audio=SILENT_AUDIO), "reference_audio", "cloning-reference_audio-silent"),
    case(cloning(reference_audio=NAN_AUDIO), "reference_audio", "cloning-reference_audio-nan"),
    case(cloning(reference_audio=None), "reference_audio", "cloning-reference_audio-null"),
    case(cloning(voice_name=5), "voice_name", "cloning-voice_name-int"),
    case(cloning(voice_name="none"), "voice_name", "cloning-voice_name-reserved-none"),
    case(cloning(voice_name="x" * (MAX_NAME_CHARS + 1)), "voice_name", "cloning-voice_name-too-long"),
    case(cloning(voice_name=CONTROL_CHARS), "voice_name", "cloning-voice_name-control-chars"),
    case(cloning(voice_description="x" * (MAX_DESCRIPTION_CHARS + 1)), "voice_description",
         "cloning-voice_description-too-long"),
    case(cloning(voice_description=CONTROL_CHARS), "voice_description", "cloning-voice_description-control-chars"),
    case(cloning(gender=""), "gender", "cloning-gender-empty"),
    case(cloning(save_to_library="no"), "save_to_library", "cloning-save_to_library-string"),
    case(cloning(exaggeration=None), "exaggeration", "cloning-exaggeration-null"),
    case(cloning(cfg_weight=5), "cfg_weight", "cloning-cfg_weight-over"),
    case(cloning(text=""), "text", "cloning-text-empty"),
    case(cloning(mode="basic"), "mode", "cloning-unknown-field-mode"),
    case(cloning(voice_id=AMY_ID), "voice_id", "cloning-unknown-field-voice_id"),
    case(cloning(language_id="en"), "language_id", "cloning-language_id-with-standard"),
    case(cloning(output_format="mp4"), "output_format", "cloning-output_format-unknown"),
]

UPLOAD_VOICE_CASES = [
    case(without(upload(), "voice_name"), "voice_name", "upload-voice_name-missing"),
    case(without(upload(), "reference_audio"), "reference_audio", "upload-reference_audio-missing"),
    case(upload(voice_name=""), "voice_name", "upload-voice_name-empty"),
    case(upload(voice_name=None), "voice_name", "upload-voice_name-null"),
    case(upload(voice_name="None"), "voice_name", "upload-voice_name-reserved-none"),
    case(upload(voice_name=CONTROL_CHARS), "voice_name", "upload-voice_name-control-chars"),
    case(upload(reference_audio=SHORT_AUDIO), "reference_audio", "upload-audio-too-short"),
    case(upload(reference_audio=NON_AUDIO), "reference_audio", "upload-reference_audio-not-audio"),
    case(upload(reference_audio=INF_AUDIO), "reference_audio", "upload-reference_audio-inf"),
    case(upload(gender="x" * 33), "gender", "upload-gender-too-long"),
    case(upload(gender="f\x07"), "gender", "upload-gender-control-chars"),
    case(upload(voice_description=5), "voice_description", "upload-voice_description-int"),
    case(upload(voice_description=CONTROL_CHARS), "voice_description", "upload-voice_description-control-chars"),
    case(upload(text=GOOD_TEXT), "text", "upload-unknown-field-text"),
]

LIST_AND_SEARCH_CASES = [
    case({"operation": "list_local_voices", "query": "a"}, "query", "list_local-unknown-field"),
    case({"operation": "list_voices", "text": GOOD_TEXT}, "text", "list_voices-unknown-field-text"),
    case({"operation": "list_voices", "limit": 10}, "limit", "list_voices-unknown-field-limit"),
    case({"operation": "search_local_voices", "query": 5}, "query", "search-query-int"),
    case({"operation": "search_local_voices", "query": "x" * (MAX_NAME_CHARS + 1)}, "query",
         "search-query-too-long"),
    case({"operation": "search_local_voices", "gender": ["female"]}, "gender", "search-gender-list"),
    case({"operation": "search_local_voices", "voice_name": "Amy"}, "voice_name", "search-unknown-field"),
    case({"operation": "delete_voice"}, "voice_id", "delete-no-voice"),
    case({"operation": "delete_voice", "voice_id": AMY_ID, "voice_name": "Amy"}, "voice_id", "delete-two-voices"),
    case({"operation": "delete_voice", "voice_id": UNKNOWN_VOICE_ID}, "voice_id", "delete-unknown-id"),
    case({"operation": "delete_voice", "voice_id": AMY_ID}, "voice_id", "delete-shipped-voice"),
    case({"operation": "delete_voice", "voice_name": 5}, "voice_name", "delete-voice_name-int"),
]

VOICE_CONVERSION_CASES = [
    case(without(conversion(voice_name="Amy"), "input_audio"), "input_audio", "conversion-input_audio-missing"),
    case(conversion(), "target_speaker", "conversion-no-target"),
    case(conversion(voice_name="Amy", voice_id=AMY_ID), "voice_name", "conversion-two-targets"),
    case(conversion(voice_name="Amy", input_audio=NOT_BASE64), "input_audio", "conversion-input_audio-not-base64"),
    case(conversion(voice_name="Amy", input_audio=SILENT_AUDIO), "input_audio", "conversion-input_audio-silent"),
    case(conversion(voice_name="Amy", input_audio=NAN_AUDIO), "input_audio", "conversion-input_audio-nan"),
    case(conversion(voice_name="Amy", input_audio=HEADER_ONLY_WAV), "input_audio",
         "conversion-input_audio-no-samples"),
    case(conversion(voice_name="Amy", input_audio=42), "input_audio", "conversion-input_audio-int"),
    case(conversion(target_speaker=NON_AUDIO), "target_speaker", "conversion-target_speaker-not-audio"),
    case(conversion(target_speaker=BAD_DATA_URI), "target_speaker", "conversion-target_speaker-bad-data-uri"),
    case(conversion(voice_name=UNKNOWN_VOICE_NAME), "voice_name", "conversion-voice_name-unknown"),
    case(conversion(voice_id="../../etc/passwd"), "voice_id", "conversion-voice_id-path-traversal"),
    case(conversion(voice_id=UNKNOWN_VOICE_ID), "voice_id", "conversion-voice_id-unknown"),
    case(conversion(voice_name="Amy", sample_rate=1000), "sample_rate", "conversion-sample_rate-under"),
    case(conversion(voice_name="Amy", output_format="wma"), "output_format", "conversion-output_format-unknown"),
    case(conversion(voice_name="Amy", no_watermark="true"), "no_watermark", "conversion-no_watermark-string"),
    case(conversion(voice_name="Amy", seed=-5), "seed", "conversion-seed-negative"),
    case(conversion(voice_name="Amy", text=GOOD_TEXT), "text", "conversion-unknown-field-text"),
    case(conversion(voice_name="Amy", exaggeration=0.5), "exaggeration", "conversion-unknown-field-exaggeration"),
]

VOICE_TRANSFER_CASES = [
    case(without(transfer(voice_name="Amy"), "input_audio"), "input_audio", "transfer-input_audio-missing"),
    case(transfer(), "voice_name", "transfer-embedding-no-voice"),
    case(transfer(target_audio=GOOD_AUDIO), "target_audio", "transfer-embedding-with-target_audio"),
    case(transfer(voice_name="Amy", voice_id=AMY_ID), "voice_id", "transfer-embedding-two-voices"),
    case(transfer(voice_name=UNKNOWN_VOICE_NAME), "voice_name", "transfer-embedding-voice_name-unknown"),
    case(transfer(voice_id="../../x"), "voice_id", "transfer-embedding-voice_id-path-traversal"),
    case(transfer(voice_id="ABCDEFGH"), "voice_id", "transfer-embedding-voice_id-not-hex"),
    case(transfer(voice_name="Amy", input_audio=""), "input_audio", "transfer-embedding-input_audio-empty"),
    case(transfer(voice_name="Amy", input_audio=INF_AUDIO), "input_audio", "transfer-embedding-input_audio-inf"),
    case(transfer("clone", voice_name="Amy"), "transfer_mode", "transfer-mode-unknown"),
    case(transfer(None, voice_name="Amy"), "transfer_mode", "transfer-mode-null"),
    case(transfer("audio"), "target_audio", "transfer-audio-target_audio-missing"),
    case(transfer("audio", target_audio=GOOD_AUDIO, voice_name="Amy"), "voice_name",
         "transfer-audio-with-voice_name"),
    case(transfer("audio", target_audio=GOOD_AUDIO, voice_id=AMY_ID), "voice_id",
         "transfer-audio-voice_id-given"),
    case(transfer("audio", target_audio=NOT_BASE64), "target_audio", "transfer-audio-target_audio-not-base64"),
    case(transfer("audio", target_audio=SILENT_AUDIO), "target_audio", "transfer-audio-target_audio-silent"),
    case(transfer("audio", target_audio=TRUNCATED_HEADER_WAV), "target_audio",
         "transfer-audio-target_audio-truncated"),
    case(transfer("audio", target_audio=GOOD_AUDIO, input_audio=NAN_AUDIO), "input_audio",
         "transfer-audio-input_audio-nan"),
    case(transfer("audio", target_audio=GOOD_AUDIO, sample_rate=48001), "sample_rate",
         "transfer-audio-sample_rate-over"),
    case(transfer("audio", target_audio=GOOD_AUDIO, output_format=""), "output_format",
         "transfer-audio-output_format-empty"),
]

INPUT_CASES = (TOP_LEVEL_CASES + TTS_CASES + VOICE_CLONING_CASES + UPLOAD_VOICE_CASES
               + LIST_AND_SEARCH_CASES + VOICE_CONVERSION_CASES + VOICE_TRANSFER_CASES)

# Whole RunPod jobs whose shape is wrong before any input is read.
RAW_JOB_CASES = [
    case({}, "input", "job-empty"),
    case({"id": "job-1"}, "input", "job-missing-input"),
    case({"id": "job-1", "inputs": {"text": GOOD_TEXT}}, "input", "job-misspelt-input"),
    case({"id": "job-1", "input": None}, "input", "job-null-input"),
    case("not a job", "input", "job-is-string"),
    case(None, "input", "job-is-null"),
    case([], "input", "job-is-list"),
]

MIN_CASES = 100


# -- fixtures ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shared_worker(tmp_path_factory):
    """One worker (stub model, copy of the demo library) that every case in this module hits.

    Module scope on purpose: the final test checks that the cases left this worker intact.
    """
    library_dir = copy_demo_library(tmp_path_factory.mktemp("malformed") / "library")
    return stub_worker(library_dir, tmp_path_factory.mktemp("malformed_conds"))


@pytest.fixture(scope="module")
def system_temp(tmp_path_factory):
    """An empty directory as the system temp dir for the whole module.

    The real /tmp is shared with other processes, so a listing of it would be flaky; a
    fresh directory makes any file a job leaves behind visible.
    """
    temp_dir = tmp_path_factory.mktemp("system_temp")  # pytest's own basetemp is fixed before the patch
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(tempfile, "tempdir", str(temp_dir))
        patch.setenv("TMPDIR", str(temp_dir))
        assert tempfile.gettempdir() == str(temp_dir)
        yield temp_dir, set(os.listdir(temp_dir))


@pytest.fixture(scope="module")
def library_before(shared_worker):
    return shared_worker.library.list_voices()


@pytest.fixture(autouse=True)
def serve_with_shared_worker(shared_worker, system_temp, library_before, monkeypatch):
    """Route handler.handler to the shared worker, as the run_job fixture does with its own.

    Asking for the module fixtures here takes their snapshots before the first case runs.
    """
    import handler

    monkeypatch.setattr(handler, "get_worker", lambda: shared_worker)
    # Unknown fields are errors by default; the environment must not turn them into warnings.
    monkeypatch.delenv("REJECT_UNKNOWN_FIELDS", raising=False)


# -- helpers -----------------------------------------------------------------------------


def run_handler(job) -> dict:
    import handler

    return handler.handler(job)


def assert_names_field(result, field: str) -> None:
    assert isinstance(result, dict), result
    assert list(result) == ["error"], result
    message = result["error"]
    assert isinstance(message, str), message
    json.dumps(result, allow_nan=False)  # RunPod posts the result as JSON
    # A whole word: "description" must not pass for "voice_description".
    assert re.search(rf"\b{re.escape(field)}\b", message), message


# -- tests -------------------------------------------------------------------------------


def test_the_table_is_large_and_covers_every_operation():
    from chatterbox_worker.operations import OPERATIONS

    assert len(INPUT_CASES) + len(RAW_JOB_CASES) >= MIN_CASES
    operations = {job.get("operation", "tts") for job, _ in (c.values for c in INPUT_CASES)
                  if isinstance(job, dict) and isinstance(job.get("operation", "tts"), str)}
    assert set(OPERATIONS) <= operations
    modes = {job.get("mode") for job, _ in (c.values for c in TTS_CASES)}
    transfer_modes = {job.get("transfer_mode") for job, _ in (c.values for c in VOICE_TRANSFER_CASES)}
    assert {"basic", "streaming", "streaming_voice_cloning"} <= modes
    assert {"embedding", "audio"} <= transfer_modes


@pytest.mark.parametrize("job_input, field", INPUT_CASES)
def test_malformed_input_is_rejected_naming_the_field(job_input, field):
    assert_names_field(run_handler({"id": "malformed", "input": job_input}), field)


@pytest.mark.parametrize("job, field", RAW_JOB_CASES)
def test_malformed_job_is_rejected_naming_the_field(job, field):
    assert_names_field(run_handler(job), field)


def test_after_every_case_the_worker_still_serves_and_no_temp_file_is_left(shared_worker, system_temp,
                                                                            library_before):
    temp_dir, temp_before = system_temp
    model = shared_worker.models["standard"]
    # A rejected job must cost no model time and must not touch the library.
    assert model.generations == []
    assert shared_worker.library.list_voices() == library_before

    result = run_handler({"id": "good", "input": {"text": GOOD_TEXT, "voice_name": "Amy"}})
    assert "error" not in result, result
    assert result["audio"] and result["parameters"]["voice_name"] == "Amy"
    assert model.generations, "the good job did not reach the model"
    assert set(os.listdir(temp_dir)) == temp_before
