"""The torch-free side of cancellation and faults: cancel scopes, and the scheduler's aborts."""
from __future__ import annotations

import threading

import pytest

from chatterbox_worker.engine.cancellation import (
    CancelScope,
    JobCancelled,
    client_gone,
    current_scope,
    raise_if_cancelled,
    scope_context,
    timed_out,
)
from chatterbox_worker.engine.requests import EngineRequest, RequestStatus
from chatterbox_worker.engine.scheduler import Scheduler


def request(rows: int = 2) -> EngineRequest:
    return EngineRequest(prompt_embeds=None, params=None, seed=0, num_rows=rows)


def test_the_first_cancel_wins_and_every_callback_runs_once_with_its_error():
    scope, seen = CancelScope(), []
    scope.on_cancel(seen.append)
    first, second = client_gone(), timed_out(1.0)
    assert scope.cancel(first) is True and scope.cancel(second) is False
    scope.on_cancel(seen.append)  # registered late: runs at once, with the first error
    assert seen == [first, first] and scope.error is first
    with pytest.raises(JobCancelled, match="client closed"):
        scope.raise_if_cancelled()


def test_an_unregistered_callback_never_runs_and_a_failing_one_does_not_stop_the_others():
    scope, seen = CancelScope(), []
    unregister = scope.on_cancel(seen.append)
    unregister()

    def broken(error):
        raise RuntimeError("cannot stop")

    scope.on_cancel(broken)
    scope.on_cancel(lambda error: seen.append("ran"))
    scope.cancel(client_gone())
    assert seen == ["ran"]


def test_the_scope_is_per_thread_of_work_and_copied_by_context():
    scope = CancelScope()
    seen = {}
    with scope_context(scope):
        assert current_scope() is scope
        worker = threading.Thread(target=lambda: seen.setdefault("thread", current_scope()))
        worker.start()
        worker.join()
    assert current_scope() is None and seen["thread"] is None  # a plain thread does not inherit it
    raise_if_cancelled()  # outside a scope: nothing to raise


def test_errors_are_classified_without_blaming_the_worker():
    from chatterbox_worker.contract.errors import Fault, classify

    for error, status, code in ((client_gone(), 499, "client_gone"), (timed_out(2.0), 504, "request_timeout")):
        failure = classify(error)
        assert failure.fault is Fault.UNAVAILABLE and failure.status == status and failure.code == code
        assert failure.message.startswith("server: ") and not failure.refresh_worker


def test_an_abort_with_an_error_is_listed_for_the_engine_waiting_or_running():
    s = Scheduler(max_jobs=1, max_rows=8)
    running, waiting = request(), request()
    s.add(running)
    s.add(waiting)
    s.schedule()
    error = client_gone()
    s.abort(running, error)
    s.abort(waiting, error)
    out = s.schedule()
    assert set(map(id, out.cancelled)) == {id(running), id(waiting)}
    assert running.cancel_error is error and waiting.cancel_error is error
    assert running.status is waiting.status is RequestStatus.FINISHED_CANCELLED
    assert s.running == [] and not s.waiting and s.counters.cancelled == 2


def test_an_abort_after_the_end_changes_nothing():
    s = Scheduler(max_jobs=1, max_rows=8)
    r = request()
    s.add(r)
    s.schedule()
    s.finish(r, RequestStatus.FINISHED_LENGTH)
    s.abort(r, client_gone())
    assert not r.cancel_requested and r.cancel_error is None and r.status is RequestStatus.FINISHED_LENGTH


def test_a_cancelled_job_s_window_leaves_the_s3gen_lane_undecoded():
    from chatterbox_worker.s3gen.lane import S3GenLane, Window

    release, decoded = threading.Event(), []

    def decode(windows):
        decoded.extend(w.seed for w in windows)
        release.wait(10)
        return [w.seed for w in windows]

    lane = S3GenLane(decode, max_batch=4)
    busy = threading.Thread(target=lane.decode, args=(Window(tokens=[1], gen={}, seed=1, exact=True),))
    busy.start()
    while not decoded:
        pass  # the first window holds the lane
    scope, outcome = CancelScope(), {}

    def waiting():
        with scope_context(scope):
            try:
                lane.decode(Window(tokens=[1], gen={}, seed=2, exact=True))
            except JobCancelled as exc:
                outcome["error"] = exc

    waiter = threading.Thread(target=waiting)
    waiter.start()
    while not lane._waiting:
        pass  # the second window waits in line
    scope.cancel(client_gone())
    waiter.join(10)
    release.set()
    busy.join(10)
    assert outcome["error"].reason == "client_gone" and decoded == [1]
