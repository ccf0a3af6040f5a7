"""Fault isolation and cancellation in the T3 decode engine, with a tiny real T3 (seconds).

Each test puts one faulty job beside healthy ones in the same batch: the faulty job fails
alone with a clear error, the engine goes on, and every healthy seeded job draws exactly
the tokens of its solo run. A cancel scope stops its job at the next step.
"""
from __future__ import annotations

import threading
import time

import pytest
import torch

from chatterbox_worker.contract.errors import ServerError
from chatterbox_worker.engine import SamplingParams, T3Engine
from chatterbox_worker.engine.cancellation import CancelScope, JobCancelled, client_gone, scope_context
from chatterbox_worker.testing.tiny_t3 import tiny_engine_with_jobs, tiny_sampling, tiny_text_tokens
from tests.real_model import run_in_threads

pytestmark = pytest.mark.integration

TOKENS = 12
MARKED_TEMPERATURE = 0.77  # the faulty job's sampling settings mark its row for the injected fault
LONG_JOB_TOKENS = 400
CANCELLED_SEED = 4242  # marks the job a test cancels from inside a step
CANCEL_AT_STEP = 5
LEAVE_DEADLINE_S = 10


def params(seed: int, temperature: float = 0.8, n: int = TOKENS) -> SamplingParams:
    return tiny_sampling(seed, n, temperature)


@pytest.fixture(scope="module")
def tiny():
    engine, healthy = tiny_engine_with_jobs(3, TOKENS)
    solo = [list(engine.submit(*job)) for job in healthy]
    yield engine.t3, engine, healthy[0][0], healthy, solo
    engine.stop()


def run_all(engine: T3Engine, jobs: list[tuple], forced: dict[int, list[int]] | None = None) -> list:
    """Submit every job at once from its own thread (so they share steps); tokens or the error, per job."""
    results: list = [None] * len(jobs)
    barrier = threading.Barrier(len(jobs))

    def run(i: int) -> None:
        barrier.wait()
        try:
            results[i] = list(engine.submit(*jobs[i], forced_tokens=(forced or {}).get(i)))
        except Exception as exc:  # the faulty job's error, for the test to inspect
            results[i] = exc

    run_in_threads(len(jobs), run)
    return results


def assert_isolated(engine: T3Engine, results: list, solo: list, faulty: int) -> None:
    healthy = [r for i, r in enumerate(results) if i != faulty]
    assert isinstance(results[faulty], ServerError), results[faulty]
    assert "other jobs were not affected" in str(results[faulty])
    assert healthy == solo  # the neighbours drew exactly their solo tokens
    assert engine.stats().active_jobs == 0


def test_an_exception_in_one_job_s_processing_fails_it_alone(tiny, monkeypatch):
    t3, engine, cond, healthy, solo = tiny
    process = engine.recipe.process

    def failing_for_the_marked_row(logits, batch):
        if bool((batch.temperature == MARKED_TEMPERATURE).any()):  # the batch, then its row alone
            raise RuntimeError("injected processor failure")
        return process(logits, batch)

    monkeypatch.setattr(engine.recipe, "process", failing_for_the_marked_row)
    faulty = (cond, tiny_text_tokens(t3, seed=9), params(seed=9, temperature=MARKED_TEMPERATURE))
    results = run_all(engine, [healthy[0], faulty, healthy[1], healthy[2]])
    assert_isolated(engine, results, solo, faulty=1)
    assert "injected processor failure" in str(results[1])


def test_nan_in_one_row_s_logits_fails_that_job_alone(tiny, monkeypatch):
    t3, engine, cond, healthy, solo = tiny
    decode = engine.runner.decode

    def nan_for_the_marked_job(requests):
        decode(requests)
        for request in requests:
            if request.params.temperature == MARKED_TEMPERATURE:
                request.state.logits = torch.full_like(request.state.logits, float("nan"))

    monkeypatch.setattr(engine.runner, "decode", nan_for_the_marked_job)
    faulty = (cond, tiny_text_tokens(t3, seed=9), params(seed=9, temperature=MARKED_TEMPERATURE))
    results = run_all(engine, [healthy[0], healthy[1], faulty, healthy[2]])
    assert_isolated(engine, results, solo, faulty=2)
    assert "NaN" in str(results[2])


def test_a_token_that_breaks_the_whole_step_is_replayed_without_its_job(tiny):
    """A teacher-forced token outside the vocabulary breaks the batched embedding lookup."""
    t3, engine, cond, healthy, solo = tiny
    faulty = (cond, tiny_text_tokens(t3, seed=9), params(seed=9))
    bad = [1, 2, t3.hp.speech_tokens_dict_size + 5, 3]
    faults_before = engine.stats().faults
    results = run_all(engine, [healthy[0], healthy[1], healthy[2], faulty], forced={3: bad})
    assert_isolated(engine, results, solo, faulty=3)
    assert engine.stats().faults == faults_before + 1


def test_a_too_short_text_beside_healthy_jobs(tiny):
    """Only the start and stop text tokens: the job runs or fails alone; the others are unchanged."""
    t3, engine, cond, healthy, solo = tiny
    empty_text = torch.tensor([[t3.hp.start_text_token, t3.hp.stop_text_token]])
    results = run_all(engine, [healthy[0], (cond, empty_text, params(seed=5)), healthy[1], healthy[2]])
    assert [r for i, r in enumerate(results) if i != 1] == solo
    assert isinstance(results[1], (list, ServerError))
    assert engine.stats().active_jobs == 0


def test_a_cancelled_scope_stops_its_job_at_the_next_step(tiny):
    t3, engine, cond, healthy, solo = tiny
    scope = CancelScope()
    with scope_context(scope):
        stream = engine.submit(cond, tiny_text_tokens(t3, seed=3), params(seed=3, n=LONG_JOB_TOKENS), flush_every=1)
    tokens = iter(stream)
    first = next(tokens)
    cancelled_before = engine.stats().cancelled
    scope.cancel(client_gone())
    with pytest.raises(JobCancelled, match="client closed"):
        list(tokens)
    deadline = time.monotonic() + LEAVE_DEADLINE_S
    while engine.stats().active_jobs and time.monotonic() < deadline:
        time.sleep(0.01)
    assert isinstance(first, int) and engine.stats().active_jobs == 0
    assert engine.stats().cancelled == cancelled_before + 1
    assert run_all(engine, healthy) == solo  # the engine goes on serving


@pytest.mark.parametrize("during", ["sampling", "decoding"])
def test_a_cancelled_job_draws_at_most_one_more_token(tiny, monkeypatch, during):
    """The bound is counted in draws, not seconds: a scope cancelled (on the engine's thread, so
    the moment is exact) while the step samples, or while it decodes, lets the job draw at most
    the token of the step in progress; it leaves the batch at the next step."""
    t3, engine, cond, _, _ = tiny
    scope = CancelScope()
    part, name = (engine.sampler, "sample") if during == "sampling" else (engine.runner, "decode")
    run_part = getattr(part, name)
    drawn_at_cancel: dict = {}

    def cancelling_at_step(requests):
        for request in requests:
            if request.seed == CANCELLED_SEED and request.steps >= CANCEL_AT_STEP and not drawn_at_cancel:
                drawn_at_cancel[request] = request.steps
                scope.cancel(client_gone())
        return run_part(requests)

    monkeypatch.setattr(part, name, cancelling_at_step)
    with scope_context(scope):
        stream = engine.submit(cond, tiny_text_tokens(t3, seed=3), params(seed=CANCELLED_SEED, n=LONG_JOB_TOKENS))
    delivered = []
    with pytest.raises(JobCancelled, match="client closed"):
        delivered.extend(stream)
    [(request, at_cancel)] = drawn_at_cancel.items()
    assert at_cancel == CANCEL_AT_STEP and request.steps - at_cancel <= 1
    assert len(delivered) <= request.steps and engine.stats().active_jobs == 0


def test_a_scope_cancelled_before_submit_refuses_the_job(tiny):
    t3, engine, cond, _, _ = tiny
    scope = CancelScope()
    scope.cancel(client_gone())
    with scope_context(scope), pytest.raises(JobCancelled):
        engine.submit(cond, tiny_text_tokens(t3), params(seed=1))
    assert engine.stats().pending_jobs == 0


def test_real_model_a_nan_job_fails_alone_and_its_neighbours_audio_equals_their_solo_runs(model, monkeypatch):
    """The real standard model, through ``synthesize``: T3 and S3Gen for the healthy jobs."""
    import numpy as np

    from chatterbox_worker.testing.demo_library import REPO_ROOT
    from optimized_voice_library import OptimizedVoiceLibrary

    v = OptimizedVoiceLibrary(REPO_ROOT).get_voice_audio_by_name("Bella")
    conds = model.prepare_conditionals_from_array(v.samples[: int(3.0 * v.sample_rate)].copy(), v.sample_rate)
    calls = [("One two.", 1), ("Three four.", 2)]
    solo = [model.synthesize(t, conditionals=conds, options=model.options(seed=s, max_new_tokens=4, watermark=False))
            for t, s in calls]
    engine = model.engine
    decode = engine.runner.decode

    def nan_for_seed_99(requests):
        decode(requests)
        for request in requests:
            if request.seed == 99:
                request.state.logits = torch.full_like(request.state.logits, float("nan"))

    monkeypatch.setattr(engine.runner, "decode", nan_for_seed_99)
    results: list = [None] * 3
    jobs = [*calls[:1], ("Faulty.", 99), *calls[1:]]

    def run(i: int) -> None:
        text, seed = jobs[i]
        try:
            results[i] = model.synthesize(text, conditionals=conds,
                                          options=model.options(seed=seed, max_new_tokens=4, watermark=False))
        except Exception as exc:  # the faulty job's error
            results[i] = exc

    run_in_threads(3, run)
    assert isinstance(results[1], ServerError) and "NaN" in str(results[1])
    assert np.array_equal(results[0], solo[0]) and np.array_equal(results[2], solo[1])
    assert engine.stats().active_jobs == 0
