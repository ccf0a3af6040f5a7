"""A stub model that takes time, step by step, and stops at a step when its job is cancelled.

It stands in for the decode engine's contract under load: a job holds the model for
``steps`` steps of ``step_s`` seconds, and a cancelled job (its
:class:`~chatterbox_worker.engine.cancellation.CancelScope`) leaves at its next step with
the scope's error. It counts what it ran, so tests and the load script can see whether
abandoned work stopped. No torch.
"""
from __future__ import annotations

import threading
import time

from chatterbox_worker.engine.cancellation import JobCancelled, raise_if_cancelled
from chatterbox_worker.testing.stub_model import StubModel

DEFAULT_STEP_S = 0.05
DEFAULT_STEPS = 20
STREAM_WINDOWS = 4  # a streamed job's audio comes in this many pieces


class SteppedStubModel(StubModel):
    """:class:`StubModel` whose every job takes ``steps`` steps of ``step_s``, cancellable at each."""

    def __init__(self, step_s: float = DEFAULT_STEP_S, steps: int = DEFAULT_STEPS):
        super().__init__()
        self.step_s = step_s
        self.steps = steps
        self._lock = threading.Lock()
        self.active = 0  # jobs holding the model now
        self.completed = 0
        self.cancelled: list[str] = []  # the reason of each job that left early
        self.steps_run = 0

    def _step(self) -> None:
        time.sleep(self.step_s)
        with self._lock:
            self.steps_run += 1
        raise_if_cancelled()

    def _run(self, steps: int):
        with self._lock:
            self.active += 1
        try:
            for _ in range(steps):
                self._step()
                yield
            with self._lock:
                self.completed += 1
        except JobCancelled as exc:
            with self._lock:
                self.cancelled.append(exc.reason)
            raise
        finally:
            with self._lock:
                self.active -= 1

    def synthesize(self, text, *, conditionals, options=None):
        for _ in self._run(self.steps):
            pass
        return super().synthesize(text, conditionals=conditionals, options=options)

    def stream(self, text, *, conditionals, options=None, chunk_size=50, first_chunk_size=None):
        wav = StubModel.synthesize(self, text, conditionals=conditionals, options=options)
        size = max(1, len(wav) // STREAM_WINDOWS)
        windows = [wav[i:i + size] for i in range(0, len(wav), size)]
        per_window = max(1, self.steps // len(windows))
        steps = self._run(per_window * len(windows))
        try:
            for window in windows:
                for _ in range(per_window):
                    next(steps)
                yield window
            next(steps, None)  # the steps' end counts the job as completed
        finally:
            steps.close()  # a consumer that left: the job no longer holds the model
