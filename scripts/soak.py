"""Soak test: hundreds of mixed jobs through ``handler.handler`` in one process, watching for leaks.

Every operation runs (tts in all three modes with library voices and uploaded audio,
voice_cloning, upload_voice, the listing and search operations, voice_conversion and
voice_transfer in both modes), with about a fifth of the jobs malformed on purpose. The
worker serves a temporary copy of the demo library, with a temporary conditionals cache
and ``tempfile.tempdir`` pointed at a fresh, empty directory.

It reports resident memory at the start, after warm-up and at the end, open file
descriptors, files left in the temp directory and job counts by outcome, and exits
non-zero when descriptors grow past a small slack, a temp file is left behind, a job
fails in a way it should not (an internal error, a good job rejected, a bad job served),
or an exception escapes the handler.

    python scripts/soak.py                        # 300 jobs, stub model (no torch), ~10 s
    python scripts/soak.py --jobs 2000 --seed 7 --json soak.json
    python scripts/soak.py --real --jobs 20       # the real model via bootstrap.load_worker (slow)

This is a script, not a test: pytest never collects it (it is outside ``tests/``).
"""
from __future__ import annotations

import argparse
import base64
import gc
import io
import json
import logging
import os
import random
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import psutil
import soundfile as sf

REPO = Path(__file__).resolve().parent.parent
TESTS = REPO / "tests"
sys.path[:0] = [str(REPO), str(TESTS)]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")

logger = logging.getLogger("soak")

DEFAULT_JOBS = 300
DEFAULT_SEED = 1234
WARMUP_JOBS = 30  # lazy imports (librosa, soxr) and first-use caches settle in these
MALFORMED_FRACTION = 0.2
PROGRESS_EVERY = 50
# A descriptor or two may legitimately appear late (a lazily opened shared library);
# a leak of one per job would blow far past this over hundreds of jobs.
FD_SLACK = 3
MIB = 1024 * 1024
ENV_SET_BY_SOAK = ("TMPDIR", "VOICE_LIBRARY_DIR", "CONDITIONALS_CACHE_DIR")
QUIET_LOGGERS = ("chatterbox_worker", "speech_pipeline", "optimized_voice_library", "conditionals_cache")
LIBRARY_FILES = ("voice_catalog.json", "name_mapping.json")
LIBRARY_VOICE_DIR = "voice_embeddings"
LIBRARY_VOICES = ("Amy", "Aaron", "Bella", "Christopher", "Dana", "Eric")
# Saved voices rotate through a few names: a re-save replaces the voice, so the library
# reaches a steady size and any growth after warm-up is the worker's, not the catalog's.
SAVED_VOICE_SLOTS = 4
TEMP_FILE_PREFIX = ".tmp-"  # what the library and the conditionals cache name their temp files
CACHE_MAX_BYTES = 10_000  # stub conditionals are 1000 bytes: a small cache forces evictions
OUTPUT_FORMATS = ("wav", "flac", "mp3", "ogg", "opus", "pcm_16")
OUTPUT_RATES = (None, None, None, 16000, 22050, 44100)
SENTENCES = (
    "Hello there.",
    "Dr. Smith will see you at 3.14 p.m. today.",
    "The quick brown fox jumps over the lazy dog!",
    "Is this thing on? I think it is.",
    "Wait... what was that noise?",
    "We shipped one thousand and twelve parcels, all on time, which was a record.",
    "你好。今天天气很好！",
)

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


# -- audio payloads ----------------------------------------------------------------------


def voice_audio_b64(seconds: float, sr: int, freq: float, container: str = "WAV", subtype: str = "PCM_16",
                    channels: int = 1) -> str:
    """A tone with a little noise (non-silent, clonable), as base64 of an audio file."""
    t = np.arange(int(seconds * sr)) / sr
    rng = np.random.default_rng(int(freq))
    wav = (0.3 * np.sin(2 * np.pi * freq * t) + 0.01 * rng.standard_normal(t.size)).astype(np.float32)
    if channels == 2:
        wav = np.stack([wav, 0.5 * wav], axis=1)
    buf = io.BytesIO()
    sf.write(buf, wav, sr, format=container, subtype=subtype)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def float_wav_b64(samples: np.ndarray, sr: int = 16000) -> str:
    """Float WAV keeps NaN and exact zeros as they are, as a broken client's file could."""
    buf = io.BytesIO()
    sf.write(buf, np.asarray(samples, dtype=np.float32), sr, format="WAV", subtype="FLOAT")
    return base64.b64encode(buf.getvalue()).decode("ascii")


@dataclass(frozen=True)
class Payloads:
    """Built once: the same strings are reused by every job, so they are not per-job growth."""

    clone: tuple[str, ...]  # over voice_sources.MIN_CLONE_SECONDS
    short: tuple[str, ...]  # conversion inputs and tts prompts
    silent: str
    nan: str
    truncated: str

    @classmethod
    def build(cls) -> "Payloads":
        clone = (
            voice_audio_b64(6.0, 16000, 220.0),
            voice_audio_b64(6.5, 22050, 180.0, "FLAC", "PCM_16", channels=2),
            voice_audio_b64(7.0, 48000, 260.0, "OGG", "VORBIS"),
        )
        short = (
            voice_audio_b64(2.0, 16000, 330.0),
            voice_audio_b64(2.5, 44100, 150.0, "MP3", "MPEG_LAYER_III"),
            "data:audio/wav;base64," + voice_audio_b64(1.5, 24000, 400.0, "WAV", "FLOAT"),
        )
        truncated = base64.b64encode(base64.b64decode(clone[0])[:20]).decode("ascii")  # cut inside the header
        return cls(clone, short, float_wav_b64(np.zeros(6 * 16000)), float_wav_b64(np.full(16000, np.nan)),
                   truncated)


# -- jobs --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Job:
    kind: str  # a label for the report: operation, and mode or variant
    payload: Any  # what handler.handler receives (normally {"id": ..., "input": {...}})
    malformed: bool
    audio_key: str | None = None  # the result key that must carry audio, if any


class JobFactory:
    """Random well-formed and malformed jobs over every operation."""

    def __init__(self, rng: random.Random, payloads: Payloads, voice_ids: dict[str, str]):
        self.rng = rng
        self.audio = payloads
        self.voice_ids = voice_ids
        self.good: list[tuple[str, Callable[[], tuple[dict, str | None]]]] = [
            ("tts/basic", self.tts_basic),
            ("tts/basic", self.tts_basic),
            ("tts/streaming", self.tts_streaming),
            ("tts/streaming_voice_cloning", self.tts_streaming_voice_cloning),
            ("voice_cloning", self.voice_cloning),
            ("upload_voice", self.upload_voice),
            ("list_local_voices", lambda: ({"operation": "list_local_voices"}, None)),
            ("list_voices", lambda: ({"operation": "list_voices"}, None)),
            ("search_local_voices", self.search),
            ("voice_conversion", self.voice_conversion),
            ("voice_transfer/embedding", self.transfer_embedding),
            ("voice_transfer/audio", self.transfer_audio),
        ]

    # -- helpers

    def pick(self, options):
        return self.rng.choice(options)

    def text(self) -> str:
        # Mostly short; now and then long enough to be spoken in several chunks and joined.
        count = self.rng.choice((1, 1, 2, 3, 25))
        return " ".join(self.pick(SENTENCES) for _ in range(count))

    def library_voice(self) -> dict[str, str]:
        name = self.pick(LIBRARY_VOICES)
        return {"voice_name": name} if self.rng.random() < 0.5 else {"voice_id": self.voice_ids[name]}

    def output(self) -> dict[str, Any]:
        fields: dict[str, Any] = {"output_format": self.pick(OUTPUT_FORMATS)}
        rate = self.pick(OUTPUT_RATES)
        if rate is not None:
            fields["sample_rate"] = rate
        if self.rng.random() < 0.3:
            fields["seed"] = self.rng.randrange(2**32)
        if self.rng.random() < 0.2:
            fields["cache"] = False
        return fields

    def slot_name(self, prefix: str) -> str:
        return f"Soak {prefix} {self.rng.randrange(SAVED_VOICE_SLOTS)}"

    # -- well-formed jobs

    def tts_basic(self):
        voice = self.pick(({}, self.library_voice(), {"reference_audio": self.pick(self.audio.short)}))
        extra = {"audio_normalization": self.pick(("peak", "rms"))} if self.rng.random() < 0.3 else {}
        return {"operation": "tts", "text": self.text(), **voice, **self.output(), **extra}, "audio"

    def tts_streaming(self):
        voice = self.pick(({}, self.library_voice(), {"reference_audio": self.pick(self.audio.short)}))
        return {"operation": "tts", "mode": "streaming", "text": self.text(), "chunk_size": self.pick((10, 25, 50)),
                **voice, **self.output()}, "audio"

    def tts_streaming_voice_cloning(self):
        voice = self.pick((self.library_voice(), {"reference_audio": self.pick(self.audio.short)}))
        return {"operation": "tts", "mode": "streaming_voice_cloning", "text": self.text(), **voice,
                **self.output()}, "audio"

    def voice_cloning(self):
        job = {"operation": "voice_cloning", "reference_audio": self.pick(self.audio.clone),
               "voice_description": "soak clone", "gender": self.pick(("female", "male", "unknown")),
               **self.output()}
        if self.rng.random() < 0.75:
            job["voice_name"] = self.slot_name("Clone")
        else:
            job["save_to_library"] = False
        if self.rng.random() < 0.5:
            job["text"] = self.text()
        return job, "sample_audio"

    def upload_voice(self):
        return {"operation": "upload_voice", "voice_name": self.slot_name("Upload"),
                "reference_audio": self.pick(self.audio.clone), "voice_description": "soak upload"}, None

    def search(self):
        job: dict[str, Any] = {"operation": "search_local_voices"}
        if self.rng.random() < 0.7:
            job["query"] = self.pick(("a", "Amy", "soak", "zzz", ""))
        if self.rng.random() < 0.4:
            job["gender"] = self.pick(("female", "male"))
        return job, None

    def voice_conversion(self):
        target = self.pick((self.library_voice(), {"target_speaker": self.pick(self.audio.short)}))
        return {"operation": "voice_conversion", "input_audio": self.pick(self.audio.short), **target,
                "no_watermark": self.rng.random() < 0.5, **self.output()}, "audio"

    def transfer_embedding(self):
        return {"operation": "voice_transfer", "transfer_mode": "embedding",
                "input_audio": self.pick(self.audio.short), **self.library_voice(), **self.output()}, "audio"

    def transfer_audio(self):
        return {"operation": "voice_transfer", "transfer_mode": "audio", "input_audio": self.pick(self.audio.short),
                "target_audio": self.pick(self.audio.clone), **self.output()}, "audio"

    # -- malformed jobs: each is wrong in one way the contract forbids

    def malformed(self) -> tuple[str, Any]:
        a = self.audio
        cases: list[tuple[str, Any]] = [
            ("bad/input-not-object", {"input": "speak this"}),
            ("bad/input-missing", {"id": "x"}),
            ("bad/job-not-object", ["not", "a", "job"]),
            ("bad/operation-unknown", {"input": {"operation": "sing", "text": "la"}}),
            ("bad/text-empty", {"input": {"text": ""}}),
            ("bad/text-too-long", {"input": {"text": "x" * 5001}}),
            ("bad/text-not-string", {"input": {"text": 42}}),
            ("bad/voice-unknown", {"input": {"text": "Hi.", "voice_name": "Nobody At All"}}),
            ("bad/voice_id-traversal", {"input": {"text": "Hi.", "voice_id": "../../etc/passwd"}}),
            ("bad/two-voices", {"input": {"text": "Hi.", "voice_name": "Amy", "voice_id": self.voice_ids["Amy"]}}),
            ("bad/reference-not-base64", {"input": {"text": "Hi.", "reference_audio": "not base64 at all!"}}),
            ("bad/reference-silent", {"input": {"text": "Hi.", "reference_audio": a.silent}}),
            ("bad/reference-nan", {"input": {"text": "Hi.", "reference_audio": a.nan}}),
            ("bad/reference-truncated", {"input": {"text": "Hi.", "reference_audio": a.truncated}}),
            ("bad/svc-no-voice", {"input": {"text": "Hi.", "mode": "streaming_voice_cloning"}}),
            ("bad/format-unknown", {"input": {"text": "Hi.", "output_format": "aiff"}}),
            ("bad/rate-out-of-range", {"input": {"text": "Hi.", "sample_rate": 96000}}),
            ("bad/unknown-field", {"input": {"text": "Hi.", "speed": 2}}),
            ("bad/cloning-too-short", {"input": {"operation": "voice_cloning", "voice_name": "Short",
                                                  "reference_audio": a.short[0]}}),
            ("bad/cloning-no-name", {"input": {"operation": "voice_cloning", "reference_audio": a.clone[0]}}),
            ("bad/upload-no-audio", {"input": {"operation": "upload_voice", "voice_name": "Nothing"}}),
            ("bad/search-query-int", {"input": {"operation": "search_local_voices", "query": 5}}),
            ("bad/list-unknown-field", {"input": {"operation": "list_voices", "limit": 3}}),
            ("bad/conversion-no-target", {"input": {"operation": "voice_conversion", "input_audio": a.short[0]}}),
            ("bad/conversion-input-nan", {"input": {"operation": "voice_conversion", "input_audio": a.nan,
                                                     "voice_name": "Amy"}}),
            ("bad/transfer-audio-no-target", {"input": {"operation": "voice_transfer", "transfer_mode": "audio",
                                                         "input_audio": a.short[0]}}),
            ("bad/transfer-embedding-with-audio", {"input": {"operation": "voice_transfer",
                                                             "input_audio": a.short[0],
                                                             "target_audio": a.clone[0]}}),
        ]
        return self.pick(cases)

    def make(self, index: int) -> Job:
        if self.rng.random() < MALFORMED_FRACTION:
            kind, payload = self.malformed()
            return Job(kind, payload, malformed=True)
        kind, build = self.pick(self.good)
        job_input, audio_key = build()
        return Job(kind, {"id": f"soak-{index}", "input": job_input}, malformed=False, audio_key=audio_key)


# -- the worker under test ---------------------------------------------------------------


def copy_demo_library(target: Path) -> Path:
    target.mkdir(parents=True)
    for name in LIBRARY_FILES:
        if (REPO / name).exists():
            shutil.copy(REPO / name, target)
    shutil.copytree(REPO / LIBRARY_VOICE_DIR, target / LIBRARY_VOICE_DIR)
    return target


def stub_worker(library_dir: Path, cache_dir: Path):
    """As tests/conftest.py assembles it: the stub model, a library copy, a small disk-backed cache."""
    from chatterbox_worker.conditionals.cache import ConditionalsCache
    from chatterbox_worker.serving.worker import Worker
    from optimized_voice_library import OptimizedVoiceLibrary
    from tests.stub_model import StubCodec, StubModel

    cache = ConditionalsCache(StubCodec(), max_bytes=CACHE_MAX_BYTES, disk_dir=cache_dir)
    return Worker({"standard": StubModel()}, OptimizedVoiceLibrary(library_dir), cache)


def real_worker(library_dir: Path, cache_dir: Path):
    """The deployed worker (torch, chatterbox weights), pointed at the temporary library and cache.

    ``load_worker`` finds both through the environment; soak() restores it afterwards.
    """
    from chatterbox_worker.serving.bootstrap import load_worker
    from chatterbox_worker.settings import reload_settings

    os.environ["VOICE_LIBRARY_DIR"] = str(library_dir)
    os.environ["CONDITIONALS_CACHE_DIR"] = str(cache_dir)
    reload_settings()  # the worker reads its settings once; the soak sets them late
    return load_worker()


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


# -- the run -----------------------------------------------------------------------------


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


def markdown_table(figures: dict[str, Any]) -> str:
    rows = [
        ("Jobs", figures["jobs"]),
        ("Seed", figures["seed"]),
        ("Model", figures["model"]),
        ("Wall time (s)", figures["wall_s"]),
        ("RSS at start (MiB)", figures["rss_start_mib"]),
        (f"RSS after warm-up, {figures['warmup_jobs']} jobs (MiB)", figures["rss_warmup_mib"]),
        ("RSS at end (MiB)", figures["rss_end_mib"]),
        ("RSS growth, warm-up to end (MiB)", figures["rss_growth_mib"]),
        ("Open fds at start", figures["fds_start"]),
        ("Open fds at end", figures["fds_end"]),
        ("Files left in temp dir", figures["temp_files_left"]),
        ("Stray .tmp- files in library/cache", figures["stray_temp_files"]),
    ]
    rows += [(f"Outcome: {name}", figures["outcomes"].get(name, 0)) for name in ALL_OUTCOMES]
    rows.append(("Result", "PASS" if figures["passed"] else "FAIL: " + "; ".join(figures["failures"])))
    width = max(len(str(name)) for name, _ in rows)
    lines = [f"| {'Metric':<{width}} | Value |", f"|{'-' * (width + 2)}|-------|"]
    lines += [f"| {name:<{width}} | {value} |" for name, value in rows]
    return "\n".join(lines)


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
    saved_env = {name: os.environ.get(name) for name in ENV_SET_BY_SOAK}
    try:
        # Every temp file the worker makes (tempfile.* without dir=) lands here, so one left
        # behind is visible; the shared /tmp would hide it among other processes' files.
        tempfile.tempdir = str(box.job_tmp)
        os.environ["TMPDIR"] = str(box.job_tmp)
        yield box
    finally:
        tempfile.tempdir = saved_tempdir
        for name, value in saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
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


def build_figures(args: argparse.Namespace, jobs: list[Job], tally: Tally, snaps: dict[str, Snapshot],
                  wall: float, temp_left: int, strays: int) -> dict[str, Any]:
    start, warm, end = snaps["start"], snaps["warmup"], snaps["end"]
    figures: dict[str, Any] = {
        "jobs": len(jobs),
        "seed": args.seed,
        "model": "real" if args.real else "stub",
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


def soak(args: argparse.Namespace) -> dict[str, Any]:
    import handler

    process = psutil.Process()
    with sandbox(args.keep) as box:
        worker = (real_worker if args.real else stub_worker)(box.library_dir, box.cache_dir)
        voice_ids = json.loads((box.library_dir / "name_mapping.json").read_text())
        factory = JobFactory(random.Random(args.seed), Payloads.build(), voice_ids)
        jobs = [factory.make(i) for i in range(args.jobs)]
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
        worker.cache.flush(30)  # conditionals are written to disk in the background
        strays = stray_temp_files(box.library_dir, box.cache_dir)
        for path in temp_left + strays:
            logger.error("left behind: %s", path)
    snaps = {"start": start, "warmup": warm or end, "end": end}
    return build_figures(args, jobs, tally, snaps, wall, len(temp_left), len(strays))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=DEFAULT_JOBS, help=f"jobs to run (default {DEFAULT_JOBS})")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="seed of the job mix")
    parser.add_argument("--json", type=Path, default=None, metavar="PATH", help="write the figures here")
    parser.add_argument("--real", action="store_true",
                        help="load the real model with bootstrap.load_worker (torch, weights; slow)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary library and cache")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="keep the worker's INFO logs (every rejected job, every save)")
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error("--jobs must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not args.verbose:
        # The worker logs each rejected job and each saved voice at INFO; hundreds of those
        # lines would bury the soak's own figures.
        for name in QUIET_LOGGERS:
            logging.getLogger(name).setLevel(logging.WARNING)
    try:
        figures = soak(args)
    except Exception:
        logger.exception("the soak run itself failed")
        return 2
    for kind, counts in figures["by_kind"].items():
        logger.info("%-34s %s", kind, ", ".join(f"{k}={v}" for k, v in sorted(counts.items())))
    for failure in figures["failures"]:
        logger.error("FAIL: %s", failure)
    if args.json is not None:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
        logger.info("figures written to %s", args.json)
    print(markdown_table(figures))
    return 0 if figures["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
