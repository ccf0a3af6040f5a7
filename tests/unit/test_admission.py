"""The admission controller's contract: bounded slots, a bounded line, and clear refusals."""
from __future__ import annotations

import asyncio

import pytest

from chatterbox_worker.serving.admission import (
    DEFAULT_RETRY_AFTER_S,
    AdmissionController,
    Overloaded,
    ShuttingDown,
    WaitedTooLong,
)

LONG_WAIT_S = 60.0  # never reached: the tests end each wait themselves


def run(coro):
    return asyncio.run(coro)


async def hold(controller: AdmissionController, release: asyncio.Event, order: list[int], i: int) -> None:
    async with controller.admit():
        order.append(i)
        await release.wait()


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def test_jobs_within_the_slots_run_at_once_and_the_rest_wait_in_order():
    async def scenario():
        controller = AdmissionController(max_in_flight=2, max_waiting=3, queue_timeout_s=LONG_WAIT_S)
        release, order = asyncio.Event(), []
        tasks = [asyncio.create_task(hold(controller, release, order, i)) for i in range(5)]
        await settle()
        assert order == [0, 1]
        stats = controller.stats()
        assert (stats.in_flight, stats.waiting, stats.admitted) == (2, 3, 2)
        release.set()
        await asyncio.gather(*tasks)
        assert order == [0, 1, 2, 3, 4]
        assert controller.stats().in_flight == 0 and controller.stats().admitted == 5

    run(scenario())


def test_a_full_line_is_refused_at_once_with_a_retry_after():
    async def scenario():
        controller = AdmissionController(max_in_flight=1, max_waiting=1, queue_timeout_s=LONG_WAIT_S)
        release, order = asyncio.Event(), []
        tasks = [asyncio.create_task(hold(controller, release, order, i)) for i in range(2)]
        await settle()
        with pytest.raises(Overloaded) as info:
            async with controller.admit():
                pass
        assert info.value.status == 429 and info.value.retry_after_s == DEFAULT_RETRY_AFTER_S
        assert controller.stats().shed == 1
        release.set()
        await asyncio.gather(*tasks)

    run(scenario())


def test_a_caller_that_waits_past_the_timeout_is_refused_and_leaves_the_line():
    async def scenario():
        controller = AdmissionController(max_in_flight=1, max_waiting=4, queue_timeout_s=0.05)
        release, order = asyncio.Event(), []
        holder = asyncio.create_task(hold(controller, release, order, 0))
        await settle()
        with pytest.raises(WaitedTooLong) as info:
            async with controller.admit():
                pass
        assert info.value.status == 429
        assert controller.stats().waiting == 0 and controller.stats().timed_out == 1
        release.set()
        await holder
        async with controller.admit():  # the slot is free again
            assert controller.stats().in_flight == 1

    run(scenario())


def test_a_cancelled_waiter_takes_no_slot():
    async def scenario():
        controller = AdmissionController(max_in_flight=1, max_waiting=4, queue_timeout_s=LONG_WAIT_S)
        release, order = asyncio.Event(), []
        holder = asyncio.create_task(hold(controller, release, order, 0))
        await settle()
        waiter = asyncio.create_task(hold(controller, release, order, 1))
        later = asyncio.create_task(hold(controller, release, order, 2))
        await settle()
        waiter.cancel()
        await settle()
        assert controller.stats().waiting == 1
        release.set()
        await asyncio.gather(holder, later)
        assert order == [0, 2]
        with pytest.raises(asyncio.CancelledError):
            await waiter

    run(scenario())


def test_a_slot_is_released_when_the_job_fails():
    async def scenario():
        controller = AdmissionController(max_in_flight=1, max_waiting=0, queue_timeout_s=LONG_WAIT_S)
        with pytest.raises(RuntimeError):
            async with controller.admit():
                raise RuntimeError("the job failed")
        assert controller.stats().in_flight == 0
        async with controller.admit():
            pass

    run(scenario())


def test_close_refuses_new_and_waiting_callers_and_drained_waits_for_the_running_ones():
    async def scenario():
        controller = AdmissionController(max_in_flight=1, max_waiting=2, queue_timeout_s=LONG_WAIT_S)
        release, order = asyncio.Event(), []
        holder = asyncio.create_task(hold(controller, release, order, 0))
        waiter = asyncio.create_task(hold(controller, release, order, 1))
        await settle()
        controller.close()
        with pytest.raises(ShuttingDown):
            await waiter
        with pytest.raises(ShuttingDown) as info:
            async with controller.admit():
                pass
        assert info.value.status == 503
        assert not await controller.drained(0.01)
        release.set()
        assert await controller.drained(LONG_WAIT_S)
        await holder
        assert order == [0] and controller.stats().refused_shutting_down == 2

    run(scenario())


def test_retry_after_follows_how_long_jobs_hold_a_slot():
    controller = AdmissionController(max_in_flight=2, max_waiting=10, queue_timeout_s=LONG_WAIT_S)
    assert controller.retry_after_s() == DEFAULT_RETRY_AFTER_S
    controller._in_flight = 1  # one job that held its slot for 3 s
    controller._release(3.0)
    assert controller.retry_after_s() == 2  # ceil(3 s x one round of 1 / 2 slots)


@pytest.mark.parametrize("args", [(0, 1, 1.0), (1, -1, 1.0), (1, 1, 0.0)])
def test_bad_bounds_are_refused(args):
    with pytest.raises(ValueError):
        AdmissionController(*args)
