"""Timing of one job: milliseconds per stage, and the ``metrics`` / ``streaming_metrics`` keys."""
from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from chatterbox_worker.contract.limits import MS_PER_SECOND

STAGES = ("voice_load_ms", "conditionals_ms", "generation_ms", "encode_ms")

# Out-of-memory retries of the job running in this context: the pipeline's free-and-retry
# and the decode engine's replays happen deep inside a model call, while the operation
# builds the metrics, so the count travels in a context variable, set afresh per job (a job
# runs in a context of its own: a thread's, or a copy made for it by asyncio).
_MEMORY_RETRIES: ContextVar[list[int]] = ContextVar("memory_retries")


def count_memory_retries() -> None:
    """Start counting for the job about to run in this context."""
    _MEMORY_RETRIES.set([0])


def note_memory_retries(n: int = 1) -> None:
    box = _MEMORY_RETRIES.get(None)
    if box is not None:
        box[0] += n


def memory_retries() -> int:
    box = _MEMORY_RETRIES.get(None)
    return box[0] if box is not None else 0


@dataclass
class Timer:
    """Wall-clock milliseconds per named stage of one job.

    A streaming job pauses it while its generator sits suspended at ``yield`` (RunPod is
    posting the previous chunk then), so every figure counts the work, not the wait.
    """

    start: float = field(default_factory=time.perf_counter)
    stages: dict[str, float] = field(default_factory=dict)
    _paused_at: float | None = None
    _paused_s: float = 0.0

    @contextmanager
    def measure(self, stage: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.stages[stage] = self.stages.get(stage, 0.0) + (time.perf_counter() - t0) * MS_PER_SECOND

    def pause(self) -> None:
        self._paused_at = time.perf_counter()

    def resume(self) -> None:
        if self._paused_at is not None:
            self._paused_s += time.perf_counter() - self._paused_at
            self._paused_at = None

    def elapsed_s(self) -> float:
        """Seconds of work since the job started, not counting pauses."""
        return time.perf_counter() - self.start - self._paused_s

    def metrics(self, audio_seconds: float, cache_source: str | None, **extra: Any) -> dict[str, Any]:
        generation_ms = self.stages.get("generation_ms", 0.0)
        return {
            **{stage: round(self.stages.get(stage, 0.0), 3) for stage in STAGES},
            "total_ms": round(self.elapsed_s() * MS_PER_SECOND, 3),
            "audio_seconds": round(audio_seconds, 4),
            "rtf": round(generation_ms / MS_PER_SECOND / audio_seconds, 4) if audio_seconds > 0 else None,
            "cache_hit": cache_source in ("memory", "disk"),
            "cache_source": cache_source,
            "memory_retries": memory_retries(),
            **extra,
        }


def chunk_detail(index: int, samples: int, sample_rate: int, latency_s: float) -> dict[str, Any]:
    return {"chunk_index": index, "samples": int(samples), "duration": round(samples / sample_rate, 4),
            "latency": round(latency_s, 4)}


def streaming_metrics(details: list[dict[str, Any]], generation_s: float, audio_s: float) -> dict[str, Any]:
    """The contract's ``streaming_metrics``; latencies are seconds of work since generation started."""
    return {
        "total_chunks": len(details),
        "first_chunk_latency": details[0]["latency"] if details else None,
        "total_generation_time": round(generation_s, 4),
        "audio_duration": round(audio_s, 4),
        "rtf": round(generation_s / audio_s, 4) if audio_s > 0 else None,
        "chunk_details": details,
    }
