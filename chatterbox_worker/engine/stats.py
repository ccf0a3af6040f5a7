"""The decode engine's counters while it runs, and the typed snapshot that ``T3Engine.stats`` returns."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


@dataclass
class EngineCounters:
    """Totals since the engine was built; the loop thread counts, ``stats()`` copies under the lock."""

    jobs: int = 0
    tokens: int = 0
    steps: int = 0
    oom_retries: int = 0
    oom_failures: int = 0
    max_batch_jobs: int = 0
    graph_replays: int = 0
    cancelled: int = 0  # jobs that left before their end (closed stream, cancel scope)
    faults: int = 0  # jobs failed alone by an error of their own, beside healthy neighbours

    def note_batch(self, n_jobs: int) -> None:
        self.steps += 1
        self.max_batch_jobs = max(self.max_batch_jobs, n_jobs)


@dataclass(frozen=True)
class EngineStats:
    """One reading of the engine: its counters, its jobs now, and its bounds and settings."""

    jobs: int
    tokens: int
    steps: int
    oom_retries: int
    oom_failures: int
    max_batch_jobs: int
    graph_replays: int
    cancelled: int
    faults: int
    active_jobs: int
    pending_jobs: int
    max_jobs: int  # after any out-of-memory halvings
    max_rows: int
    dtype: str
    cuda_graphs: list[int] = field(default_factory=list)  # the row buckets captured

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
