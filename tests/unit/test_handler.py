"""Every operation through handler.handle with the stub model: shapes, fields, errors."""
from __future__ import annotations

import json
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from chatterbox_worker.contract.limits import MAX_TEXT_CHARS
from chatterbox_worker.testing.audio_payloads import decode_b64_audio, make_wav_b64
from chatterbox_worker.testing.stub_model import STUB_SR, voice_tone

REPO = Path(__file__).resolve().parents[2]

METRIC_KEYS = {"voice_load_ms", "conditionals_ms", "generation_ms", "encode_ms", "total_ms",
               "audio_seconds", "rtf", "cache_hit"}


def dominant_frequency(wav: np.ndarray, sr: int) -> float:
    spectrum = np.abs(np.fft.rfft(wav))
    return float(np.fft.rfftfreq(wav.size, 1 / sr)[spectrum.argmax()])


def assert_voice(result: dict, fingerprint: str, key: str = "audio") -> None:
    wav, sr = decode_b64_audio(result[key])
    assert abs(dominant_frequency(wav, sr) - voice_tone(fingerprint)) < 5


# -- tts ---------------------------------------------------------------------------------


def test_tts_basic_default_voice(run_job):
    result = run_job({"text": "Hello world."})
    assert {"audio", "sample_rate", "text", "mode", "parameters", "metrics"} <= set(result)
    assert result["mode"] == "basic" and result["text"] == "Hello world."
    assert result["sample_rate"] == STUB_SR
    assert result["parameters"]["voice_cloning"] is False
    assert result["parameters"]["voice_id"] == "none" and result["parameters"]["voice_name"] == "none"
    assert METRIC_KEYS <= set(result["metrics"])
    wav, sr = decode_b64_audio(result["audio"])
    assert sr == STUB_SR and wav.size > 0


def test_tts_library_voice_by_name_and_id(run_job, library):
    amy_id = library.resolve_voice_id("Amy")
    by_name = run_job({"text": "Hi.", "voice_name": "Amy"})
    by_id = run_job({"operation": "tts", "text": "Hi.", "voice_id": amy_id})
    for result in (by_name, by_id):
        assert result["parameters"] == {**result["parameters"], "voice_cloning": True,
                                        "voice_id": amy_id, "voice_name": "Amy"}
    assert_voice(by_name, library.get_voice_audio(amy_id).content_hash)


def test_tts_reference_audio_is_the_voice(run_job):
    from chatterbox_worker.audio.codec import audio_fingerprint, decode_audio_base64

    ref = make_wav_b64(seconds=3.0, freq=330.0)
    result = run_job({"text": "Cloned.", "reference_audio": ref, "max_reference_duration_sec": 2.0})
    decoded = decode_audio_base64(ref, "reference_audio")
    trimmed = decoded.samples[: 2 * decoded.sample_rate]
    assert_voice(result, audio_fingerprint(trimmed, decoded.sample_rate))
    assert result["parameters"]["voice_source"] == "reference_audio"


def test_tts_defaults_and_cfg_alias(run_job):
    result = run_job({"text": "x", "cfg": 0.2})
    assert result["parameters"]["cfg_weight"] == 0.2
    assert result["parameters"]["exaggeration"] == 0.5 and result["parameters"]["temperature"] == 0.8


def test_seed_is_reported_and_reproduces(run_job):
    first = run_job({"text": "Same seed."})
    again = run_job({"text": "Same seed.", "seed": first["seed"]})
    assert isinstance(first["seed"], int)
    assert first["audio"] == again["audio"]


def test_only_a_seed_the_job_names_is_exact(run_job, stub_model, library):
    """A drawn seed lets the model share S3Gen calls (audio within float rounding of the
    seed's own); a seed the job names asks for the seed's exact audio."""
    source = make_wav_b64(seconds=2.0)
    for extra in ({}, {"mode": "streaming"}):
        run_job({"text": "No seed.", **extra})
        run_job({"text": "Named seed.", "seed": 5, **extra})
    run_job({"operation": "voice_conversion", "input_audio": source, "voice_name": "Amy"})
    run_job({"operation": "voice_conversion", "input_audio": source, "voice_name": "Amy", "seed": 5})
    assert stub_model.exact_seeds == [False, True, False, True, False, True]


def test_streaming_modes(run_job):
    result = run_job({"text": "A streamed sentence that is long enough.", "mode": "streaming", "chunk_size": 5})
    metrics = result["streaming_metrics"]
    assert {"total_chunks", "first_chunk_latency", "total_generation_time", "audio_duration", "rtf",
            "chunk_details"} <= set(metrics)
    assert metrics["total_chunks"] == len(metrics["chunk_details"]) > 1
    wav, _ = decode_b64_audio(result["audio"])
    assert abs(wav.size / STUB_SR - metrics["audio_duration"]) < 1e-3

    cloned = run_job({"text": "Clone me.", "mode": "streaming_voice_cloning", "voice_name": "Amy"})
    assert cloned["parameters"]["exaggeration"] == 0.7 and cloned["parameters"]["cfg_weight"] == 0.3
    assert run_job({"text": "x", "mode": "streaming_voice_cloning"})["error"].startswith("voice_id")


def test_long_text_is_split_and_joined(run_job, stub_model):
    text = " ".join(f"Sentence number {i} is here." for i in range(40))
    result = run_job({"text": text})
    assert len(stub_model.generations) > 1
    assert " ".join(t for t, _ in stub_model.generations) == " ".join(text.split())
    assert result["duration"] > 0


@pytest.mark.parametrize("fmt", ["wav", "flac", "mp3", "ogg", "opus"])
def test_output_formats(run_job, fmt):
    result = run_job({"text": "Formats.", "output_format": fmt})
    wav, sr = decode_b64_audio(result["audio"])
    assert result["format"] == fmt and wav.size > 0 and sr == result["sample_rate"]


def test_pcm_and_resampling_and_normalization(run_job):
    import base64

    pcm = run_job({"text": "Raw.", "output_format": "pcm_16", "sample_rate": 16000})
    samples = np.frombuffer(base64.b64decode(pcm["audio"]), dtype="<i2")
    assert pcm["sample_rate"] == 16000
    assert abs(samples.size / 16000 - pcm["duration"]) < 0.01
    peak = run_job({"text": "Loud.", "audio_normalization": "peak"})
    wav, _ = decode_b64_audio(peak["audio"])
    assert abs(np.abs(wav).max() - 0.95) < 0.01


# -- voice library operations ------------------------------------------------------------


def test_voice_cloning_saves_and_later_jobs_use_it(run_job, library_dir, worker):
    ref = make_wav_b64(seconds=6.0, freq=440.0)
    result = run_job({"operation": "voice_cloning", "reference_audio": ref, "voice_name": "Zed",
                      "voice_description": "test voice"})
    assert result["success"] is True and result["saved_to_library"] is True
    info = result["voice_info"]
    assert {"voice_id", "voice_name", "description", "duration", "sample_rate", "created_at", "type"} <= set(info)
    assert info["voice_name"] == "Zed" and info["description"] == "test voice"
    assert decode_b64_audio(result["sample_audio"])[0].size > 0

    later = run_job({"text": "Zed speaks.", "voice_name": "Zed"})
    assert later["parameters"]["voice_id"] == info["voice_id"]
    assert later["metrics"]["cache_hit"] is True  # the clone job already built its conditionals

    # A restarted worker reads the saved voice from disk.
    from optimized_voice_library import OptimizedVoiceLibrary

    fresh = OptimizedVoiceLibrary(library_dir)
    assert fresh.get_voice_audio_by_name("Zed").voice_id == info["voice_id"]


def test_voice_cloning_without_saving(run_job, library):
    before = len(library.list_voices())
    result = run_job({"operation": "voice_cloning", "reference_audio": make_wav_b64(6.0),
                      "save_to_library": False})
    assert result["saved_to_library"] is False and result["voice_info"]["voice_id"] == "none"
    assert len(library.list_voices()) == before


def test_voice_cloning_rejects_short_audio(run_job):
    result = run_job({"operation": "voice_cloning", "reference_audio": make_wav_b64(2.0), "voice_name": "S"})
    assert result["error"].startswith("reference_audio")


def test_upload_voice(run_job):
    result = run_job({"operation": "upload_voice", "voice_name": "Uma", "reference_audio": make_wav_b64(5.5)})
    assert result["success"] is True and result["voice_info"]["voice_name"] == "Uma"
    assert "sample_audio" not in result
    listed = run_job({"operation": "list_local_voices"})
    assert "Uma" in [v["speaker_name"] for v in listed["local_voices"]]


def test_list_and_search(run_job):
    listed = run_job({"operation": "list_local_voices"})
    assert listed["total_local_voices"] == len(listed["local_voices"]) > 0
    for voice in listed["local_voices"]:
        assert {"voice_id", "speaker_name", "gender", "duration", "original_file", "type"} <= set(voice)
    stats = listed["stats"]
    assert {"total_voices", "gender_distribution", "average_duration", "cache_size", "max_cache_size"} <= set(stats)
    assert run_job({"operation": "list_voices"})["total_voices"] == listed["total_local_voices"]
    found = run_job({"operation": "search_local_voices", "query": "am"})
    assert "Amy" in [v["speaker_name"] for v in found["voices"]]
    female = run_job({"operation": "search_local_voices", "gender": "female"})
    assert all(v["gender"] == "female" for v in female["voices"])


# -- conversion ---------------------------------------------------------------------------


def test_voice_conversion_targets(run_job, library):
    source = make_wav_b64(seconds=2.0, freq=200.0)
    amy = library.get_voice_audio_by_name("Amy")
    for target in ({"voice_name": "Amy"}, {"voice_id": amy.voice_id}):
        result = run_job({"operation": "voice_conversion", "input_audio": source, **target})
        assert {"audio", "sample_rate", "duration", "format", "model", "operation"} <= set(result)
        assert result["format"] == "wav" and result["model"] == "s3gen"
        assert result["operation"] == "voice_conversion" and abs(result["duration"] - 2.0) < 0.01
        assert_voice(result, amy.content_hash)
    speaker = run_job({"operation": "voice_conversion", "input_audio": source,
                       "target_speaker": make_wav_b64(3.0, freq=500.0), "no_watermark": True})
    assert speaker["model"] == "s3gen"
    assert run_job({"operation": "voice_conversion", "input_audio": source})["error"].startswith("target_speaker")


def test_voice_transfer_modes(run_job):
    source = make_wav_b64(seconds=2.0, freq=200.0)
    emb = run_job({"operation": "voice_transfer", "input_audio": source, "voice_name": "Amy"})
    assert emb["transfer_info"]["transfer_mode"] == "embedding"
    assert emb["transfer_info"]["target_voice"] == "Amy" and emb["transfer_info"]["source"] == "library"
    assert {"input_duration", "processing_time", "audio", "model"} <= set(emb)
    audio = run_job({"operation": "voice_transfer", "transfer_mode": "audio", "input_audio": source,
                     "target_audio": make_wav_b64(3.0, freq=600.0)})
    assert audio["transfer_info"]["transfer_mode"] == "audio"
    assert abs(audio["transfer_info"]["target_duration"] - 3.0) < 0.01
    missing = run_job({"operation": "voice_transfer", "transfer_mode": "audio", "input_audio": source})
    assert missing["error"].startswith("target_audio")


# -- cache, errors, concurrency ------------------------------------------------------------


def test_conditionals_cache_hits_and_bypass(run_job, stub_model):
    first = run_job({"text": "One.", "voice_name": "Amy"})
    calls = stub_model.conditionals_calls
    second = run_job({"text": "Two.", "voice_name": "Amy"})
    bypass = run_job({"text": "Three.", "voice_name": "Amy", "cache": False})
    assert first["metrics"]["cache_hit"] is False and second["metrics"]["cache_hit"] is True
    assert bypass["metrics"]["cache_hit"] is False
    assert stub_model.conditionals_calls == calls + 1


@pytest.mark.parametrize("job_input, field", [
    (None, "input"),
    ("text", "input"),
    ({"operation": "dance"}, "operation"),
    ({}, "text"),
    ({"text": ""}, "text"),
    ({"text": "x" * (MAX_TEXT_CHARS + 1)}, "text"),
    ({"text": "x", "temperature": 0}, "temperature"),
    ({"text": "x", "exaggeration": "high"}, "exaggeration"),
    ({"text": "x", "voice_name": "NoSuchVoice"}, "voice_name"),
    ({"text": "x", "voice_id": "../../etc"}, "voice_id"),
    ({"text": "x", "voice_id": "0000beef"}, "voice_id"),
    ({"text": "x", "reference_audio": "not base64!"}, "reference_audio"),
    ({"text": "x", "voice_id": "de16e46c", "voice_name": "Amy"}, "voice_id"),
    ({"text": "x", "output_format": "aiff"}, "output_format"),
    ({"text": "x", "sample_rate": 100}, "sample_rate"),
    ({"text": "x", "mode": "turbo"}, "mode"),
    ({"text": "x", "surprise": 1}, "surprise"),
    ({"text": "x", "model": "turbo"}, "model"),
    ({"text": "x", "language_id": "fr"}, "language_id"),
    ({"text": "x", "model": "multilingual", "language_id": "xx"}, "language_id"),
    ({"operation": "voice_conversion"}, "input_audio"),
    ({"operation": "upload_voice", "reference_audio": "AAAA"}, "voice_name"),
])
def test_bad_input_names_the_field(run_job, job_input, field):
    result = run_job(job_input)
    assert set(result) == {"error"} and isinstance(result["error"], str)
    assert result["error"].startswith(f"{field}:"), result["error"]
    assert "audio" in run_job({"text": "Still serving."})


def test_unknown_fields_can_be_downgraded_to_warnings(run_job, monkeypatch):
    monkeypatch.setenv("REJECT_UNKNOWN_FIELDS", "false")
    result = run_job({"text": "x", "surprise": 1})
    assert result["warnings"] == ["surprise: unknown field ignored"]


def test_unloadable_model_fails_every_job_and_asks_for_replacement(monkeypatch):
    import handler
    from chatterbox_worker.serving import bootstrap

    calls = []

    def broken():
        calls.append(1)
        raise RuntimeError("weights missing")

    monkeypatch.setattr(bootstrap, "loader", bootstrap.WorkerLoader(broken))
    for _ in range(2):
        result = handler.handler({"input": {"text": "x"}})
        assert result["refresh_worker"] is True and "weights missing" in result["error"]
    assert len(calls) == 1  # remembered, not retried per job


def test_concurrent_jobs_never_swap_voices(run_job, library):
    voices = [v["speaker_name"] for v in library.list_voices()][:5]
    expected = {name: library.get_voice_audio_by_name(name).content_hash for name in voices}
    jobs = [voices[i % len(voices)] for i in range(50)]
    barrier = threading.Barrier(8)

    def run(name):
        try:
            barrier.wait(timeout=1)
        except threading.BrokenBarrierError:
            pass
        return name, run_job({"text": f"I am {name}.", "voice_name": name})

    with ThreadPoolExecutor(max_workers=8) as pool:
        for name, result in pool.map(run, jobs):
            assert result["parameters"]["voice_name"] == name
            assert_voice(result, expected[name])


def test_unit_tier_needs_no_torch():
    code = (
        "import sys; import handler, optimized_voice_library;"
        "from chatterbox_worker import operations; from chatterbox_worker.serving import worker;"
        "from chatterbox_worker.pipeline import speech; from chatterbox_worker.conditionals import cache;"
        "from chatterbox_worker.contract import request_schema;"
        "assert 'torch' not in sys.modules, 'torch imported'; print('ok')"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_responses_are_plain_json(run_job):
    result = run_job({"text": "JSON only."})
    assert json.loads(json.dumps(result)) == result


def test_preload_prepares_library_voices(worker, stub_model):
    from chatterbox_worker.voices.preload import preload_voices

    assert preload_voices(worker, "2", max_seconds=60) == 2
    assert stub_model.conditionals_calls == 2 and worker.cache.stats()["entries"] == 2
    assert preload_voices(worker, "all", max_seconds=0) == 0  # the time bound is honoured


def test_rules_across_fields_name_the_field_the_client_sent(run_job):
    """Errors start with the field to fix, even when a rule spans several fields."""
    from chatterbox_worker.testing.audio_payloads import make_wav_b64

    audio = make_wav_b64(seconds=6.0)
    cases = [
        ({"operation": "upload_voice", "voice_name": "None", "reference_audio": audio}, "voice_name"),
        ({"operation": "voice_cloning", "voice_name": "none", "reference_audio": audio}, "voice_name"),
        ({"operation": "voice_transfer", "transfer_mode": "audio", "input_audio": audio,
          "target_audio": audio, "voice_id": "de16e46c"}, "voice_id"),
        ({"operation": "voice_transfer", "transfer_mode": "audio", "input_audio": audio,
          "target_audio": audio, "voice_name": "Amy"}, "voice_name"),
    ]
    for job, field in cases:
        result = run_job(job)
        assert set(result) == {"error"} and result["error"].startswith(f"{field}: "), (job, result)
