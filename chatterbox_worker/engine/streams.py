"""A job's tokens on the caller's side: the :class:`TokenStream` that ``T3Engine.submit`` returns."""
from __future__ import annotations

from collections.abc import Callable, Iterator

from chatterbox_worker.engine.requests import END_OF_STREAM, EngineRequest


class TokenStream:
    """A job's speech tokens (ints) as the engine draws them; iterate on the caller's thread.

    Closing it early (or breaking out of the loop) cancels the job. ``retries`` counts the
    times the engine restarted it after running out of memory.
    """

    def __init__(self, request: EngineRequest, abort: Callable[[EngineRequest], None],
                 wake: Callable[[], None] = lambda: None):
        self._request = request
        self._abort = abort
        self._wake = wake  # the engine, when taking tokens releases a held (paced) request

    @property
    def retries(self) -> int:
        return self._request.retries

    @property
    def seed(self) -> int:
        return self._request.seed

    @property
    def finished(self) -> bool:
        """The engine has drawn every token of the job (or ended it)."""
        return self._request.status.is_finished

    @property
    def waiting(self) -> int:
        """Tokens drawn and handed over that the caller has not taken yet."""
        return self._request.outbox.waiting

    @property
    def logits(self) -> list:
        """A teacher-forced job's logits per step (after CFG, before processors)."""
        return self._request.logit_log

    def __iter__(self) -> Iterator[int]:
        try:
            while True:
                item = self._request.outbox.queue.get()
                if item is END_OF_STREAM:
                    return
                if isinstance(item, BaseException):
                    raise item
                if self._request.outbox.take(len(item)):
                    self._wake()
                yield from item
        finally:
            self.close()

    def close(self) -> None:
        request = self._request
        if not request.status.is_finished and not request.cancel_requested:
            self._abort(request)
