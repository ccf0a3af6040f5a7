"""A job's chunks decoded side by side, their audio handed back in text order.

The model's ``synthesize`` is thread-safe and every call becomes a job in its decode
engine, batched with all the others into shared T3 steps (and, for unseeded jobs, shared
S3Gen calls). So running a job's chunks from a few threads at once is what puts them side
by side in the batch.

Policy: one job has at most ``JOB_CHUNK_SLOTS`` chunks drawing speech tokens at once
(default 4: half of a GPU worker's 8 engine slots), so a chapter never takes every T3 slot
from the jobs beside it; the engine admits waiting jobs in arrival order. A chunk whose
tokens are drawn gives its slot to the next chunk (:func:`tokens_drawn`, which the model
calls) while it waits for its S3Gen decode, so the decode lane never starves T3 of chunks.
At most twice that many chunks are in flight, and finished ones wait for the ones before
them in that window, so memory holds a bounded number of chunks however long the text.
Each chunk draws from its own seed (:func:`chunk_plan.chunk_seed`): the audio does not
depend on what ran beside it. Each runs in a copy of the caller's context, so the job's
cancel scope and counters reach it. ``JOB_CHUNK_SLOTS=1`` speaks one chunk after another
on the calling thread, as before.
"""
from __future__ import annotations

import contextvars
import threading
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np

from chatterbox_worker.pipeline.chunk_plan import Chunk

Synthesize = Callable[[Chunk], np.ndarray]
Progress = Callable[[int, int], None]
# Chunks in flight per slot (drawing tokens, waiting for S3Gen, or done and waiting for the
# chunks before them): enough that a freed slot finds the next chunk ready to go.
WINDOW_PER_SLOT = 2
# Set in each chunk's context: called once its speech tokens are all drawn.
_TOKENS_DRAWN: contextvars.ContextVar[Callable[[], None] | None] = contextvars.ContextVar(
    "chatterbox_chunk_tokens_drawn", default=None)


def tokens_drawn() -> None:
    """The model's word that this call's T3 is done: a chunk decoded side by side gives its
    slot to the next chunk while it waits for S3Gen. Elsewhere nothing happens."""
    release = _TOKENS_DRAWN.get()
    if release is not None:
        release()


class _Counter:
    """Chunks done, reported as they finish (in any order)."""

    def __init__(self, total: int, progress: Progress | None):
        self._total, self._progress = total, progress
        self._done = 0
        self._lock = threading.Lock()

    def tick_if_done(self, future: Future) -> None:
        if not future.cancelled() and future.exception() is None:
            self.tick()

    def tick(self) -> None:
        with self._lock:
            self._done += 1
            done = self._done
        if self._progress is not None and self._total > 1:
            self._progress(done, self._total)


def _one_after_another(chunks: list[Chunk], synthesize: Synthesize, counter: _Counter) -> Iterator[np.ndarray]:
    for chunk in chunks:
        wav = synthesize(chunk)
        counter.tick()
        yield wav


class _Slots:
    """At most ``n`` chunks drawing tokens; a chunk holds its slot until :func:`tokens_drawn`
    or its end, whichever comes first."""

    def __init__(self, n: int):
        self._free = threading.Semaphore(n)

    def run(self, synthesize: Synthesize, chunk: Chunk) -> np.ndarray:
        self._free.acquire()
        held = True

        def release() -> None:  # on this chunk's thread only: at tokens_drawn(), then at its end
            nonlocal held
            if held:
                held = False
                self._free.release()

        _TOKENS_DRAWN.set(release)  # in this chunk's own context copy
        try:
            return synthesize(chunk)
        finally:
            release()


def _side_by_side(chunks: list[Chunk], synthesize: Synthesize, counter: _Counter,
                  slots: int) -> Iterator[np.ndarray]:
    window = min(slots * WINDOW_PER_SLOT, len(chunks))
    pending: deque[Future] = deque()
    upcoming = iter(chunks)
    t3_slots = _Slots(slots)
    with ThreadPoolExecutor(max_workers=window, thread_name_prefix="chunk") as pool:
        try:
            for chunk in upcoming:
                # A copy of the caller's context: the job's cancel scope and counters.
                future = pool.submit(contextvars.copy_context().run, t3_slots.run, synthesize, chunk)
                future.add_done_callback(counter.tick_if_done)
                pending.append(future)
                if len(pending) >= window:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            # A failed chunk, or a consumer that stopped: the chunks not yet started never start.
            for future in pending:
                future.cancel()


def chunk_audio(chunks: list[Chunk], synthesize: Synthesize, *, slots: int,
                progress: Progress | None = None) -> Iterator[np.ndarray]:
    """Each chunk's audio in text order, up to ``slots`` chunks decoded at once.

    ``progress(done, total)`` is called as each chunk finishes (only for more than one
    chunk). The first failing chunk's error is raised once the chunks before it are out.
    """
    counter = _Counter(len(chunks), progress)
    if slots <= 1 or len(chunks) <= 1:
        return _one_after_another(chunks, synthesize, counter)
    return _side_by_side(chunks, synthesize, counter, min(slots, len(chunks)))
