"""Which jobs the decode engine runs: admission, the waiting and running lists, memory recovery.

Contract (everything here runs under the engine's lock, and nothing here needs torch):

* ``add(request)`` queues a WAITING request (first in, first out); ``abort(request, error)``
  asks for its cancellation, which the next ``schedule()`` carries out; ``error``, when
  given, is what the request's caller is handed instead of its end of stream.
* ``schedule()`` is called once per engine step. It ends the cancelled requests, waiting
  and running, and lists them in ``SchedulerOutput.cancelled`` so that the engine closes
  their streams (a running one's rows are freed in the same step); it moves the rows of the running requests down over the
  gaps of the finished ones (``row_moves``, which the runner must apply to the KV cache
  before anything else), and admits waiting requests in order while both bounds allow:
  at most ``max_jobs`` running requests and at most ``max_rows`` KV-cache rows. An
  admitted request is RUNNING with its ``row0`` set; the runner prefills it.
* A request finished during the step (``finish``) keeps its rows until
  ``release_finished()``, which returns the row moves that close the gaps.
* ``recover_from_out_of_memory()`` empties the running list after a step ran out of
  memory: ``max_jobs`` is halved (from the jobs that were running, at least one), each
  request that has retries left goes back to the front of the queue, the others are
  FINISHED_FAILED and returned so that the engine hands them the error.
  ``fail_running()`` does the same for any other error, with no retry.

The scheduler never sees a tensor: it hands the engine plain dataclasses.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from chatterbox_worker.engine.requests import EngineRequest, RequestStatus
from chatterbox_worker.engine.stats import EngineCounters

# A job is retried once after running out of memory; a second failure is its error.
MAX_OOM_RETRIES = 1


@dataclass(frozen=True)
class RowMove:
    """Copy the first ``length`` cached positions of rows ``src`` onto rows ``dst`` (same count)."""

    src: slice
    dst: slice
    length: int


@dataclass
class SchedulerOutput:
    """What one step runs: the requests admitted now, the cancelled waiting ones, the row moves."""

    admitted: list[EngineRequest] = field(default_factory=list)
    cancelled: list[EngineRequest] = field(default_factory=list)
    row_moves: list[RowMove] = field(default_factory=list)


class Scheduler:
    """First come, first served under a job bound and a KV-cache row bound."""

    def __init__(self, max_jobs: int, max_rows: int, counters: EngineCounters | None = None):
        self.max_jobs = max_jobs
        self.max_rows = max_rows
        self.counters = counters or EngineCounters()
        self.waiting: deque[EngineRequest] = deque()
        self.running: list[EngineRequest] = []

    # -- the caller's side ------------------------------------------------------------------

    def add(self, request: EngineRequest) -> None:
        request.status = RequestStatus.WAITING
        self.waiting.append(request)
        self.counters.jobs += 1

    def abort(self, request: EngineRequest, error: BaseException | None = None) -> None:
        if request.status.is_finished or request.cancel_requested:
            return
        request.cancel_requested = True
        request.cancel_error = error

    @property
    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    @property
    def rows_in_use(self) -> int:
        return sum(r.num_rows for r in self.running)

    # -- the loop's side --------------------------------------------------------------------

    def schedule(self) -> SchedulerOutput:
        out = SchedulerOutput(cancelled=self._cancel_waiting())
        for request in self.running:
            if request.cancel_requested and not request.status.is_finished:
                request.status = RequestStatus.FINISHED_CANCELLED
                out.cancelled.append(request)
        self.counters.cancelled += len(out.cancelled)
        out.row_moves = self.release_finished()
        out.admitted = self._admit()
        return out

    def finish(self, request: EngineRequest, status: RequestStatus) -> None:
        """End a running request; its rows are freed at the next ``release_finished``."""
        if not status.is_finished:
            raise ValueError(f"{status} is not a finished status")
        request.status = status

    def release_finished(self) -> list[RowMove]:
        """Drop finished requests and move the later ones' rows down over the gap."""
        if not any(r.status.is_finished for r in self.running):
            return []
        kept, moves, row = [], [], 0
        for request in self.running:
            if request.status.is_finished:
                continue
            if request.row0 != row:
                moves.append(RowMove(src=slice(request.row0, request.row0 + request.num_rows),
                                     dst=slice(row, row + request.num_rows), length=request.num_cached))
                request.row0 = row
            kept.append(request)
            row += request.num_rows
        self.running = kept
        return moves

    def return_to_waiting(self, requests: list[EngineRequest]) -> None:
        """Put admitted requests that never ran back at the front of the queue, in order."""
        for request in requests:
            self.running.remove(request)
            request.status = RequestStatus.WAITING
        self.waiting.extendleft(reversed(requests))

    def recover_from_out_of_memory(self) -> list[EngineRequest]:
        """Halve the job bound and requeue the running requests once; returns those that failed."""
        requests, self.running = self.running, []
        self.max_jobs = max(1, min(self.max_jobs, len(requests)) // 2)
        self.counters.oom_retries += 1
        retry = [r for r in requests
                 if r.retries < MAX_OOM_RETRIES and not r.cancel_requested and not r.status.is_finished]
        for request in retry:
            request.retries += 1
            request.status = RequestStatus.WAITING
        self.waiting.extendleft(reversed(retry))
        failed = [r for r in requests if r not in retry]
        for request in failed:
            request.status = RequestStatus.FINISHED_FAILED
            self.counters.oom_failures += 1
        return failed

    def fail_running(self) -> list[EngineRequest]:
        """End every running request after an error that is not out of memory."""
        requests, self.running = self.running, []
        for request in requests:
            request.status = RequestStatus.FINISHED_FAILED
        return requests

    def _cancel_waiting(self) -> list[EngineRequest]:
        cancelled = [r for r in self.waiting if r.cancel_requested]
        if cancelled:
            self.waiting = deque(r for r in self.waiting if not r.cancel_requested)
            for request in cancelled:
                request.status = RequestStatus.FINISHED_CANCELLED
        return cancelled

    def _admit(self) -> list[EngineRequest]:
        admitted, used = [], self.rows_in_use
        while self.waiting and len(self.running) < self.max_jobs:
            request = self.waiting[0]
            if used + request.num_rows > self.max_rows:
                break
            self.waiting.popleft()
            request.status = RequestStatus.RUNNING
            request.row0 = used
            self.running.append(request)
            admitted.append(request)
            used += request.num_rows
        return admitted
