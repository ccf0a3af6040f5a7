"""A job's chunks side by side: a chunk gives its T3 slot back once its tokens are drawn,
and every chunk runs in the caller's context (its cancel scope and counters)."""
from __future__ import annotations

import contextvars
import threading

import numpy as np

from chatterbox_worker.pipeline.chunk_plan import Chunk
from chatterbox_worker.pipeline.parallel_chunks import chunk_audio, tokens_drawn

# Generous: a wait for threads to reach a state, not a timing claim.
STATE_DEADLINE_S = 30
JOB_ID: contextvars.ContextVar[str] = contextvars.ContextVar("job_id", default="none")


class TwoPhaseModel:
    """Each chunk draws its tokens (holding a T3 slot), says so, then waits for its "S3Gen"
    decode until the test lets every decode finish."""

    def __init__(self):
        self.lock = threading.Lock()
        self.drawing = self.max_drawing = self.decoding = self.max_decoding = 0
        self.decode_may_finish = threading.Event()
        self.all_waiting = threading.Event()
        self.expected_waiting = 0

    def synthesize(self, chunk: Chunk) -> np.ndarray:
        with self.lock:
            self.drawing += 1
            self.max_drawing = max(self.max_drawing, self.drawing)
        with self.lock:
            self.drawing -= 1
            self.decoding += 1
            self.max_decoding = max(self.max_decoding, self.decoding)
            if self.decoding >= self.expected_waiting:
                self.all_waiting.set()
        tokens_drawn()
        assert self.decode_may_finish.wait(STATE_DEADLINE_S)
        with self.lock:
            self.decoding -= 1
        return np.full(4, chunk.index, dtype=np.float32)


def test_chunks_waiting_for_s3gen_hold_no_t3_slot():
    model = TwoPhaseModel()
    slots, chunks = 2, [Chunk(f"c{i}", i) for i in range(8)]
    model.expected_waiting = 2 * slots  # the whole window, though only two may draw at once
    out: list = []
    consumer = threading.Thread(target=lambda: out.extend(chunk_audio(chunks, model.synthesize, slots=slots)))
    consumer.start()
    assert model.all_waiting.wait(STATE_DEADLINE_S)  # four chunks past T3 with two slots
    model.decode_may_finish.set()
    consumer.join(STATE_DEADLINE_S)
    assert model.max_drawing <= slots and model.max_decoding == 2 * slots
    assert [int(block[0]) for block in out] == list(range(len(chunks)))  # text order


def test_each_chunk_runs_in_the_caller_s_context():
    seen: list[str] = []

    def synthesize(chunk: Chunk) -> np.ndarray:
        seen.append(JOB_ID.get())
        return np.zeros(1, dtype=np.float32)

    JOB_ID.set("job-7")
    list(chunk_audio([Chunk(f"c{i}", i) for i in range(6)], synthesize, slots=3))
    assert seen == ["job-7"] * 6


def test_tokens_drawn_outside_a_chunk_does_nothing():
    tokens_drawn()  # a model call that is not a side-by-side chunk: no slot to give back
