"""Prometheus metrics of the worker, served on ``GET /metrics`` in HTTP mode.

Counters and histograms are updated as requests finish; what the worker's parts already
count (the conditionals cache, the decode engine) is read at scrape time by a collector,
so that nothing is counted twice. Everything lives in one registry of its own, so the
module can be imported any number of times (tests) without duplicate registrations.
"""
from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

if TYPE_CHECKING:
    from chatterbox_worker.engine.stats import EngineStats
    from chatterbox_worker.models.interface import ModelStats

logger = logging.getLogger(__name__)

REGISTRY = CollectorRegistry(auto_describe=True)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Request latencies from a ping to a long clip on a CPU.
LATENCY_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
TOKENS_PER_SECOND_BUCKETS = (5, 10, 25, 50, 100, 200, 400, 800, 1600)

REQUESTS = Counter("chatterbox_requests_total", "Requests by route or operation and outcome",
                   ["route", "outcome"], registry=REGISTRY)
LATENCY = Histogram("chatterbox_request_seconds", "Time to the end of the response, by route or operation",
                    ["route"], buckets=LATENCY_BUCKETS, registry=REGISTRY)
FIRST_AUDIO = Histogram("chatterbox_first_audio_seconds", "Time from a streamed speech request to its first "
                        "audio bytes", ["route"], buckets=LATENCY_BUCKETS, registry=REGISTRY)
AUDIO_SECONDS = Counter("chatterbox_audio_seconds_total", "Seconds of speech produced", ["model"],
                        registry=REGISTRY)
TOKENS_PER_SECOND = Histogram("chatterbox_speech_tokens_per_second", "Speech tokens per second of generation, "
                              "per request", ["model"], buckets=TOKENS_PER_SECOND_BUCKETS, registry=REGISTRY)
CONDITIONALS = Counter("chatterbox_request_conditionals_total", "Where requests' voice conditionals came from",
                       ["source"], registry=REGISTRY)


def record_request(route: str, outcome: str, seconds: float) -> None:
    REQUESTS.labels(route, outcome).inc()
    LATENCY.labels(route).observe(seconds)


def record_first_audio(route: str, seconds: float) -> None:
    FIRST_AUDIO.labels(route).observe(seconds)


def record_speech(model: str, audio_seconds: float, speech_tokens: float, generation_seconds: float,
                  cache_source: str | None) -> None:
    AUDIO_SECONDS.labels(model).inc(audio_seconds)
    if generation_seconds > 0 and speech_tokens > 0:
        TOKENS_PER_SECOND.labels(model).observe(speech_tokens / generation_seconds)
    CONDITIONALS.labels(cache_source or "builtin").inc()


def _model_stats(model: Any) -> ModelStats | None:
    """The model's typed decode counters, or None when it has none to report (the stub model)."""
    read = getattr(model, "engine_stats", None)
    try:
        return read() if callable(read) else None
    except Exception:  # a scrape must never fail because one part could not report
        logger.debug("engine stats unavailable", exc_info=True)
        return None


def _numbers(stats: EngineStats) -> list[tuple[str, float]]:
    """The engine's numeric fields, by name (its dtype and its captured graph sizes are left out)."""
    values = ((f.name, getattr(stats, f.name)) for f in dataclasses.fields(stats))
    return sorted((name, float(value)) for name, value in values
                  if isinstance(value, (int, float)) and not isinstance(value, bool))


class WorkerCollector:
    """Reads the loaded worker's own counters at scrape time."""

    def __init__(self, worker_source: Callable[[], Any | None]):
        self._worker_source = worker_source

    def describe(self):
        return []

    def collect(self) -> Iterator[Any]:
        worker = self._worker_source()
        if worker is None:
            return
        cache_stats = worker.cache.stats() if getattr(worker, "cache", None) is not None else {}
        hits = GaugeMetricFamily("chatterbox_conditionals_cache", "Conditionals cache counters (hits, misses, ...)",
                                 labels=["stat"])
        for name, value in sorted(cache_stats.items()):
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                hits.add_metric([name], float(value))
        yield hits
        occupancy = GaugeMetricFamily("chatterbox_batch_occupancy", "Jobs decoding in one engine step over the "
                                      "engine's capacity (0 without an engine)", labels=["model"])
        active = GaugeMetricFamily("chatterbox_engine_active_jobs", "Jobs in the decode engine", labels=["model"])
        tokens = CounterMetricFamily("chatterbox_engine_tokens", "Speech tokens decoded by the engine",
                                     labels=["model"])
        engine = GaugeMetricFamily("chatterbox_engine", "Decode engine counters: jobs, steps, oom_retries, "
                                   "oom_failures, max_jobs (after out-of-memory halvings), ...", labels=["model", "stat"])
        s3gen = GaugeMetricFamily("chatterbox_s3gen", "S3Gen lane counters: calls, windows, shared_calls "
                                  "(calls of several windows), max_batch_windows, max_batch", labels=["model", "stat"])
        for name, model in sorted(worker.models.items()):
            stats = _model_stats(model)
            decoder = stats.engine if stats is not None else None  # None until the engine starts
            running = decoder.active_jobs if decoder is not None else 0
            capacity = decoder.max_jobs if decoder is not None else 0
            occupancy.add_metric([name], running / capacity if capacity else 0.0)
            active.add_metric([name], float(running))
            tokens.add_metric([name], float(decoder.tokens if decoder is not None else 0))
            for stat, value in _numbers(decoder) if decoder is not None else []:
                engine.add_metric([name, stat], value)
            for stat, value in sorted(stats.s3gen.items()) if stats is not None else []:
                s3gen.add_metric([name, stat], float(value))
        yield occupancy
        yield active
        yield tokens
        yield engine
        yield s3gen


class GateCollector:
    """Reads the job gate's admission counts and cancels at scrape time."""

    def __init__(self, gate_source: Callable[[], Any | None]):
        self._gate_source = gate_source

    def describe(self):
        return []

    def collect(self) -> Iterator[Any]:
        gate = self._gate_source()
        if gate is None:
            return
        stats = gate.stats()
        admission = GaugeMetricFamily("chatterbox_admission", "Admission: in_flight, waiting (now), their bounds, and "
                                      "admitted, shed (429 at once), timed_out (429 after QUEUE_TIMEOUT_S), "
                                      "refused_shutting_down (503) since start", labels=["stat"])
        for name, value in sorted(stats.items()):
            if isinstance(value, (int, float)):
                admission.add_metric([name], float(value))
        yield admission
        cancelled = CounterMetricFamily("chatterbox_cancelled_jobs", "Jobs stopped before their end, by reason "
                                        "(client_gone, left_while_waiting, request_timeout, cancelled, shutting_down)", labels=["reason"])
        for reason, count in sorted(stats["cancelled"].items()):
            cancelled.add_metric([reason], float(count))
        yield cancelled


_collector: WorkerCollector | None = None
_gate_collector: GateCollector | None = None


def watch_gate(gate_source: Callable[[], Any | None]) -> None:
    """Report this job gate's admission counts (the latest call wins)."""
    global _gate_collector
    if _gate_collector is not None:
        REGISTRY.unregister(_gate_collector)
    _gate_collector = GateCollector(gate_source)
    REGISTRY.register(_gate_collector)


def watch_worker(worker_source: Callable[[], Any | None]) -> None:
    """Report this worker's cache and engine counters (the latest call wins)."""
    global _collector
    if _collector is not None:
        REGISTRY.unregister(_collector)
    _collector = WorkerCollector(worker_source)
    REGISTRY.register(_collector)


def exposition() -> bytes:
    return generate_latest(REGISTRY)
