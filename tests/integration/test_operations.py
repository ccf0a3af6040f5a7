"""Every operation through handler.handler with the real model, and the legacy baseline."""
from __future__ import annotations

import os
import tempfile

import numpy as np
import pytest

from chatterbox_worker.testing.audio_payloads import decode_b64_audio, make_wav_b64
from tests.real_model import TINY_TOKENS

pytestmark = pytest.mark.integration


def speech_b64(library, name: str, seconds: float) -> str:
    import base64
    import io

    import soundfile as sf

    voice = library.get_voice_audio_by_name(name)
    buf = io.BytesIO()
    sf.write(buf, voice.samples[: int(seconds * voice.sample_rate)], voice.sample_rate, format="WAV")
    return base64.b64encode(buf.getvalue()).decode("ascii")


@pytest.fixture
def run(real_worker, monkeypatch):
    import handler

    monkeypatch.setattr(handler, "get_worker", lambda: real_worker)

    def run_job(job_input):
        result = handler.handler({"id": "test", "input": job_input})
        assert "error" not in result, result
        return result

    return run_job


@pytest.fixture(autouse=True)
def private_tempdir(tmp_path, monkeypatch):
    """Jobs' temp files go to a directory of this test's own: the system one is shared."""
    private = tmp_path / "tmp"
    private.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(private))
    monkeypatch.setenv("TMPDIR", str(private))


def temp_files() -> set[str]:
    return set(os.listdir(tempfile.gettempdir()))


def test_all_operations(run, real_worker):
    before = temp_files()
    library = real_worker.library
    names = [v["speaker_name"] for v in library.list_voices()]
    tiny = {"max_new_tokens": TINY_TOKENS, "seed": 1}

    basic = run({"text": "Hello there.", "voice_name": names[0], **tiny})
    wav, sr = decode_b64_audio(basic["audio"])
    assert sr == 24000 and wav.size > 0 and basic["metrics"]["cache_hit"] is False
    again = run({"text": "Hello there.", "voice_name": names[0], **tiny})
    assert again["metrics"]["cache_hit"] is True and again["audio"] == basic["audio"]

    streaming = run({"text": "Streaming now.", "mode": "streaming", "voice_name": names[0], "chunk_size": 2, **tiny})
    assert streaming["streaming_metrics"]["total_chunks"] >= 2
    cloning_mode = run({"text": "Clone mode.", "mode": "streaming_voice_cloning", "voice_name": names[1],
                        "chunk_size": 2, **tiny})
    assert cloning_mode["parameters"]["cfg_weight"] == 0.3

    short_clip = speech_b64(library, names[2], seconds=2.5)
    long_clip = make_wav_b64(seconds=5.5, sr=24000, freq=180.0)
    cloned = run({"operation": "voice_cloning", "reference_audio": long_clip, "voice_name": "Newcomer",
                  "text": "Sample.", **tiny})
    assert cloned["saved_to_library"] is True
    assert run({"text": "Me again.", "voice_name": "Newcomer", **tiny})["metrics"]["cache_hit"] is True

    listed = run({"operation": "list_local_voices"})
    assert "Newcomer" in [v["speaker_name"] for v in listed["local_voices"]]

    conversion = run({"operation": "voice_conversion", "input_audio": short_clip, "voice_name": names[0]})
    assert conversion["model"] == "s3gen" and conversion["duration"] > 0
    transfer = run({"operation": "voice_transfer", "input_audio": short_clip, "voice_id":
                    library.resolve_voice_id(names[1])})
    assert transfer["transfer_info"]["transfer_mode"] == "embedding"
    audio_transfer = run({"operation": "voice_transfer", "transfer_mode": "audio", "input_audio": short_clip,
                          "target_audio": speech_b64(library, names[3], seconds=2.0)})
    assert audio_transfer["transfer_info"]["transfer_mode"] == "audio"
    assert temp_files() == before


def test_legacy_handler_matches_optimized(real_worker, monkeypatch):
    """Same voice, same seed: the file path and the array path give the same samples.

    The demo voices sit on the 16-bit grid, so the legacy 16-bit temp WAV is lossless.
    """
    import handler
    import handler_legacy
    from chatterbox_worker.serving.worker import Worker

    legacy_worker = Worker(real_worker.models, real_worker.library, cache=None,
                           conditioner=handler_legacy.file_conditionals)
    monkeypatch.setattr(handler, "get_worker", lambda: real_worker)
    monkeypatch.setattr(handler_legacy, "get_worker", lambda: legacy_worker)
    name = real_worker.library.list_voices()[0]["speaker_name"]
    job = {"input": {"text": "Same either way.", "voice_name": name, "seed": 5, "max_new_tokens": TINY_TOKENS}}
    before = temp_files()
    optimized = handler.handler(job)
    legacy = handler_legacy.handler(job)
    assert temp_files() == before
    a, _ = decode_b64_audio(optimized["audio"])
    b, _ = decode_b64_audio(legacy["audio"])
    assert a.size > 0 and np.array_equal(a, b)


def test_legacy_removes_temp_file_when_the_model_fails(real_worker, monkeypatch):
    import handler_legacy
    from chatterbox_worker.serving.worker import Worker

    class Exploding:
        sr, variant = 24000, "standard"

        def __getattr__(self, name):
            raise RuntimeError("model exploded")

    legacy_worker = Worker({"standard": Exploding()}, real_worker.library, cache=None,
                           conditioner=handler_legacy.file_conditionals)
    monkeypatch.setattr(handler_legacy, "get_worker", lambda: legacy_worker)
    before = temp_files()
    name = real_worker.library.list_voices()[0]["speaker_name"]
    result = handler_legacy.handler({"input": {"text": "x", "voice_name": name}})
    assert isinstance(result["error"], str)
    assert temp_files() == before
