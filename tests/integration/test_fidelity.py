"""The array path computes the library's own conditionals, and generation is reproducible.

The reference is the library's file path, ``ChatterboxTTS.prepare_conditionals(path)``, on
the same audio. Where the comparison is not bitwise, the tolerance is stated and explained.
"""
from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch
from chatterbox.tts import ChatterboxTTS
from real_model import TINY_TOKENS, bitwise_equal, conditionals_tensors, max_abs_differences

pytestmark = pytest.mark.integration

PROMPT_SECONDS = 4.0


@pytest.fixture(scope="module")
def speech() -> tuple[np.ndarray, int]:
    """Real (espeak) speech from the shipped demo library, at 24 kHz float32."""
    from conftest import REPO
    from optimized_voice_library import OptimizedVoiceLibrary

    voice = OptimizedVoiceLibrary(REPO).get_voice_audio_by_name_direct("Amy")
    return voice.samples[: int(PROMPT_SECONDS * voice.sample_rate)].copy(), voice.sample_rate


def file_conditionals(model, path):
    """The library's own file path (it stores the result on the model)."""
    ChatterboxTTS.prepare_conditionals(model, str(path), exaggeration=0.5)
    return model.conds


@pytest.mark.parametrize("sample_rate", [24000, 16000, 44100])
def test_float32_wav_is_bitwise_equal(model, speech, tmp_path, sample_rate):
    import librosa

    samples, sr = speech
    if sample_rate != sr:
        samples = librosa.resample(samples, orig_sr=sr, target_sr=sample_rate)
    path = tmp_path / "prompt.wav"
    sf.write(path, samples, sample_rate, subtype="FLOAT")
    from_file = file_conditionals(model, path)
    from_array = model.prepare_conditionals_from_array(samples, sample_rate)
    assert bitwise_equal(from_array, from_file)


def test_pcm16_wav_is_bitwise_equal_to_its_own_samples(model, speech, tmp_path):
    samples, sr = speech
    path = tmp_path / "prompt16.wav"
    sf.write(path, samples, sr, subtype="PCM_16")
    file_samples, _ = sf.read(path, dtype="float32")  # int16 / 32768, what librosa.load reads
    assert bitwise_equal(model.prepare_conditionals_from_array(file_samples, sr), file_conditionals(model, path))


# Measured on the random-weights checkpoint with 4 s of espeak speech: quantising a float
# prompt to 16-bit PCM (the deployed worker's temp WAV) moves every continuous feature by
# well under 1e-2 and leaves most S3 prompt tokens unchanged. The array path skips that
# quantisation, so it is the legacy path that loses precision, not the fast path.
PCM16_FEATURE_TOLERANCE = {"t3.speaker_emb": 1e-2, "gen.prompt_feat": 5e-2, "gen.embedding": 5e-2}
PCM16_MIN_TOKEN_AGREEMENT = 0.8


def test_pcm16_round_trip_of_float_audio_within_tolerance(model, speech, tmp_path):
    samples, sr = speech
    path = tmp_path / "legacy.wav"
    sf.write(path, samples, sr, subtype="PCM_16")
    from_array = model.prepare_conditionals_from_array(samples, sr)
    from_file = file_conditionals(model, path)
    diffs = max_abs_differences(from_array, from_file)
    for name, tolerance in PCM16_FEATURE_TOLERANCE.items():
        assert diffs[name] <= tolerance, (name, diffs[name])
    a, b = conditionals_tensors(from_array), conditionals_tensors(from_file)
    for name in ("t3.cond_prompt_speech_tokens", "gen.prompt_token"):
        agreement = float((a[name] == b[name]).double().mean())
        assert agreement >= PCM16_MIN_TOKEN_AGREEMENT, (name, agreement)


def test_same_seed_same_samples(model, speech):
    samples, sr = speech
    conds = model.prepare_conditionals_from_array(samples, sr)
    first = model.synthesize("Reproducible.", conditionals=conds, seed=7, max_new_tokens=TINY_TOKENS)
    again = model.synthesize("Reproducible.", conditionals=conds, seed=7, max_new_tokens=TINY_TOKENS)
    other = model.synthesize("Reproducible.", conditionals=conds, seed=8, max_new_tokens=TINY_TOKENS)
    assert first.size > 0 and np.array_equal(first, again)
    assert not np.array_equal(first, other)


def test_generate_keeps_library_signature_and_leaves_model_state(model, speech):
    samples, sr = speech
    before = model.conds
    wav = model.generate("Hello.", audio_prompt_array=samples, audio_prompt_sr=sr, seed=3,
                         max_new_tokens=TINY_TOKENS)
    assert isinstance(wav, torch.Tensor) and wav.shape[0] == 1 and wav.shape[1] > 0
    assert model.conds is before


def test_stream_samples_the_library_tokens(model, speech):
    """The streaming sampler draws exactly the tokens T3.inference returns for one seed."""
    from optimized_chatterbox import seed_everything

    samples, sr = speech
    conds = model.conditionals_for_call(model.prepare_conditionals_from_array(samples, sr), 0.5)
    text_tokens = model._text_tokens("Streaming check.")
    kwargs = dict(max_new_tokens=6, temperature=0.8, cfg_weight=0.5, repetition_penalty=1.2,
                  min_p=0.05, top_p=1.0)
    with torch.inference_mode():
        seed_everything(11)
        library_tokens = model.t3.inference(t3_cond=conds.t3, text_tokens=text_tokens, **kwargs)[0]
        seed_everything(11)
        conds = model.conditionals_for_call(conds, 0.5)
        streamed = list(model._sample_speech_tokens(conds.t3, text_tokens, **kwargs))
    streamed = torch.cat(streamed, dim=1)[0] if streamed else torch.zeros(0, dtype=torch.long)
    stop = model.t3.hp.stop_speech_token
    library_tokens = library_tokens[: (library_tokens == stop).nonzero()[0, 0]] if stop in library_tokens \
        else library_tokens
    assert torch.equal(streamed.cpu(), library_tokens.cpu())


def test_stream_yields_chunks_of_audio(model, speech):
    samples, sr = speech
    conds = model.prepare_conditionals_from_array(samples, sr)
    chunks = list(model.stream("Chunks.", conditionals=conds, chunk_size=2, seed=5, max_new_tokens=TINY_TOKENS))
    assert len(chunks) >= 2 and all(c.dtype == np.float32 for c in chunks)


def test_conversion_uses_the_vc_conditionals(model, speech):
    """VC's set_target_voice computes exactly conds.gen, so cached TTS conditionals serve VC."""
    from chatterbox.vc import ChatterboxVC

    samples, sr = speech
    vc = ChatterboxVC(model.s3gen, "cpu")
    import tempfile
    import os

    fd, path = tempfile.mkstemp(suffix=".wav")
    os.close(fd)
    try:
        sf.write(path, samples, sr, subtype="FLOAT")
        vc.set_target_voice(path)
    finally:
        os.unlink(path)
    conds = model.prepare_conditionals_from_array(samples, sr)
    for key, value in vc.ref_dict.items():
        if torch.is_tensor(value):
            assert torch.equal(value, conds.gen[key]), key
