"""The job gate, torch-free: slots given back however a job ends (a client that leaves the line
as its slot arrives included), the time limit, shutdown's drain."""
from __future__ import annotations

import asyncio

import pytest

from chatterbox_worker.engine.cancellation import JobCancelled
from chatterbox_worker.serving.admission import AdmissionController, ShuttingDown
from chatterbox_worker.serving.gate import JobGate


def gate(slots: int = 1, waiting: int = 2, timeout_s: float = 30.0, grace_s: float = 5.0) -> JobGate:
    return JobGate(AdmissionController(slots, waiting, 30.0), timeout_s, grace_s)


def test_a_ticket_gives_its_slot_back_once():
    async def scenario():
        g = gate()
        ticket = await g.enter()
        ticket.close()
        ticket.close()
        return g.stats()

    stats = asyncio.run(scenario())
    assert stats["in_flight"] == 0 and stats["admitted"] == 1


def test_the_time_limit_cancels_the_job_s_scope():
    async def scenario():
        g = gate(timeout_s=0.05)
        async with g.job() as ticket:
            while not ticket.scope.cancelled:
                await asyncio.sleep(0.01)
            return ticket.scope.error, g.stats()

    error, stats = asyncio.run(scenario())
    assert isinstance(error, JobCancelled) and error.reason == "request_timeout"
    assert stats["cancelled"] == {"request_timeout": 1}


def test_shutdown_lets_a_job_finish_within_the_grace_period():
    async def scenario():
        g = gate(grace_s=5.0)
        ticket = await g.enter()
        asyncio.get_running_loop().call_later(0.05, ticket.close)
        return await g.shutdown(), ticket.scope.cancelled

    assert asyncio.run(scenario()) == (0, False)


def test_shutdown_cancels_what_outlives_the_grace_period_and_refuses_newcomers():
    async def scenario():
        g = gate(slots=1, grace_s=0.05)
        ticket = await g.enter()
        ticket.scope.on_cancel(lambda error: asyncio.get_running_loop().call_soon_threadsafe(ticket.close))
        waiter = asyncio.ensure_future(g.enter())
        await asyncio.sleep(0.01)
        cancelled = await g.shutdown()
        with pytest.raises(ShuttingDown):
            await waiter
        with pytest.raises(ShuttingDown):
            await g.enter()
        return cancelled, ticket.scope.error, g.stats()

    cancelled, error, stats = asyncio.run(scenario())
    assert cancelled == 1 and error.reason == "shutting_down" and "SHUTDOWN_GRACE_S" in error.failure.message
    assert stats["refused_shutting_down"] == 2 and stats["in_flight"] == 0


class LeavingClient:
    """A request whose client leaves at the moment the job holding the one slot ends, so that
    the slot is handed to this request's place in line as its client goes."""

    def __init__(self, holder):
        self.holder = holder
        self.in_line = asyncio.Event()

    async def receive(self) -> dict:
        await self.in_line.wait()
        self.holder.close()  # the slot goes to the first in line: this request
        return {"type": "http.disconnect"}


def test_a_slot_handed_over_as_its_waiting_client_leaves_is_not_lost():
    from chatterbox_worker.http.lifecycle import enter_watched

    async def scenario():
        g = gate(slots=1)
        client = LeavingClient(await g.enter())
        leaving = asyncio.ensure_future(enter_watched(client, g))
        while g.admission.stats().waiting == 0:
            await asyncio.sleep(0)
        client.in_line.set()
        with pytest.raises(JobCancelled, match="client closed"):
            await leaving
        for _ in range(10):  # let every callback of the handover run
            await asyncio.sleep(0)
        after = g.stats()
        if after["in_flight"] == 0:  # the slot is free: the next job takes it without waiting
            (await g.enter()).close()
        return after, g.stats()

    left, later = asyncio.run(scenario())
    assert left["in_flight"] == 0 and left["waiting"] == 0 and left["cancelled"] == {"left_while_waiting": 1}
    assert later["in_flight"] == 0  # the next job took the slot at once, and gave it back


class StayingClient:
    """A request whose client never leaves."""

    async def receive(self) -> dict:
        await asyncio.Event().wait()
        return {"type": "http.disconnect"}


def test_a_request_cancelled_while_it_waits_leaves_the_line():
    from chatterbox_worker.http.lifecycle import enter_watched

    async def scenario():
        g = gate(slots=1)
        holder = await g.enter()
        waiting = asyncio.ensure_future(enter_watched(StayingClient(), g))
        while g.admission.stats().waiting == 0:
            await asyncio.sleep(0)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        holder.close()
        for _ in range(10):  # let every callback of the cancel run
            await asyncio.sleep(0)
        return g.stats()

    stats = asyncio.run(scenario())
    assert stats["in_flight"] == 0 and stats["waiting"] == 0
