"""The multilingual and Turbo models through the same array path, cache and handler.

Each variant is loaded once per module from its own random-weights checkpoint (built by
``scripts/make_random_checkpoint.py --variant ...`` and cached) and dropped afterwards.
"""
from __future__ import annotations

import gc
import os

import numpy as np
import pytest
import torch
from chatterbox.mtl_tts import ChatterboxMultilingualTTS
from chatterbox.tts_turbo import ChatterboxTurboTTS

from tests.real_model import SHORT_VOICE_SECONDS, TINY_TOKENS, alignment_hooks_released, bitwise_equal, seed_everything, write_prompt

pytestmark = [pytest.mark.integration, pytest.mark.slow]

VARIANTS = ("multilingual", "turbo")
LIBRARY_CLASSES = {"multilingual": ChatterboxMultilingualTTS, "turbo": ChatterboxTurboTTS}
# Turbo refuses prompts of 5 s or less. The multilingual model takes a short prompt, since
# S3Gen's cost grows with it (about 1.2 s of CPU per second of prompt).
PROMPT_SECONDS = {"multilingual": SHORT_VOICE_SECONDS, "turbo": 6.0}


@pytest.fixture(scope="module", params=VARIANTS)
def variant_model(request):
    from chatterbox_worker.models.registry import VARIANTS as REGISTRY
    from chatterbox_worker.models.registry import load_model
    from chatterbox_worker.testing.random_checkpoint import ensure_checkpoint

    variant = request.param
    ckpt = os.environ.get(REGISTRY[variant].checkpoint_env) or ensure_checkpoint(variant)
    model = load_model(variant, "cpu", ckpt)
    yield model
    model.close()  # its engine's thread holds the weights
    del model
    gc.collect()


@pytest.fixture(scope="module")
def speech(variant_model) -> tuple[np.ndarray, int]:
    from chatterbox_worker.testing.demo_library import REPO_ROOT as REPO
    from optimized_voice_library import OptimizedVoiceLibrary

    voice = OptimizedVoiceLibrary(REPO).get_voice_audio_by_name("Bella")
    seconds = PROMPT_SECONDS[variant_model.variant]
    return voice.samples[: int(seconds * voice.sample_rate)].copy(), voice.sample_rate


@pytest.fixture
def variant_worker(model, variant_model, speech, tmp_path):
    """A worker with the standard model and one variant, over a one-voice library."""
    from chatterbox_worker.conditionals.cache import ConditionalsCache
    from chatterbox_worker.serving.worker import Worker
    from optimized_chatterbox import ConditionalsCodec
    from optimized_voice_library import OptimizedVoiceLibrary

    library = OptimizedVoiceLibrary(tmp_path / "library")
    samples, sr = speech
    library.save_voice("Bella", samples, sr, gender="female")
    cache = ConditionalsCache(ConditionalsCodec("cpu"), disk_dir=tmp_path / "conditionals")
    return Worker({"standard": model, variant_model.variant: variant_model}, library, cache)


@pytest.mark.parametrize("sample_rate", [24000, 16000])
def test_array_conditionals_equal_the_variants_file_path(variant_model, speech, tmp_path, sample_rate):
    path = tmp_path / "prompt.wav"
    samples = write_prompt(*speech, path, sample_rate)
    # The variant's own library method (Turbo's normalises loudness); it stores on the model.
    LIBRARY_CLASSES[variant_model.variant].prepare_conditionals(variant_model, str(path), exaggeration=0.5)
    from_file = variant_model.conds
    from_array = variant_model.prepare_conditionals_from_array(samples, sample_rate)
    assert bitwise_equal(from_array, from_file)


def test_seeded_synthesis_is_reproducible_and_leaves_no_hooks(variant_model, speech):
    samples, sr = speech
    conds = variant_model.prepare_conditionals_from_array(samples, sr)
    hooks_before = sum(len(m._forward_hooks) for m in variant_model.t3.tfmr.modules())
    options = variant_model.options(seed=5, max_new_tokens=TINY_TOKENS)
    if variant_model.variant == "multilingual":
        options = options.but(language_id="fr")
    first = variant_model.synthesize("Bonjour tout le monde.", conditionals=conds, options=options)
    again = variant_model.synthesize("Bonjour tout le monde.", conditionals=conds, options=options)
    assert first.dtype == np.float32 and first.size > 0
    assert np.array_equal(first, again)
    assert sum(len(m._forward_hooks) for m in variant_model.t3.tfmr.modules()) == hooks_before


def test_stream_samples_the_library_tokens(variant_model, speech):
    """For one seed, the engine draws exactly the tokens of the library's loop.

    The library seeds the global RNG; the engine seeds the job's own generator alike and
    draws in the same order (see test_fidelity.test_stream_samples_the_library_tokens).
    """
    samples, sr = speech
    conds = variant_model.prepare_conditionals_from_array(samples, sr)
    t3 = variant_model.t3
    if variant_model.variant == "multilingual":
        kwargs = dict(temperature=0.8, cfg_weight=0.5, repetition_penalty=2.0, min_p=0.05, top_p=1.0)
        job = variant_model.decode_job("Hola a todos.", conds, variant_model.options(
            exaggeration=0.5, max_new_tokens=6, seed=11, language_id="es", **kwargs))
        library_call = lambda call: t3.inference(t3_cond=call.t3, text_tokens=job.text_tokens,  # noqa: E731
                                                 max_new_tokens=6, **kwargs)[0]
    else:
        kwargs = dict(temperature=0.8, top_k=1000, top_p=0.95, repetition_penalty=1.2)
        job = variant_model.decode_job("Hello there.", conds, variant_model.options(
            exaggeration=0.0, cfg_weight=0.0, min_p=0.0, max_new_tokens=6, seed=11, language_id=None, **kwargs))
        library_call = lambda call: t3.inference_turbo(t3_cond=call.t3, text_tokens=job.text_tokens,  # noqa: E731
                                                       max_gen_len=5, **kwargs)[0]
    with torch.inference_mode(), alignment_hooks_released(t3.tfmr):
        seed_everything(11)
        library_tokens = library_call(variant_model.conditionals_for_call(conds, 0.5))
    streamed = torch.tensor(list(variant_model.speech_tokens(job)), dtype=torch.long)
    stop = t3.hp.stop_speech_token
    if stop in library_tokens:  # the multilingual loop returns its stop token; the engine ends there
        library_tokens = library_tokens[: (library_tokens == stop).nonzero()[0, 0]]
    assert streamed.numel() > 0
    assert torch.equal(streamed, library_tokens.cpu())


def test_s3gen_draws_the_library_s_noise_from_the_job_s_seed(variant_model, speech):
    """Turbo's mean-flow noise and both vocoders' draws come from the decode's generators:
    the library's audio for the seed, with the global RNG untouched."""
    from tests.real_model import library_s3gen_methods

    samples, sr = speech
    gen = variant_model.prepare_conditionals_from_array(samples, sr).gen
    window = torch.randint(0, 6561, (6,), generator=torch.Generator().manual_seed(3))
    steps = {"n_cfm_timesteps": 2} if variant_model.variant == "turbo" else {}
    with library_s3gen_methods(variant_model.s3gen), torch.inference_mode():
        seed_everything(13)
        expected = variant_model.s3gen.inference(speech_tokens=window, ref_dict=dict(gen), **steps)[0]
    state = torch.get_rng_state()
    ours = variant_model.run_s3gen(window, gen, seed=13, **steps)
    assert torch.equal(torch.get_rng_state(), state)
    assert np.array_equal(ours, expected.squeeze(0).numpy())


def test_tts_job_through_the_handler(variant_worker, variant_model, monkeypatch):
    import handler

    monkeypatch.setattr(handler, "get_worker", lambda: variant_worker)
    job = {"text": "Hola, ¿qué tal?", "voice_name": "Bella", "model": variant_model.variant,
           "max_new_tokens": TINY_TOKENS, "seed": 1}
    if variant_model.variant == "multilingual":
        job["language_id"] = "es"
    result = handler.handler({"input": job})
    assert "error" not in result, result
    assert result["parameters"]["model"] == variant_model.variant
    assert result["parameters"]["voice_name"] == "Bella"
    assert result["metrics"]["cache_hit"] is False

    again = handler.handler({"input": job})
    assert again["metrics"]["cache_hit"] is True
    assert again["audio"] == result["audio"]  # same seed, same conditionals (from the cache)


def test_streaming_job_with_a_variant(variant_worker, variant_model, monkeypatch):
    import handler

    monkeypatch.setattr(handler, "get_worker", lambda: variant_worker)
    job = {"text": "Streaming.", "voice_name": "Bella", "model": variant_model.variant,
           "mode": "streaming", "chunk_size": 2, "max_new_tokens": TINY_TOKENS, "seed": 2}
    items = list(handler.stream_handler({"input": job}))
    chunks, final = items[:-1], items[-1]
    assert chunks and all("error" not in c for c in chunks), items
    # The item with the metrics marks the end; chunks never wait to learn they are the last.
    assert all("chunk_index" in c and "is_last" not in c for c in chunks) and "metrics" in final
    assert final["streaming_metrics"]["total_chunks"] == len(chunks)


def test_conditionals_are_never_shared_between_variants(variant_worker, variant_model, monkeypatch):
    import handler

    monkeypatch.setattr(handler, "get_worker", lambda: variant_worker)
    base = {"text": "Same voice.", "voice_name": "Bella", "max_new_tokens": 2, "seed": 3}
    standard = handler.handler({"input": base})
    variant = handler.handler({"input": {**base, "model": variant_model.variant}})
    assert "error" not in standard and "error" not in variant, (standard, variant)
    assert standard["metrics"]["cache_hit"] is False and variant["metrics"]["cache_hit"] is False
    stats = variant_worker.cache.stats()
    assert stats["misses"] == 2 and stats["entries"] == 2, stats


def test_unequal_windows_in_one_call_are_their_solo_decodes(variant_model, speech):
    """The ragged S3Gen call on each variant's decoder (Turbo's is the mean-flow solver)."""
    from chatterbox_worker.s3gen.lane import Window

    samples, sr = speech
    gen = variant_model.prepare_conditionals_from_array(samples, sr).gen
    steps = 2 if variant_model.variant == "turbo" else None
    windows = [Window(tokens=torch.randint(0, 6561, (n,), generator=torch.Generator().manual_seed(n)), gen=gen,
                      seed=60 + n, exact=False, n_cfm_timesteps=steps) for n in (4, 7)]
    shared = variant_model._decode_windows(windows)
    for w, audio in zip(windows, shared):
        alone = variant_model._decode_windows([w])[0]
        assert audio.shape == alone.shape and np.abs(audio - alone).max() <= 1e-6


@pytest.mark.parametrize("variant_model", ["turbo"], indirect=True)
def test_turbo_normalises_loudness_like_the_library(variant_model, speech):
    samples, sr = speech
    quiet = variant_model.prepare_conditionals_from_array(samples * 0.1, sr)
    loud = variant_model.prepare_conditionals_from_array(samples, sr)
    # Normalised to the same loudness first, so the speaker embedding barely moves.
    diff = float((quiet.t3.speaker_emb - loud.t3.speaker_emb).abs().max())
    assert diff < 1e-3, diff


def test_variant_not_loaded_is_a_clear_error(real_worker, monkeypatch):
    import handler

    monkeypatch.setattr(handler, "get_worker", lambda: real_worker)
    result = handler.handler({"input": {"text": "Hi.", "model": "turbo"}})
    assert result["error"].startswith("model:") and "CHATTERBOX_MODELS" in result["error"]


def test_language_list_matches_the_library():
    from chatterbox.mtl_tts import SUPPORTED_LANGUAGES

    from chatterbox_worker.contract.request_schema import SUPPORTED_LANGUAGE_IDS

    assert tuple(SUPPORTED_LANGUAGE_IDS) == tuple(SUPPORTED_LANGUAGES)
    assert len(SUPPORTED_LANGUAGE_IDS) == 23
