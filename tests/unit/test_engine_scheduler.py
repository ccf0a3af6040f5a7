"""The decode engine's scheduler without torch or a model: admission, order, cancel, out of memory."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from chatterbox_worker.engine.requests import END_OF_STREAM, EngineRequest, RequestStatus, TokenOutbox
from chatterbox_worker.engine.scheduler import MAX_OOM_RETRIES, RowMove, Scheduler

REPO = Path(__file__).resolve().parents[2]


def request(rows: int = 2, cached: int = 0) -> EngineRequest:
    r = EngineRequest(prompt_embeds=None, params=None, seed=0, num_rows=rows)
    r.num_cached = cached
    return r


def test_the_scheduler_needs_no_torch():
    code = ("import sys; from chatterbox_worker.engine import scheduler, requests, stats, config;"
            "assert 'torch' not in sys.modules, 'torch imported'; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_admission_stops_at_the_job_bound():
    s = Scheduler(max_jobs=2, max_rows=100)
    reqs = [request() for _ in range(3)]
    for r in reqs:
        s.add(r)
    out = s.schedule()
    assert out.admitted == reqs[:2] and list(s.waiting) == reqs[2:]
    assert [r.status for r in reqs] == [RequestStatus.RUNNING] * 2 + [RequestStatus.WAITING]
    assert s.schedule().admitted == []  # still full


def test_admission_stops_at_the_row_bound_and_keeps_order():
    s = Scheduler(max_jobs=8, max_rows=5)
    a, b, c, d = request(2), request(2), request(2), request(1)
    for r in (a, b, c, d):
        s.add(r)
    out = s.schedule()
    # c does not fit (2 + 2 + 2 > 5); d would, but comes after c: first come, first served.
    assert out.admitted == [a, b] and list(s.waiting) == [c, d]
    assert (a.row0, b.row0) == (0, 2) and s.rows_in_use == 4


def test_admission_is_first_in_first_out():
    s = Scheduler(max_jobs=1, max_rows=2)
    reqs = [request() for _ in range(4)]
    for r in reqs:
        s.add(r)
    order = []
    for _ in reqs:
        admitted = s.schedule().admitted
        order += admitted
        s.finish(admitted[0], RequestStatus.FINISHED_LENGTH)
    assert order == reqs and s.counters.jobs == 4


def test_finished_rows_are_released_and_later_rows_move_down():
    s = Scheduler(max_jobs=4, max_rows=8)
    a, b, c = request(2, cached=10), request(1, cached=7), request(2, cached=5)
    for r in (a, b, c):
        s.add(r)
    s.schedule()
    assert (a.row0, b.row0, c.row0) == (0, 2, 3)
    s.finish(a, RequestStatus.FINISHED_STOPPED)
    assert a in s.running  # its rows stay until the release
    moves = s.release_finished()
    assert s.running == [b, c] and (b.row0, c.row0) == (0, 1)
    assert moves == [RowMove(src=slice(2, 3), dst=slice(0, 1), length=7),
                     RowMove(src=slice(3, 5), dst=slice(1, 3), length=5)]
    assert s.release_finished() == []


def test_finish_needs_a_finished_status():
    s = Scheduler(max_jobs=1, max_rows=2)
    s.add(r := request())
    s.schedule()
    with pytest.raises(ValueError):
        s.finish(r, RequestStatus.RUNNING)


def test_a_cancelled_waiting_request_is_listed_for_its_stream_to_end():
    s = Scheduler(max_jobs=1, max_rows=2)
    a, b = request(), request()
    s.add(a)
    s.add(b)
    s.abort(b)
    assert b.status is RequestStatus.WAITING  # the caller only asks; the loop ends it
    out = s.schedule()
    assert out.cancelled == [b] and out.admitted == [a]
    assert b.status is RequestStatus.FINISHED_CANCELLED and not s.waiting


def test_a_cancelled_running_request_leaves_at_the_next_schedule():
    s = Scheduler(max_jobs=2, max_rows=4)
    a, b, c = request(2, cached=3), request(2, cached=4), request(2)
    for r in (a, b, c):
        s.add(r)
    s.schedule()
    s.abort(a)
    out = s.schedule()
    assert a.status is RequestStatus.FINISHED_CANCELLED and out.cancelled == [a]  # listed, so that the engine wakes its caller
    assert out.row_moves == [RowMove(src=slice(2, 4), dst=slice(0, 2), length=4)]
    assert out.admitted == [c] and c.row0 == 2 and s.running == [b, c]


def test_out_of_memory_halves_the_bound_and_requeues_in_front():
    s = Scheduler(max_jobs=8, max_rows=100)
    running = [request() for _ in range(4)]
    queued = request()
    for r in running:
        s.add(r)
    s.schedule()
    s.add(queued)
    failed = s.recover_from_out_of_memory()
    assert failed == [] and s.running == [] and s.max_jobs == 2  # from the 4 that ran
    assert list(s.waiting) == [*running, queued]
    assert all(r.retries == 1 and r.status is RequestStatus.WAITING for r in running)
    assert s.counters.oom_retries == 1 and s.counters.oom_failures == 0
    assert s.schedule().admitted == running[:2]


def test_a_second_out_of_memory_fails_the_request():
    s = Scheduler(max_jobs=2, max_rows=100)
    s.add(r := request())
    for _ in range(MAX_OOM_RETRIES + 1):
        assert s.schedule().admitted == [r]
        failed = s.recover_from_out_of_memory()
    assert failed == [r] and r.status is RequestStatus.FINISHED_FAILED
    assert s.max_jobs == 1 and s.counters.oom_failures == 1 and not s.has_work


def test_a_cancelled_request_is_not_retried_after_out_of_memory():
    s = Scheduler(max_jobs=2, max_rows=100)
    a, b = request(), request()
    s.add(a)
    s.add(b)
    s.schedule()
    s.abort(b)
    assert s.recover_from_out_of_memory() == [b] and list(s.waiting) == [a]


def test_unstarted_admissions_go_back_in_order():
    s = Scheduler(max_jobs=4, max_rows=100)
    a, b, c, d = (request() for _ in range(4))
    for r in (a, b, c):
        s.add(r)
    s.schedule()
    s.add(d)
    s.return_to_waiting([b, c])
    assert s.running == [a] and list(s.waiting) == [b, c, d] and b.retries == 0


def test_another_error_fails_every_running_request():
    s = Scheduler(max_jobs=2, max_rows=100)
    a, b = request(), request()
    s.add(a)
    s.add(b)
    s.schedule()
    assert s.fail_running() == [a, b] and s.running == []
    assert a.status is b.status is RequestStatus.FINISHED_FAILED and s.max_jobs == 2


def test_status_transitions():
    s = Scheduler(max_jobs=1, max_rows=2)
    r = request()
    s.add(r)
    seen = [r.status]
    s.schedule()
    seen.append(r.status)
    s.recover_from_out_of_memory()
    seen.append(r.status)
    s.schedule()
    s.finish(r, RequestStatus.FINISHED_STOPPED)
    seen.append(r.status)
    assert seen == [RequestStatus.WAITING, RequestStatus.RUNNING, RequestStatus.WAITING,
                    RequestStatus.FINISHED_STOPPED]
    finished = {st for st in RequestStatus if st.is_finished}
    assert finished == {RequestStatus.FINISHED_STOPPED, RequestStatus.FINISHED_LENGTH,
                        RequestStatus.FINISHED_CANCELLED, RequestStatus.FINISHED_FAILED}


def test_the_outbox_skips_tokens_a_replay_redraws():
    box = TokenOutbox(flush_every=2)
    assert [box.push(t, step) for step, t in enumerate((5, 6, 7), start=1)] == [True, True, True]
    assert [box.push(t, step) for step, t in enumerate((5, 6, 7, 8), start=1)] == [False, False, False, True]
    box.end()
    items = []
    while not box.queue.empty():
        items.append(box.queue.get())
    assert items == [[5, 6], [7, 8], END_OF_STREAM]
