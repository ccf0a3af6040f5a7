"""Running the worker's blocking jobs from RunPod's event loop.

The RunPod SDK calls handlers on its asyncio loop and only overlaps jobs whose handler is
async, so each job runs on a thread of its own and the loop only waits. A streaming job's
generator runs start to finish on one thread (torch's inference mode is per thread) and
hands each item to the loop the moment it is made; the generator holds no lock while the
loop posts an item.

A job given a :class:`~chatterbox_worker.engine.cancellation.CancelScope` runs inside it on
its thread, so that cancelling the scope from the loop (client gone, time limit, RunPod's
cancel, shutdown) reaches the job's engine request. A stream whose consumer leaves before
its end calls ``on_leave``, which cancels the job rather than waiting for its next item.
"""
from __future__ import annotations

import asyncio
import contextvars
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from typing import TypeVar

from chatterbox_worker.engine.cancellation import CancelScope, scope_context

T = TypeVar("T")
# Items a streaming job may make ahead of the client: enough to overlap decoding the next
# window with posting this one, few enough that a stalled client holds little audio.
STREAM_BUFFER_ITEMS = 2
_DONE = object()


async def run_blocking(call: Callable[..., T], *args, scope: CancelScope | None = None) -> T:
    """``call(*args)`` on a thread (inside ``scope`` when given: ``to_thread`` copies the context)."""
    with scope_context(scope):
        return await asyncio.to_thread(call, *args)


async def stream_from_thread(produce: Callable[[], Iterator[T]], scope: CancelScope | None = None,
                             on_leave: Callable[[], None] | None = None) -> AsyncIterator[T]:
    """The items of ``produce()``, made on a worker thread (inside ``scope``), yielded on the event loop.

    ``on_leave`` runs when the consumer stops before the last item (closed, or cancelled)."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()
    room = threading.Semaphore(STREAM_BUFFER_ITEMS)
    stopped = threading.Event()  # the consumer has left: stop making items

    def put(item) -> None:
        while not stopped.is_set():
            if room.acquire(timeout=0.1):
                try:
                    loop.call_soon_threadsafe(queue.put_nowait, item)
                except RuntimeError:  # the loop has closed
                    stopped.set()
                return

    def run() -> None:
        items = produce()
        try:
            for item in items:
                put(item)
                if stopped.is_set():
                    break
        except BaseException as exc:  # handed to the consumer, which raises it
            put(exc)
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()
            put(_DONE)

    with scope_context(scope):
        context = contextvars.copy_context()
    threading.Thread(target=context.run, args=(run,), name="stream-job", daemon=True).start()
    ended = False
    try:
        while (item := await queue.get()) is not _DONE:
            room.release()
            if isinstance(item, BaseException):
                ended = True
                raise item
            yield item
        ended = True
    finally:
        stopped.set()
        if not ended and on_leave is not None:
            on_leave()
