"""Paced streams in the T3 decode engine, with a tiny real T3 (seconds).

A stream submitted with ``max_ahead`` draws no more than that many tokens beyond those its
caller took: the engine holds it (no step runs for it alone; in a step that runs for others
its rows ride along without advancing) and releases it when the caller takes tokens. Pacing
changes when tokens are drawn, never which: every job draws exactly its solo tokens.
"""
from __future__ import annotations

import threading
import time

import pytest

from chatterbox_worker.engine import T3Engine
from chatterbox_worker.testing.tiny_t3 import tiny_engine_with_jobs

pytestmark = pytest.mark.integration

TOKENS = 16
WINDOW = 4
# Generous: a wait for the engine's thread to reach a state, not a timing claim.
STATE_DEADLINE_S = 30


@pytest.fixture(scope="module")
def tiny():
    engine, jobs = tiny_engine_with_jobs(3, TOKENS)
    solo = [list(engine.submit(*job)) for job in jobs]
    yield engine, jobs, solo
    engine.stop()


def wait_until(condition) -> None:
    deadline = time.monotonic() + STATE_DEADLINE_S
    while not condition():
        assert time.monotonic() < deadline, "the engine never reached the state waited for"
        time.sleep(0.01)


def paced(engine: T3Engine, job: tuple):
    return engine.submit(*job, flush_every=WINDOW, max_ahead=WINDOW)


def test_a_paced_stream_draws_its_solo_tokens_never_more_than_max_ahead_beyond_its_caller(tiny):
    engine, jobs, solo = tiny
    stream = paced(engine, jobs[0])
    tokens, it = [], iter(stream)
    while len(tokens) < TOKENS:
        wait_until(lambda: not engine._can_step())  # the engine went as far as it may
        assert stream.waiting == min(WINDOW, TOKENS - len(tokens))
        tokens += [next(it) for _ in range(WINDOW)]  # the caller takes one window
    assert tokens == solo[0] and list(it) == []


def test_a_held_stream_takes_no_step_of_its_own_and_rides_along_beside_others_unchanged(tiny):
    engine, jobs, solo = tiny
    stream = paced(engine, jobs[0])
    wait_until(lambda: stream.waiting == WINDOW)
    wait_until(lambda: not engine._can_step())  # held, nothing else to do: the loop sleeps
    steps = engine.stats().steps
    other = list(engine.submit(*jobs[1]))  # steps run for this job; the held one rides along
    assert other == solo[1]
    assert engine.stats().steps - steps >= len(other) - 1
    assert stream.waiting == WINDOW and not stream.finished  # it drew nothing meanwhile
    assert list(stream) == solo[0]


def test_paced_and_unpaced_jobs_side_by_side_draw_their_solo_tokens(tiny):
    engine, jobs, solo = tiny
    results: list = [None] * len(jobs)

    def run(i: int) -> None:
        stream = paced(engine, jobs[i]) if i % 2 == 0 else engine.submit(*jobs[i])
        tokens = []
        for token in stream:  # a slow reader: the paced ones are held between its reads
            tokens.append(token)
            if len(tokens) % WINDOW == 0:
                time.sleep(0.01)
        results[i] = tokens

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == solo
    assert engine.stats().active_jobs == 0


def test_closing_a_held_stream_ends_its_job(tiny):
    engine, jobs, _ = tiny
    stream = paced(engine, jobs[2])
    wait_until(lambda: stream.waiting == WINDOW)
    stream.close()
    wait_until(lambda: engine.stats().active_jobs == 0)
