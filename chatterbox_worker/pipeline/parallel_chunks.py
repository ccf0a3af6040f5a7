"""A job's chunks decoded side by side, their audio handed back in text order.

The model's ``synthesize`` is thread-safe and every call becomes a job in its decode
engine, batched with all the others into shared T3 steps (and, for unseeded jobs, shared
S3Gen calls). So running a job's chunks from a few threads at once is what puts them side
by side in the batch.

Policy: one job has at most ``JOB_CHUNK_SLOTS`` chunks in flight (default 4: half of a GPU
worker's 8 engine slots), so a chapter never takes every slot from the jobs beside it; the
engine admits waiting jobs in arrival order. Finished chunks wait for the ones before them
in a window of twice that many, so memory holds a bounded number of chunks however long
the text. Each chunk draws from its own seed (:func:`chunk_plan.chunk_seed`): the audio
does not depend on what ran beside it. ``JOB_CHUNK_SLOTS=1`` speaks one chunk after
another on the calling thread, as before.
"""
from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np

from chatterbox_worker.pipeline.chunk_plan import Chunk

Synthesize = Callable[[Chunk], np.ndarray]
Progress = Callable[[int, int], None]
# Chunks decoded ahead of the oldest unfinished one, per slot: enough that a slot freed by
# a short chunk finds the next chunk ready to go.
WINDOW_PER_SLOT = 2


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


def _side_by_side(chunks: list[Chunk], synthesize: Synthesize, counter: _Counter,
                  slots: int) -> Iterator[np.ndarray]:
    window = slots * WINDOW_PER_SLOT
    pending: deque[Future] = deque()
    upcoming = iter(chunks)
    with ThreadPoolExecutor(max_workers=slots, thread_name_prefix="chunk") as pool:
        try:
            for chunk in upcoming:
                future = pool.submit(synthesize, chunk)
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
