"""A job as the decode engine tracks it: its status, its rows in the KV cache, its draws so far.

A request moves WAITING -> RUNNING -> one of the FINISHED_* states, and back from RUNNING to
WAITING only when an out-of-memory step requeues it. The caller's side never writes the
status: closing a stream sets ``cancel_requested``, which the scheduler turns into
FINISHED_CANCELLED on the loop thread. Nothing here needs torch; the tensors a running
request holds are built by the model runner.
"""
from __future__ import annotations

import enum
import itertools
import queue
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from chatterbox_worker.engine.sampling import SamplingParams, TokenHistory

_REQUEST_IDS = itertools.count()
# What a request's outbox holds after its last tokens: the stream ends there.
END_OF_STREAM = object()


class RequestStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED_STOPPED = "finished_stopped"  # drew the stop token (or had nothing left to draw)
    FINISHED_LENGTH = "finished_length"  # reached its token cap
    FINISHED_CANCELLED = "finished_cancelled"  # its caller closed the stream
    FINISHED_FAILED = "finished_failed"  # an error ended it

    @property
    def is_finished(self) -> bool:
        return self not in (RequestStatus.WAITING, RequestStatus.RUNNING)


class TokenOutbox:
    """Where the loop hands a request's tokens to its caller, in groups of ``flush_every``.

    ``flush_every`` None wakes the caller once, at the end: a basic-mode caller needs no
    wake-up per token, a streaming caller asks for its window size. A replay after an
    out-of-memory step redraws the tokens already handed over; ``delivered`` skips them.

    ``max_ahead`` paces a stream: once that many tokens wait in the queue, untaken, the
    request is ``held`` and the engine draws none for it until its caller takes some
    (``take``). A stream then never runs further ahead of its listener than that, and the
    compute it would spend sooner goes to other work (on a CPU, the S3Gen decode of the
    window being sent). Tokens still in the buffer never count, so a held request always
    has tokens its caller can take.
    """

    def __init__(self, flush_every: int | None = 1, max_ahead: int | None = None):
        self.queue: queue.SimpleQueue = queue.SimpleQueue()
        self.flush_every = flush_every
        self.max_ahead = max_ahead
        self.delivered = 0
        self.handed = 0  # tokens put on the queue
        self.taken = 0  # tokens the caller took off it
        self._buffer: list[int] = []

    @property
    def waiting(self) -> int:
        """Tokens on the queue that the caller has not taken yet."""
        return self.handed - self.taken

    @property
    def held(self) -> bool:
        return self.max_ahead is not None and self.waiting >= self.max_ahead

    def take(self, count: int) -> bool:
        """The caller took ``count`` tokens; True if that releases a held request."""
        was_held = self.held
        self.taken += count
        return was_held and not self.held

    def push(self, token: int, step: int) -> bool:
        """Hand over the request's ``step``-th token unless a previous run already did; True if new."""
        if step <= self.delivered:
            return False
        self._buffer.append(token)
        self.delivered = step
        if self.flush_every is not None and len(self._buffer) >= self.flush_every:
            self.flush()
        return True

    def flush(self) -> None:
        if self._buffer:
            self.handed += len(self._buffer)
            self.queue.put(self._buffer)
            self._buffer = []

    def end(self) -> None:
        self.flush()
        self.queue.put(END_OF_STREAM)

    def fail(self, exc: BaseException) -> None:
        self.queue.put(exc)


@dataclass
class DecodeState:
    """What one run of a request keeps between steps; rebuilt when an out-of-memory replay restarts it."""

    generator: torch.Generator
    history: TokenHistory  # the ids the repetition penalty applies to
    cfg: torch.Tensor  # the classifier-free guidance weight, on the device
    cap: int  # tokens it may draw: its max_new_tokens, or less where the cache is short
    last_token: int = -1
    logits: torch.Tensor | None = None  # [rows, V] of the last forward, until sampled
    attention: dict[int, torch.Tensor] | None = None  # per aligned head, for the analyzer


@dataclass(eq=False)  # compared by identity
class EngineRequest:
    """One job in the engine. The scheduler reads ``num_rows``, ``status``, ``row0``,
    ``num_cached`` and ``retries``; the runner and sampler own ``state``."""

    prompt_embeds: Any  # [rows, T, dim] prefill embeddings, built on the caller's thread
    params: SamplingParams
    seed: int
    num_rows: int  # KV-cache rows: two with classifier-free guidance, else one
    analyzer: Any = None  # the multilingual alignment analyzer, where the recipe has one
    forced_tokens: list[int] | None = None  # teacher forcing: taken instead of drawn
    outbox: TokenOutbox = field(default_factory=TokenOutbox)
    request_id: int = field(default_factory=lambda: next(_REQUEST_IDS))
    status: RequestStatus = RequestStatus.WAITING
    cancel_requested: bool = False
    cancel_error: BaseException | None = None  # handed to the caller when a cancel scope ended it
    retries: int = 0
    row0: int = 0  # its first row in the KV cache
    num_cached: int = 0  # positions of its rows the cache holds
    steps: int = 0  # tokens drawn in this run
    state: DecodeState | None = None
    # A teacher-forced request's logits per step (after CFG, before any processor).
    logit_log: list = field(default_factory=list)

    @property
    def prompt_length(self) -> int:
        return self.prompt_embeds.size(1)

    @property
    def run_key(self) -> tuple[int, int]:
        """Names one run of the request: an out-of-memory replay is a new run."""
        return (self.request_id, self.retries)

    @property
    def has_logits(self) -> bool:
        return self.state is not None and self.state.logits is not None
