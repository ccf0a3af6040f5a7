"""Property-based fuzzing of the job boundary: whatever JSON a client sends, the worker answers.

What this suite proves, for hypothesis-generated jobs:

* ``handler.handler`` never raises, for any job input and for any raw job shape
  (``{}``, ``{"input": <any JSON>}``, a job that is not even a dict);
* it always returns a dict that is plain JSON (RunPod drops anything else);
* an ``error`` value is always a non-empty str (RunPod drops a result whose error is not);
* no job ends in the catch-all ``internal:`` error: every failure a client can cause is
  one the worker anticipated (a :class:`JobError`), not an exception it merely caught.

The job inputs mix real field names and operations with random ones, and values that are
plausible for a field (real voices, real audio, in-range numbers) with arbitrary JSON, so
that many jobs get past validation and into the operations themselves.
"""
from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from chatterbox_worker.contract.request_schema import SUPPORTED_LANGUAGE_IDS
from chatterbox_worker.operations import OPERATIONS
from chatterbox_worker.testing.audio_payloads import make_wav_b64

REQUEST_MODELS = {name: op.request_model for name, op in OPERATIONS.items()}

FUZZ_SETTINGS = settings(max_examples=300, deadline=None,
                         suppress_health_check=[HealthCheck.function_scoped_fixture])
MAX_TEXT = 20  # short text keeps the stub's audio, and so each example, small
MAX_KEYS = 5
INTERNAL_ERROR_PREFIX = "internal:"

# "operation" is drawn on its own, so that a key drawn later never overwrites it.
FIELD_NAMES = sorted({name for model in REQUEST_MODELS.values() for name in model.model_fields} - {"operation"})
AUDIO_FIELDS = ("reference_audio", "input_audio", "target_audio", "target_speaker")
FLOAT_FIELDS = ("exaggeration", "cfg_weight", "cfg", "temperature", "repetition_penalty", "min_p",
                "top_p", "max_reference_duration_sec")
INT_FIELDS = ("seed", "max_new_tokens", "chunk_size", "sample_rate")
BOOL_FIELDS = ("cache", "save_to_library", "no_watermark")
CHOICES = {
    "mode": ("basic", "streaming", "streaming_voice_cloning"),
    "transfer_mode": ("embedding", "audio"),
    "output_format": ("wav", "flac", "mp3", "ogg", "opus", "pcm_16", "aiff"),
    "audio_normalization": ("peak", "rms", "loud"),
    "model": ("standard", "multilingual", "turbo"),
    "language_id": (*SUPPORTED_LANGUAGE_IDS[:3], "xx"),
    "gender": ("female", "male", "unknown", ""),
}
VOICE_NAMES = ("Amy", "amy", "Aaron", "A", "none", "", "NoSuchVoice")
VOICE_IDS = ("de16e46c", "DE16E46C", "0000beef", "none", "../etc/passwd", "abc")
# Built once: a clonable prompt (over 5 s), a short one, and near-misses of valid base64.
GOOD_AUDIO = make_wav_b64(6.0)
SHORT_AUDIO = make_wav_b64(1.0)
AUDIO_PAYLOADS = (GOOD_AUDIO, SHORT_AUDIO, "data:audio/wav;base64," + SHORT_AUDIO, "", "AAAA", "not base64!")

short_text = st.text(max_size=MAX_TEXT)
json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | short_text
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(short_text, children, max_size=3),
    max_leaves=8,
)


def plausible_value(name: str) -> st.SearchStrategy:
    """Values a client might really send for a field: often valid, often just off."""
    if name in AUDIO_FIELDS:
        return st.sampled_from(AUDIO_PAYLOADS)
    if name in FLOAT_FIELDS:
        return st.floats(min_value=-1.0, max_value=6.0) | st.integers(min_value=-1, max_value=6)
    if name in INT_FIELDS:
        return st.integers(min_value=-10, max_value=50_000) | st.sampled_from((8000, 24000, 48000))
    if name in BOOL_FIELDS:
        return st.booleans()
    if name in CHOICES:
        return st.sampled_from(CHOICES[name])
    if name == "voice_name":
        return st.sampled_from(VOICE_NAMES) | short_text
    if name == "voice_id":
        return st.sampled_from(VOICE_IDS) | st.text(alphabet="0123456789abcdef./", max_size=10)
    return short_text


@st.composite
def mostly(draw, usual: st.SearchStrategy, rare: st.SearchStrategy, odds: int = 4):
    """``rare`` one time in ``odds``, else ``usual``.

    Not ``usual | rare``: hypothesis soon runs out of new values in a small ``usual``
    (the real operations, say) and then favours the endless ``rare`` branch, and a job
    with junk in it stops at validation, leaving the operations themselves unfuzzed.
    """
    if draw(st.integers(min_value=1, max_value=odds)) == 1:
        return draw(rare)
    return draw(usual)


def field_value(name: str) -> st.SearchStrategy:
    return mostly(plausible_value(name), json_values)


# None stands for "no operation key", which makes the job a tts job.
operations = mostly(st.sampled_from((*OPERATIONS, None)), short_text | json_values)


def own_field_names(operation) -> tuple[list[str], list[str]]:
    """(all fields, required fields) of the operation's request model; any field if unknown."""
    if operation is None:
        operation = "tts"  # the default operation
    model = REQUEST_MODELS.get(operation) if isinstance(operation, str) else None
    if model is None:
        return FIELD_NAMES, []
    fields = sorted(set(model.model_fields) - {"operation"})
    required = [name for name in fields if model.model_fields[name].is_required()]
    return fields or FIELD_NAMES, required  # the list operations have no field but operation


@st.composite
def job_inputs(draw) -> dict:
    """A job input: real and random keys, real and random operations, plausible and junk values."""
    job: dict = {}
    operation = draw(operations)
    if operation is not None:
        job["operation"] = operation
    own_fields, required = own_field_names(operation)
    if draw(st.booleans()):  # a job that has what its operation needs gets further
        for name in required:
            job[name] = draw(plausible_value(name))
    names = draw(st.lists(st.sampled_from(own_fields) | st.sampled_from(FIELD_NAMES),
                          unique=True, max_size=MAX_KEYS))
    for name in names:
        job[name] = draw(field_value(name))
    if draw(st.booleans()):
        job.update(draw(st.dictionaries(short_text, json_values, min_size=1, max_size=2)))
    return job


raw_jobs = st.one_of(
    st.just({}),
    json_values,
    st.fixed_dictionaries({"input": json_values}),
    st.fixed_dictionaries({"id": short_text, "input": job_inputs()}),
    st.dictionaries(short_text, json_values, max_size=3),
)


@pytest.fixture
def serve(worker, monkeypatch):
    """handler.handler served by the stub worker, as the run_job fixture does."""
    import handler

    monkeypatch.setattr(handler, "get_worker", lambda: worker)
    monkeypatch.delenv("REJECT_UNKNOWN_FIELDS", raising=False)
    return handler.handler


def outcome(result: dict) -> str:
    """A label for hypothesis' statistics: how far the fuzzed jobs get."""
    if "error" not in result:
        return "served"
    return "rejected: " + result["error"].split(":", 1)[0][:30]


def assert_runpod_result(result) -> None:
    assert isinstance(result, dict), result
    json.dumps(result, allow_nan=False)  # strict JSON: NaN and bytes are not JSON
    if "error" in result:
        error = result["error"]
        assert isinstance(error, str) and error, result
        # The catch-all means an exception no check anticipated: a bug, not a client error.
        assert not error.startswith(INTERNAL_ERROR_PREFIX), error
    event(outcome(result))


@FUZZ_SETTINGS
@given(job_input=job_inputs())
def test_any_job_input_gets_a_json_answer(serve, job_input):
    assert_runpod_result(serve({"id": "fuzz", "input": job_input}))


@FUZZ_SETTINGS
@given(job=raw_jobs)
def test_any_raw_job_gets_a_json_answer(serve, job):
    assert_runpod_result(serve(job))
