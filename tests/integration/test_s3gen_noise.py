"""S3Gen's noise comes from each decode's own generators, never torch's global RNG.

The reference is the library's own S3Gen methods seeded the library's way
(``torch.manual_seed``): a seeded decode must give exactly that audio, whatever else draws
from the global RNG meanwhile, and must leave the global RNG as it found it.
"""
from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from tests.real_model import SHORT_VOICE_SECONDS

pytestmark = pytest.mark.integration

WINDOW_TOKENS = 8
PROMPT_SECONDS = SHORT_VOICE_SECONDS  # S3Gen's cost grows with the prompt


@pytest.fixture(scope="module")
def voice(model):
    from chatterbox_worker.testing.demo_library import REPO_ROOT as REPO
    from optimized_voice_library import OptimizedVoiceLibrary

    audio = OptimizedVoiceLibrary(REPO).get_voice_audio_by_name("Amy")
    samples = audio.samples[: int(PROMPT_SECONDS * audio.sample_rate)].copy()
    return model.prepare_conditionals_from_array(samples, audio.sample_rate).gen


def tokens(seed: int = 0, count: int = WINDOW_TOKENS) -> torch.Tensor:
    return torch.randint(0, 6561, (count,), generator=torch.Generator().manual_seed(seed))


def library_audio(model, speech_tokens, gen, seed: int) -> np.ndarray:
    """The library's S3Gen methods (those s3gen_noise replaced), seeded with the global RNG."""
    from tests.real_model import library_s3gen_methods, seed_everything

    with library_s3gen_methods(model.s3gen), torch.inference_mode():
        seed_everything(seed)
        wav, _ = model.s3gen.inference(speech_tokens=speech_tokens, ref_dict=dict(gen))
    return wav.squeeze(0).numpy()


def test_a_seeded_decode_is_the_library_s_audio_for_that_seed(model, voice):
    expected = library_audio(model, tokens(), voice, seed=5)
    assert np.array_equal(model.run_s3gen(tokens(), voice, seed=5), expected)


def test_a_seeded_decode_neither_reads_nor_moves_the_global_rng(model, voice):
    torch.manual_seed(123)
    state = torch.get_rng_state()
    first = model.run_s3gen(tokens(), voice, seed=9)
    assert torch.equal(torch.get_rng_state(), state)
    torch.rand(1000)  # the global RNG moves on; the decode must not notice
    assert np.array_equal(model.run_s3gen(tokens(), voice, seed=9), first)


def test_unseeded_decodes_differ_and_leave_the_global_rng_alone(model, voice):
    torch.manual_seed(7)
    state = torch.get_rng_state()
    a = model.run_s3gen(tokens(), voice)
    b = model.run_s3gen(tokens(), voice)
    assert torch.equal(torch.get_rng_state(), state)
    assert not np.array_equal(a, b)


def test_a_seeded_decode_beside_global_rng_traffic_and_another_decode(model, voice):
    """A second thread reseeds and draws from the global RNG throughout, and an unseeded
    decode of other tokens runs beside it: the seeded audio is unchanged."""
    solo = model.run_s3gen(tokens(1), voice, seed=21)
    stop = threading.Event()

    def churn():
        while not stop.is_set():
            torch.manual_seed(0)
            torch.randn(4096)

    results: dict[str, np.ndarray] = {}
    threads = [threading.Thread(target=churn),
               threading.Thread(target=lambda: results.setdefault("other", model.run_s3gen(tokens(2), voice))),
               threading.Thread(target=lambda: results.setdefault("seeded", model.run_s3gen(tokens(1), voice,
                                                                                          seed=21)))]
    for t in threads:
        t.start()
    for t in threads[1:]:
        t.join()
    stop.set()
    threads[0].join()
    assert np.array_equal(results["seeded"], solo)


# Rows of one S3Gen call against the same windows decoded alone: measured at most 1.2e-7 on
# audio peaking near 0.07 (batched float arithmetic rounds differently); a 16-bit step is 3.1e-5.
SHARED_CALL_TOLERANCE = 1e-6


def test_windows_sharing_a_call_are_their_solo_decodes(model, voice):
    from chatterbox_worker.s3gen.lane import Window
    from chatterbox_worker.testing.demo_library import REPO_ROOT as REPO
    from optimized_voice_library import OptimizedVoiceLibrary

    other = OptimizedVoiceLibrary(REPO).get_voice_audio_by_name("Bella")
    other_voice = model.prepare_conditionals_from_array(
        other.samples[: int(PROMPT_SECONDS * other.sample_rate)].copy(), other.sample_rate).gen
    windows = [Window(tokens=tokens(i), gen=g, seed=30 + i, exact=False)
               for i, g in enumerate((voice, voice, other_voice))]
    shared = model._decode_windows(windows)
    for w, audio in zip(windows, shared):
        alone = model._decode_windows([w])[0]
        assert audio.shape == alone.shape
        assert np.abs(audio - alone).max() <= SHARED_CALL_TOLERANCE
    assert np.abs(shared[0] - shared[1]).max() > 1e-3  # each row drew its own noise


def ragged_windows(model, voice, lengths=(5, 8, 11)) -> list:
    """Unseeded windows of unequal lengths, the last with another voice's shorter prompt."""
    from chatterbox_worker.s3gen.lane import Window
    from chatterbox_worker.testing.demo_library import REPO_ROOT as REPO
    from optimized_voice_library import OptimizedVoiceLibrary

    other = OptimizedVoiceLibrary(REPO).get_voice_audio_by_name("Bella")
    shorter_voice = model.prepare_conditionals_from_array(
        other.samples[: int(0.7 * PROMPT_SECONDS * other.sample_rate)].copy(), other.sample_rate).gen
    gens = [voice] * (len(lengths) - 1) + [shorter_voice]
    return [Window(tokens=tokens(i, n), gen=g, seed=50 + i, exact=False)
            for i, (n, g) in enumerate(zip(lengths, gens))]


def test_unequal_windows_share_the_flow_decoder_and_stay_their_solo_decodes(model, voice, monkeypatch):
    """The ragged call (s3gen.ragged): one flow-decoder batch over padded rows, each window's
    own encoder and vocoder; each window's audio is its solo decode to float rounding."""
    from chatterbox_worker.s3gen import ragged

    batches = []
    solve_together = ragged.solve_together
    monkeypatch.setattr(ragged, "solve_together", lambda decoder, solves: batches.append(len(solves))
                        or solve_together(decoder, solves))
    windows = ragged_windows(model, voice)
    shared = model._decode_windows(windows)
    assert batches == [len(windows)]
    for w, audio in zip(windows, shared):
        alone = model._decode_windows([w])[0]
        assert audio.shape == alone.shape
        assert np.abs(audio - alone).max() <= SHARED_CALL_TOLERANCE


def test_a_ragged_lane_shares_unequal_waiting_windows(model, voice, monkeypatch):
    from chatterbox_worker.s3gen.lane import S3GenLane

    lane = S3GenLane(model._decode_windows, max_batch=8, ragged=True)
    monkeypatch.setattr(model, "s3gen_lane", lane)
    windows = ragged_windows(model, voice)
    out = {}
    threads = [threading.Thread(target=lambda w=w: out.setdefault(id(w), model.s3gen_lane.decode(w)))
               for w in windows]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert lane.stats()["windows"] == len(windows) and lane.stats()["shared_calls"] >= 1
    # Each got audio of its own length (the equivalence itself is the test above).
    lengths = {len(out[id(w)]) for w in windows}
    assert len(lengths) == len(windows)


def test_unseeded_windows_waiting_together_share_a_call(model, voice):
    before = model.s3gen_lane.stats()
    threads = [threading.Thread(target=model.run_s3gen, args=(tokens(i), voice)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    after = model.s3gen_lane.stats()
    assert after["windows"] - before["windows"] == 3
    assert after["shared_calls"] > before["shared_calls"]
