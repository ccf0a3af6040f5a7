"""A soak run: hundreds of mixed jobs through ``handler.handler`` in one process, watching for
leaks (``scripts/soak.py`` is its command line; a short run is part of the test suite).

The worker serves a temporary copy of the demo library, with a temporary conditionals cache
and ``tempfile.tempdir`` pointed at a fresh, empty directory. The figures hold resident
memory at the start, after warm-up and at the end, open file descriptors, files left in the
temp directory and job counts by outcome; ``failures`` lists what fails the run: descriptors
grown past a small slack, a temp file left behind, a job that failed in a way it should not
(an internal error, a good job rejected, a bad job served), or an exception that escaped
the handler.
"""
from __future__ import annotations

import gc
import json
import logging
import random
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from chatterbox_worker.settings import environment_overrides
from chatterbox_worker.testing.demo_library import copy_demo_library
from chatterbox_worker.testing.jobs import Job, JobFactory, Payloads
from chatterbox_worker.testing.stub_worker import stub_worker

logger = logging.getLogger("soak")

DEFAULT_JOBS = 300
DEFAULT_SEED = 1234
WARMUP_JOBS = 30  # lazy imports (librosa, soxr) and first-use caches settle in these
PROGRESS_EVERY = 50
# A descriptor or two may legitimately appear late (a lazily opened shared library);
# a leak of one per job would blow far past this over hundreds of jobs.
FD_SLACK = 3
MIB = 1024 * 1024
TEMP_FILE_PREFIX = ".tmp-"  # what the library and the conditionals cache name their temp files
CACHE_FLUSH_TIMEOUT_S = 30

# Outcomes. The first two are what a healthy worker gives; every other one fails the run.
OK, REJECTED = "ok", "rejected"
INTERNAL_ERROR = "internal_error"  # "internal: ..." (an exception the handler caught) or "service: ..."
UNEXPECTED_ERROR = "unexpected_error"  # a well-formed job was refused
UNEXPECTED_SUCCESS = "unexpected_success"  # a malformed job was served
BAD_RESPONSE = "bad_response"  # not JSON, or no audio where audio is due
ESCAPED_EXCEPTION = "escaped_exception"  # the handler raised
HEALTHY_OUTCOMES = (OK, REJECTED)
ALL_OUTCOMES = (OK, REJECTED, INTERNAL_ERROR, UNEXPECTED_ERROR, UNEXPECTED_SUCCESS, BAD_RESPONSE,
                ESCAPED_EXCEPTION)


# Builds the worker under test over (library directory, conditionals cache directory).
WorkerFactory = Callable[[Path, Path], Any]


@dataclass(frozen=True)
class SoakConfig:
    jobs: int = DEFAULT_JOBS
    seed: int = DEFAULT_SEED  # of the job mix
    keep: bool = False  # keep the temporary library and cache afterwards
    model: str = "stub"  # the figures' label for the worker's model


# -- measuring ---------------------------------------------------------------------------


@dataclass
class Snapshot:
    rss_mib: float
    fds: int


def snapshot(process: psutil.Process) -> Snapshot:
    gc.collect()  # count what is still referenced, not garbage awaiting a collection
    return Snapshot(process.memory_info().rss / MIB, process.num_fds())


def files_under(directory: Path) -> list[Path]:
    return [p for p in directory.rglob("*") if p.is_file()]


def stray_temp_files(*directories: Path) -> list[Path]:
    return [p for d in directories if d.exists() for p in d.rglob(f"{TEMP_FILE_PREFIX}*")]


@dataclass
class Tally:
    outcomes: Counter = field(default_factory=Counter)
    by_kind: dict[str, Counter] = field(default_factory=dict)
    first_failures: list[str] = field(default_factory=list)

    def add(self, job: Job, outcome: str, detail: str = "") -> None:
        self.outcomes[outcome] += 1
        self.by_kind.setdefault(job.kind, Counter())[outcome] += 1
        if outcome not in HEALTHY_OUTCOMES and len(self.first_failures) < 10:
            self.first_failures.append(f"{job.kind}: {outcome}: {detail[:300]}")


def classify(job: Job, result: Any) -> tuple[str, str]:
    try:
        json.dumps(result, allow_nan=False)  # RunPod posts the result as strict JSON
    except (TypeError, ValueError) as exc:
        return BAD_RESPONSE, f"not JSON: {exc}"
    if not isinstance(result, dict):
        return BAD_RESPONSE, f"result is a {type(result).__name__}"
    error = result.get("error")
    if error is not None:
        if not isinstance(error, str):
            return BAD_RESPONSE, f"error is a {type(error).__name__}"
        if error.startswith("internal:") or error.startswith("service:"):
            return INTERNAL_ERROR, error
        if not job.malformed:
            return UNEXPECTED_ERROR, error
        if set(result) != {"error"}:
            return BAD_RESPONSE, f"error response has extra keys {sorted(set(result) - {'error'})}"
        return REJECTED, error
    if job.malformed:
        return UNEXPECTED_SUCCESS, f"keys {sorted(result)}"
    if job.audio_key is not None and not any(result.get(k) for k in (job.audio_key, f"{job.audio_key}_url")):
        return BAD_RESPONSE, f"no {job.audio_key} in {sorted(result)}"
    return OK, ""




def run_jobs(jobs: list[Job], handle: Callable[[Any], Any], after_each: Callable[[], None],
             process: psutil.Process, warmup: int) -> tuple[Tally, Snapshot | None]:
    tally, warm = Tally(), None
    for index, job in enumerate(jobs, 1):
        try:
            result = handle(job.payload)
        except Exception as exc:  # the handler must answer every job; this is the failure to find
            logger.exception("an exception escaped the handler on job %d (%s)", index, job.kind)
            tally.add(job, ESCAPED_EXCEPTION, f"{type(exc).__name__}: {exc}")
        else:
            outcome, detail = classify(job, result)
            tally.add(job, outcome, detail)
            if outcome not in HEALTHY_OUTCOMES:
                logger.error("job %d (%s): %s: %s", index, job.kind, outcome, detail[:300])
        after_each()
        if index == warmup:
            warm = snapshot(process)
            logger.info("after warm-up (%d jobs): RSS %.1f MiB, %d fds", index, warm.rss_mib, warm.fds)
        elif index % PROGRESS_EVERY == 0:
            now = snapshot(process)
            logger.info("%d/%d jobs: RSS %.1f MiB, %d fds", index, len(jobs), now.rss_mib, now.fds)
    return tally, warm



def failures_of(figures: dict[str, Any]) -> list[str]:
    failures = []
    fd_growth = figures["fds_end"] - figures["fds_start"]
    if fd_growth > FD_SLACK:
        failures.append(f"open fds grew by {fd_growth} (slack {FD_SLACK})")
    if figures["temp_files_left"]:
        failures.append(f"{figures['temp_files_left']} file(s) left in the temp dir")
    if figures["stray_temp_files"]:
        failures.append(f"{figures['stray_temp_files']} stray temp file(s) in the library or cache")
    bad = {k: v for k, v in figures["outcomes"].items() if k not in HEALTHY_OUTCOMES and v}
    if bad:
        failures.append("unhealthy outcomes " + ", ".join(f"{k}={v}" for k, v in sorted(bad.items())))
    return failures


@dataclass(frozen=True)
class Sandbox:
    """Where one soak run lives: all of it under one temporary root, removed afterwards."""

    root: Path
    library_dir: Path
    cache_dir: Path
    job_tmp: Path  # tempfile.tempdir during the run


@contextmanager
def sandbox(keep: bool) -> Iterator[Sandbox]:
    root = Path(tempfile.mkdtemp(prefix="chatterbox-soak-"))
    box = Sandbox(root, copy_demo_library(root / "library"), root / "conditionals", root / "tmp")
    box.job_tmp.mkdir()
    saved_tempdir = tempfile.tempdir
    try:
        # Every temp file the worker makes (tempfile.* without dir=) lands here, so one left
        # behind is visible; the shared /tmp would hide it among other processes' files.
        tempfile.tempdir = str(box.job_tmp)
        with environment_overrides(TMPDIR=str(box.job_tmp)):
            yield box
    finally:
        tempfile.tempdir = saved_tempdir
        if keep:
            logger.info("kept the soak directory %s", root)
        else:
            shutil.rmtree(root, ignore_errors=True)


@contextmanager
def serving(worker: Any) -> Iterator[None]:
    """handler.handler serves every job with ``worker``, as the unit tests' run_job fixture does."""
    import handler

    saved = handler.get_worker
    handler.get_worker = lambda: worker
    try:
        yield
    finally:
        handler.get_worker = saved


def forget_stub_generations(worker: Any) -> Callable[[], None]:
    """The stub records every generation for the unit tests' assertions; clearing that list
    after each job keeps the stub's own bookkeeping out of the worker's memory growth."""
    records = [getattr(model, "generations", None) for model in worker.models.values()]
    records = [r for r in records if isinstance(r, list)]

    def forget() -> None:
        for record in records:
            record.clear()

    return forget


def build_figures(config: SoakConfig, jobs: list[Job], tally: Tally, snaps: dict[str, Snapshot],
                  wall: float, temp_left: int, strays: int) -> dict[str, Any]:
    start, warm, end = snaps["start"], snaps["warmup"], snaps["end"]
    figures: dict[str, Any] = {
        "jobs": len(jobs),
        "seed": config.seed,
        "model": config.model,
        "wall_s": round(wall, 2),
        "warmup_jobs": min(WARMUP_JOBS, len(jobs)),
        "rss_start_mib": round(start.rss_mib, 1),
        "rss_warmup_mib": round(warm.rss_mib, 1),
        "rss_end_mib": round(end.rss_mib, 1),
        "rss_growth_mib": round(end.rss_mib - warm.rss_mib, 1),
        "fds_start": start.fds,
        "fds_warmup": warm.fds,
        "fds_end": end.fds,
        "temp_files_left": temp_left,
        "stray_temp_files": strays,
        "outcomes": {name: tally.outcomes.get(name, 0) for name in ALL_OUTCOMES},
        "by_kind": {kind: dict(counts) for kind, counts in sorted(tally.by_kind.items())},
        "first_failures": tally.first_failures,
    }
    figures["failures"] = failures_of(figures)
    figures["passed"] = not figures["failures"]
    return figures


def soak(config: SoakConfig, make_worker: WorkerFactory = stub_worker) -> dict[str, Any]:
    """Run the soak and return its figures; ``figures["failures"]`` is empty when it passed."""
    import handler

    process = psutil.Process()
    with sandbox(config.keep) as box:
        worker = make_worker(box.library_dir, box.cache_dir)
        voice_ids = json.loads((box.library_dir / "name_mapping.json").read_text())
        factory = JobFactory(random.Random(config.seed), Payloads.build(), voice_ids)
        jobs = [factory.make(i) for i in range(config.jobs)]
        with serving(worker):
            start = snapshot(process)
            logger.info("start: %d jobs (%d malformed), RSS %.1f MiB, %d fds", len(jobs),
                        sum(j.malformed for j in jobs), start.rss_mib, start.fds)
            t0 = time.perf_counter()
            tally, warm = run_jobs(jobs, handler.handler, forget_stub_generations(worker), process,
                                   min(WARMUP_JOBS, len(jobs)))
            wall = time.perf_counter() - t0
            end = snapshot(process)
        temp_left = files_under(box.job_tmp)
        worker.cache.flush(CACHE_FLUSH_TIMEOUT_S)  # conditionals are written to disk in the background
        strays = stray_temp_files(box.library_dir, box.cache_dir)
        for path in temp_left + strays:
            logger.error("left behind: %s", path)
    snaps = {"start": start, "warmup": warm or end, "end": end}
    return build_figures(config, jobs, tally, snaps, wall, len(temp_left), len(strays))
