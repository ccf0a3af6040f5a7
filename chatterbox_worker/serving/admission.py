"""Admission: how many jobs run at once, how many may wait for a slot, and what is refused.

The contract, for every caller (the HTTP routes, ``/v1/jobs`` and RunPod's OpenAI
passthrough all go through one controller per worker):

- At most ``max_in_flight`` jobs hold a slot. At most ``max_waiting`` more wait for one,
  first come, first served.
- ``async with controller.admit():`` returns at once with a free slot, or waits in line.
  It raises :class:`Overloaded` at once when the line is full, :class:`WaitedTooLong` once
  a caller has waited ``queue_timeout_s`` without a slot, and :class:`ShuttingDown` after
  :meth:`AdmissionController.close`. Each carries ``retry_after_s``, the number of seconds a
  client should wait before it tries again (the ``Retry-After`` header).
- A caller cancelled while it waits leaves the line and takes no slot. A slot is released
  when the ``async with`` block ends, however it ends, and goes to the first waiter.
- :meth:`AdmissionController.stats` counts what was admitted, shed, timed out and refused
  while shutting down, beside what is in flight and waiting now.

It holds no model code and no torch: it only counts. It lives on one event loop, which
runs every coroutine that calls it.
"""
from __future__ import annotations

import asyncio
import collections
import contextlib
import math
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

# Before any job has finished, a client is told to come back after this long.
DEFAULT_RETRY_AFTER_S = 1
# Weight of the newest job in the running mean of how long a slot is held.
HOLD_TIME_WEIGHT = 0.2
MAX_RETRY_AFTER_S = 120  # RunPod drops a load-balancer request after 2 minutes of waiting


class AdmissionRefused(Exception):
    """A job the worker will not take now; the same job may be sent again later."""

    status = 503
    code = "unavailable"

    def __init__(self, message: str, retry_after_s: int):
        super().__init__(message)
        self.message = message
        self.retry_after_s = retry_after_s


class Overloaded(AdmissionRefused):
    status = 429
    code = "overloaded"


class WaitedTooLong(AdmissionRefused):
    status = 429
    code = "queue_timeout"


class ShuttingDown(AdmissionRefused):
    status = 503
    code = "shutting_down"


@dataclass(frozen=True)
class AdmissionStats:
    max_in_flight: int
    max_waiting: int
    in_flight: int
    waiting: int
    admitted: int
    shed: int
    timed_out: int
    refused_shutting_down: int
    closed: bool


class AdmissionController:
    """Bounded slots and a bounded line in front of them (see the module's contract)."""

    def __init__(self, max_in_flight: int, max_waiting: int, queue_timeout_s: float):
        if max_in_flight < 1 or max_waiting < 0 or queue_timeout_s <= 0:
            raise ValueError("admission needs at least one slot, a line of zero or more, and a positive timeout")
        self.max_in_flight = max_in_flight
        self.max_waiting = max_waiting
        self.queue_timeout_s = queue_timeout_s
        self._in_flight = 0
        self._line: collections.deque[asyncio.Future] = collections.deque()
        self._closed = False
        self._mean_hold_s: float | None = None
        self._counts = collections.Counter()
        self._idle = asyncio.Event()
        self._idle.set()

    # ------------------------------------------------------------------ the contract

    @contextlib.asynccontextmanager
    async def admit(self) -> AsyncIterator[None]:
        await self._acquire()
        started = time.monotonic()
        try:
            yield
        finally:
            self._release(time.monotonic() - started)

    async def acquire(self) -> Callable[[], None]:
        """Wait for a slot as :meth:`admit` does; returns the call that gives it back (idempotent).

        For a job whose slot outlives one block (a streamed response)."""
        await self._acquire()
        started = time.monotonic()
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self._release(time.monotonic() - started)
        return release

    def close(self) -> None:
        """Admit nothing more; everyone in line is refused with :class:`ShuttingDown`."""
        self._closed = True
        while self._line:
            waiter = self._line.popleft()
            if not waiter.done():
                waiter.set_exception(self._refusal(ShuttingDown))

    async def drained(self, timeout_s: float) -> bool:
        """Wait until no job holds a slot, at most ``timeout_s``; True if none does."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
        except TimeoutError:
            return False
        return True

    def stats(self) -> AdmissionStats:
        return AdmissionStats(self.max_in_flight, self.max_waiting, self._in_flight, len(self._line),
                              self._counts["admitted"], self._counts["shed"], self._counts["timed_out"],
                              self._counts["refused_shutting_down"], self._closed)

    def retry_after_s(self) -> int:
        """Seconds until a slot is likely free: the mean hold time for each round of the line."""
        if self._mean_hold_s is None:
            return DEFAULT_RETRY_AFTER_S
        rounds = (len(self._line) + 1) / self.max_in_flight
        return max(1, min(MAX_RETRY_AFTER_S, math.ceil(self._mean_hold_s * rounds)))

    # ------------------------------------------------------------------ internals

    def _refusal(self, kind: type[AdmissionRefused]) -> AdmissionRefused:
        messages = {
            Overloaded: f"the worker is at capacity ({self.max_in_flight} running, {len(self._line)} waiting)",
            WaitedTooLong: f"no slot became free within {self.queue_timeout_s:g} s",
            ShuttingDown: "the worker is shutting down",
        }
        counter = {Overloaded: "shed", WaitedTooLong: "timed_out", ShuttingDown: "refused_shutting_down"}[kind]
        self._counts[counter] += 1
        return kind(f"server: {messages[kind]}; retry later", self.retry_after_s())

    async def _acquire(self) -> None:
        if self._closed:
            raise self._refusal(ShuttingDown)
        if self._in_flight < self.max_in_flight and not self._line:
            self._take_slot()
            return
        if len(self._line) >= self.max_waiting:
            raise self._refusal(Overloaded)
        waiter = asyncio.get_running_loop().create_future()
        self._line.append(waiter)
        try:
            await asyncio.wait_for(asyncio.shield(waiter), self.queue_timeout_s)
        except TimeoutError:
            self._leave_line(waiter)
            raise self._refusal(WaitedTooLong) from None
        except asyncio.CancelledError:
            self._leave_line(waiter)
            raise

    def _leave_line(self, waiter: asyncio.Future) -> None:
        if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
            self._release(None)  # the slot was handed over just as the wait ended: pass it on
        with contextlib.suppress(ValueError):
            self._line.remove(waiter)
        waiter.cancel()

    def _take_slot(self) -> None:
        self._in_flight += 1
        self._counts["admitted"] += 1
        self._idle.clear()

    def _release(self, held_s: float | None) -> None:
        if held_s is not None:
            mean = self._mean_hold_s
            self._mean_hold_s = held_s if mean is None else mean + HOLD_TIME_WEIGHT * (held_s - mean)
        self._in_flight -= 1
        while self._line and not self._closed:
            waiter = self._line.popleft()
            if not waiter.done():
                self._take_slot()
                waiter.set_result(None)
                break
        if self._in_flight == 0:
            self._idle.set()
