"""S3Gen windows of concurrent jobs decoded together: one call for the windows that wait.

Each model has one :class:`S3GenLane`. A job's thread hands it a :class:`Window` (speech
tokens, the voice's S3Gen conditionals, its noise seed) and blocks until its audio is back.
One call runs at a time; the thread whose window finds the lane free runs it, together with
every waiting window that can share the call, up to ``max_batch`` (``S3GEN_MAX_BATCH``).
Nothing waits on purpose: windows share a call only when they queue up behind another.

Two windows share a call when they have as many tokens, the same flow steps and voice
conditionals of the same shapes (one voice, or voices whose prompts reached the library's
length cap). With ``ragged`` (``S3GEN_RAGGED_BATCH``), windows of unequal lengths or prompts
share one too: the flow decoder runs over their padded rows and the rest alone
(:mod:`chatterbox_worker.s3gen.ragged`; off by default, because on a CPU it measured no
faster). Each row draws its own noise from its own seed (:mod:`chatterbox_worker.s3gen.noise`), so a
shared row is its solo decode up to float rounding in the batched arithmetic (measured: at
most 1.2e-7 on audio peaking near 0.07, a 250th of one 16-bit step). A window whose job
asked for its seed (``exact``) wants exactly reproducible audio, so it is always decoded
alone; a job without a seed of its own still reports the one drawn for it, and that seed
reproduces its audio to within that rounding.

No torch here: the model stacks the windows and makes the call (``decode``).
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from chatterbox_worker.contract.errors import is_out_of_memory
from chatterbox_worker.engine.cancellation import current_scope

logger = logging.getLogger(__name__)
# Windows of unequal length share a call only while the longest is at most this many times the
# shortest: past it, the padded frames cost more than the shared call saves.
RAGGED_MAX_STRETCH = 1.5


@dataclass(eq=False)  # compared by identity
class Window:
    """One S3Gen decode: ``tokens`` [n], ``gen`` the voice's S3Gen conditionals."""

    tokens: Any
    gen: dict[str, Any]
    seed: int
    # Decoded alone, so that its audio is exactly its seed's (a seed the job asked for).
    exact: bool
    n_cfm_timesteps: int | None = None
    result: Any = None
    error: BaseException | None = None
    done: bool = False
    batch_size: int = field(default=0, repr=False)
    # The job's cancel scope: a window whose job is cancelled leaves the line undecoded.
    scope: Any = field(default=None, repr=False)

    @property
    def abandoned(self) -> bool:
        return self.scope is not None and self.scope.cancelled


def _shape(value: Any) -> tuple | None:
    return None if value is None else tuple(value.shape)


def same_shapes(a: Window, b: Window) -> bool:
    """Whether two windows stack as they are: as many tokens, voice conditionals of one shape."""
    if _shape(a.tokens) != _shape(b.tokens) or a.gen.keys() != b.gen.keys():
        return False
    return all(_shape(a.gen[k]) == _shape(b.gen[k]) for k in a.gen)


def frames(window: Window) -> int:
    """The window's length in the flow decoder, in tokens: its voice prompt's and its own."""
    prompt = window.gen.get("prompt_token")
    return window.tokens.shape[-1] + (0 if prompt is None else prompt.shape[-1])


def can_share(a: Window, b: Window, ragged: bool = False) -> bool:
    """Whether two windows can be rows of one S3Gen call: stacked as they are, or (``ragged``)
    with the flow decoder batched over padded rows (:mod:`s3gen.ragged`), the longest at most
    RAGGED_MAX_STRETCH times the shortest so that padding does not eat the gain."""
    if a.exact or b.exact or a.n_cfm_timesteps != b.n_cfm_timesteps or a.gen.keys() != b.gen.keys():
        return False
    if same_shapes(a, b):
        return True
    return ragged and max(frames(a), frames(b)) <= RAGGED_MAX_STRETCH * min(frames(a), frames(b))


class S3GenLane:
    """One S3Gen call at a time for one model; waiting windows that can share it go along.

    ``decode(windows)`` returns one audio array per window, in order.
    """

    def __init__(self, decode: Callable[[Sequence[Window]], list[Any]], max_batch: int = 1, ragged: bool = False):
        # A shared call that runs out of memory halves this (each of its jobs retries alone
        # or in smaller calls; see pipeline.speech.with_memory_retry).
        self._decode = decode
        self.max_batch = max(1, max_batch)
        # Windows of unequal length may share a call (S3GEN_RAGGED_BATCH).
        self.ragged = ragged
        self._cond = threading.Condition()
        self._waiting: list[Window] = []
        self._busy = False
        self._stats = {"calls": 0, "windows": 0, "shared_calls": 0, "max_batch_windows": 0}

    def stats(self) -> dict[str, int]:
        with self._cond:
            return {**self._stats, "max_batch": self.max_batch}

    def decode(self, window: Window) -> Any:
        """The window's audio, decoded by this thread or by the one whose call took it along.

        A window whose job is cancelled while it waits leaves the line with the scope's error."""
        window.scope = current_scope()
        if window.scope is not None:
            window.scope.raise_if_cancelled()
            unregister = window.scope.on_cancel(lambda error: self._wake())
        with self._cond:
            self._waiting.append(window)
            while self._busy and not window.done and not window.abandoned:
                self._cond.wait()
            if window.abandoned and not window.done:
                self._waiting.remove(window)
                raise window.scope.error
            batch = None if window.done else self._take(window)
        if window.scope is not None:
            unregister()
        if batch is not None:
            self._run(batch)
        if window.error is not None:
            raise window.error
        return window.result

    def _wake(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def _take(self, first: Window) -> list[Window]:
        """Called with the lock held: ``first`` and the waiting windows that can share its call."""
        batch = [first]
        for other in self._waiting:
            if len(batch) >= self.max_batch:
                break
            if other is not first and not other.abandoned and all(can_share(w, other, self.ragged) for w in batch):
                batch.append(other)
        for window in batch:
            self._waiting.remove(window)
        self._busy = True
        return batch

    def _run(self, batch: list[Window]) -> None:
        results: list[Any] = [None] * len(batch)
        error: BaseException | None = None
        try:
            results = self._decode(batch)
        except BaseException as exc:
            error = exc
        with self._cond:
            if error is not None and len(batch) > 1 and is_out_of_memory(error):
                self.max_batch = max(1, len(batch) // 2)
                logger.warning("S3Gen ran out of memory decoding %d windows at once; now at most %d",
                               len(batch), self.max_batch)
            for window, result in zip(batch, results):
                window.result, window.error, window.done = result, error, True
                window.batch_size = len(batch)
            self._busy = False
            self._stats["calls"] += 1
            self._stats["windows"] += len(batch)
            self._stats["shared_calls"] += len(batch) > 1
            self._stats["max_batch_windows"] = max(self._stats["max_batch_windows"], len(batch))
            self._cond.notify_all()
