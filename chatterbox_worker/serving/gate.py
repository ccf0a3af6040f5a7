"""The one gate every job of a worker passes: admission, its cancel scope, its time limit, shutdown.

One :class:`JobGate` per process, on the event loop that serves the jobs (the HTTP app's,
or the RunPod SDK's). :meth:`JobGate.enter` waits for a slot of the
:class:`~chatterbox_worker.serving.admission.AdmissionController` (raising its refusals:
429 beyond the wait, 503 while shutting down) and hands back a :class:`JobTicket`:

* ``ticket.scope`` is the job's :class:`~chatterbox_worker.engine.cancellation.CancelScope`;
  the job's thread runs inside it, so cancelling it frees the job's engine rows at the next
  decode step. The gate cancels it itself after ``REQUEST_TIMEOUT_S``, and on shutdown
  after ``SHUTDOWN_GRACE_S``.
* ``ticket.close()`` (idempotent) gives the slot back; ``async with gate.job() as ticket``
  does both.

:meth:`JobGate.shutdown` stops admitting, lets the jobs in flight finish within the grace
period, then cancels the rest with a clear error and waits briefly for them to answer.
The gate counts cancels by reason; :meth:`JobGate.stats` adds them to admission's counts.
"""
from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

from chatterbox_worker.engine.cancellation import CancelScope, JobCancelled, shutting_down, timed_out
from chatterbox_worker.serving.admission import AdmissionController
from chatterbox_worker.settings import get_settings

logger = logging.getLogger("chatterbox_worker")

# After the grace period, cancelled jobs leave at their next decode step or S3Gen window;
# this bounds how long shutdown waits for them to answer their clients.
CANCEL_SETTLE_S = 10.0


class JobTicket:
    """A job holding a slot: its cancel scope, and the slot given back by :meth:`close`."""

    def __init__(self, gate: JobGate, scope: CancelScope, release: Callable[[], Any]):
        self.scope = scope
        self._gate = gate
        self._release = release
        self._timer: asyncio.TimerHandle | None = None
        self._closed = False

    def arm_timeout(self, limit_s: float) -> None:
        self._timer = asyncio.get_running_loop().call_later(limit_s, self._gate.cancel, self.scope, timed_out(limit_s))

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
        self._gate._tickets.discard(self)
        self._release()


class JobGate:
    """Admission, cancel scopes, time limits and shutdown for one worker (see the module)."""

    def __init__(self, admission: AdmissionController, request_timeout_s: float, shutdown_grace_s: float):
        self.admission = admission
        self.request_timeout_s = request_timeout_s
        self.shutdown_grace_s = shutdown_grace_s
        self._tickets: set[JobTicket] = set()
        self.cancelled: collections.Counter[str] = collections.Counter()

    async def enter(self) -> JobTicket:
        """Wait for a slot (or raise admission's refusal) and start the job's clock."""
        release = await self.admission.acquire()
        ticket = JobTicket(self, CancelScope(), release)
        ticket.arm_timeout(self.request_timeout_s)
        self._tickets.add(ticket)
        return ticket

    @contextlib.asynccontextmanager
    async def job(self) -> AsyncIterator[JobTicket]:
        ticket = await self.enter()
        try:
            yield ticket
        finally:
            ticket.close()

    def cancel(self, scope: CancelScope, error: JobCancelled) -> bool:
        """Cancel one job, counting why; False when it was already cancelled."""
        if not scope.cancel(error):
            return False
        self.cancelled[error.reason] += 1
        logger.info("job cancelled (%s): %s", error.reason, error.failure.message)
        return True

    @property
    def in_flight(self) -> int:
        return len(self._tickets)

    async def shutdown(self) -> int:
        """Stop admitting, let jobs finish within the grace period, cancel the rest; returns how many were."""
        self.admission.close()
        logger.info("shutting down: %d job(s) in flight, up to %g s to finish", self.in_flight, self.shutdown_grace_s)
        if await self.admission.drained(self.shutdown_grace_s):
            return 0
        leftover = list(self._tickets)
        error = shutting_down(self.shutdown_grace_s)
        for ticket in leftover:
            self.cancel(ticket.scope, error)
        if not await self.admission.drained(CANCEL_SETTLE_S):
            logger.warning("%d job(s) had not answered %g s after being cancelled", self.in_flight, CANCEL_SETTLE_S)
        return len(leftover)

    def stats(self) -> dict[str, Any]:
        """Admission's counts (in flight, waiting, admitted, shed, ...) and cancels by reason."""
        return {**dataclasses.asdict(self.admission.stats()), "cancelled": dict(self.cancelled)}

    def log_line(self) -> str:
        s = self.admission.stats()
        return (f"in flight {s.in_flight}/{s.max_in_flight}, waiting {s.waiting}/{s.max_waiting}, shed {s.shed}, "
                f"queue timeouts {s.timed_out}, cancelled {sum(self.cancelled.values())}")


def concurrent_jobs_for(worker: Any) -> int:
    """``MAX_CONCURRENT_JOBS``, or what the device of ``worker``'s models takes well."""
    models = getattr(worker, "models", None) or {}
    device = str(getattr(next(iter(models.values()), None), "device", "cpu"))
    return get_settings().concurrent_jobs(on_gpu=device.startswith("cuda"))


def build_gate(max_in_flight: int) -> JobGate:
    """A gate with ``max_in_flight`` slots and the settings' wait, timeouts and grace period."""
    s = get_settings()
    admission = AdmissionController(max_in_flight, s.max_queued_requests, s.queue_timeout_s)
    return JobGate(admission, s.request_timeout_s, s.shutdown_grace_s)
