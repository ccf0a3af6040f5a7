"""Benchmark: long text at the speed of the batch.

This is a benchmark, not a test: pytest only collects ``tests/``. It loads the standard
model (a random-weights checkpoint unless CHATTERBOX_CKPT_DIR names real weights) and
measures, in one process, on a fixed 16-sentence prose text (PROSE):

- ``sequential_s``: a basic job's chunks one after another (``slots=1``, the path before
  chunks ran side by side; ``JOB_CHUNK_SLOTS=1`` in a worker), ``parallel_s``: the same
  job with PARALLEL_SLOTS chunks at once, and ``speedup`` = sequential_s / parallel_s;
  both without a seed of the job's own, as most jobs arrive, so S3Gen windows of equal
  length may share calls;
- the first 8 sentences streamed three ways: ``before`` (no look-ahead, no pacing:
  ``STREAM_LOOKAHEAD_CHUNKS=0``, ``STREAM_WINDOWS_AHEAD=0``), ``unpaced`` (look-ahead 1, no
  pacing) and ``after`` (look-ahead 1, paced one window ahead, the defaults):
  ``stream_first_audio_s``, ``stream_max_gap_s`` (largest gap between consecutive audio
  items) and ``stream_median_window_gap_s`` (median gap between windows inside a sentence);
- ``longform_*``: a 100,000-character job through the stub model in its own process
  (``bench/longform_memory.py``): peak RSS growth above the idle worker, audio seconds;
- ``timeline``: every chunk's T3 and S3Gen intervals, and the stream's audio items, drawn
  by ``bench/longform_timeline.py`` as ``docs/longform-timeline.png``.

Token caps are tiny (random weights run to the cap): CHUNK_TOKENS per basic chunk, and
STREAM_TOKENS per streamed sentence in windows of STREAM_WINDOW_TOKENS.

    python bench/longform.py --out bench/results/vm-cpu-longform.json       # ~10 min, 2 CPU cores
    python bench/longform.py --device cuda --tokens 200 --out bench/results/gpu-longform.json
"""
from __future__ import annotations

import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
# bench/ holds http.py, which must not shadow the standard library's http package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(REPO))
PARALLEL_SLOTS = 8
os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Engine slots for every chunk of the parallel run (a worker's default follows its concurrency).
os.environ.setdefault("ENGINE_MAX_SLOTS", str(PARALLEL_SLOTS))

from bench import report  # noqa: E402
from bench.longform_timeline import draw_timeline  # noqa: E402 (after the path set-up above)
from bench.random_checkpoint import checkpoint_dir  # noqa: E402

logger = logging.getLogger("benchmark")

MB = 1024 * 1024
CHUNK_TOKENS = 32
STREAM_TOKENS, STREAM_WINDOW_TOKENS = 12, 4
STREAM_SENTENCES = 8
VOICE_SECONDS = 3.0
# Sixteen sentences of plain prose, each its own chunk under a CHUNK_CHARS bound.
CHUNK_CHARS = 120
PROSE = (
    "The train left the valley just before dawn, while the fields were still grey with frost.",
    "Mara sat by the window and watched the river follow the tracks for a while.",
    "Her brother had written that the house was smaller than she would remember.",
    "She had not believed him, because a child measures rooms by the games played in them.",
    "At the second station an old man boarded with a basket of apples and a folded newspaper.",
    "He offered her an apple without a word, and she took it, and they both looked outside.",
    "The hills grew steeper, and the farms gave way to pine woods and narrow stone bridges.",
    "Somewhere past noon the sky cleared, and the snow on the peaks turned almost blue.",
    "She thought about the letter again, and about the line he had underlined twice.",
    "Come before the orchard is sold, it said, because after that there is nothing to show you.",
    "The old man got off at a village with a single street and a church with a wooden tower.",
    "By evening the train was nearly empty, and the conductor stopped checking tickets.",
    "When she finally stepped onto the platform, her brother was already waiting there.",
    "He was greyer than she expected, but he laughed the same way, with his whole face.",
    "They walked up the hill together while the lights came on in the houses below.",
    "The orchard was still there, bare and black against the sky, and it was not sold yet.",
)


class Recorder:
    """Intervals of each chunk's T3 and S3Gen, and when each audio item left, relative to a zero."""

    def __init__(self, model):
        self.model, self.zero = model, time.perf_counter()
        self.spans: list[dict[str, Any]] = []
        self.items: list[dict[str, Any]] = []
        self._local = threading.local()
        self._lock = threading.Lock()
        self._install()

    def now(self) -> float:
        return time.perf_counter() - self.zero

    def restart(self) -> None:
        self.zero = time.perf_counter()
        self.spans, self.items = [], []

    def span(self, kind: str, start: float) -> None:
        with self._lock:
            self.spans.append({"chunk": getattr(self._local, "chunk", -1), "kind": kind, "start": start,
                               "end": self.now()})

    def _install(self) -> None:
        model, speech_tokens, run_s3gen = self.model, self.model.speech_tokens, self.model.run_s3gen
        synthesize, stream = self.model.synthesize, self.model.stream
        recorder = self

        def timed_tokens(job, **kwargs):
            # Submitted now, as the model does (a stream's look-ahead depends on it).
            return TimedTokens(recorder, speech_tokens(job, **kwargs), getattr(self._local, "chunk", -1))

        def timed_s3gen(*args, **kwargs):
            start = self.now()
            try:
                return run_s3gen(*args, **kwargs)
            finally:
                self.span("s3gen", start)

        def tagged_synthesize(text, **kwargs):
            self._local.chunk = chunk_index(text)
            return synthesize(text, **kwargs)

        def tagged_stream(text, **kwargs):
            self._local.chunk = chunk_index(text)
            return TaggedWindows(recorder, stream(text, **kwargs), chunk_index(text))

        model.speech_tokens, model.run_s3gen = timed_tokens, timed_s3gen
        model.synthesize, model.stream = tagged_synthesize, tagged_stream

    def set_chunk(self, chunk: int) -> None:
        self._local.chunk = chunk


def chunk_index(text: str) -> int:
    return PROSE.index(text) if text in PROSE else -1


class TimedTokens:
    """A job's token stream, recording its T3 interval (submission to last token)."""

    def __init__(self, recorder: Recorder, tokens, chunk: int):
        self._recorder, self._tokens, self._chunk = recorder, tokens, chunk
        self._start = recorder.now()

    def __iter__(self):
        yield from self._tokens
        with self._recorder._lock:
            self._recorder.spans.append({"chunk": self._chunk, "kind": "t3", "start": self._start,
                                         "end": self._recorder.now()})

    def __getattr__(self, name):  # retries, close
        return getattr(self._tokens, name)


class TaggedWindows:
    """A sentence's windows; while one is decoded, the recorder knows whose it is."""

    def __init__(self, recorder: Recorder, windows, chunk: int):
        self._recorder, self._windows, self.chunk = recorder, windows, chunk

    def __iter__(self):
        return self

    def __next__(self):
        self._recorder.set_chunk(self.chunk)
        wav = next(self._windows)
        self._recorder.last_chunk = self.chunk
        return wav

    def close(self) -> None:
        self._windows.close()


def speech_job(model, conds, tokens: int):
    from chatterbox_worker.pipeline.speech import SpeechJob

    # No seed of the job's own (exact_seed False), as most jobs arrive.
    options = model.options(seed=1234, exact_seed=False, max_new_tokens=tokens)
    return SpeechJob(model, None, conds, None, 1234, options)


def basic_run(worker, job, recorder: Recorder, slots: int) -> dict[str, Any]:
    from chatterbox_worker.pipeline.speech import speak_blocks

    recorder.restart()
    started = time.perf_counter()
    blocks = list(speak_blocks(worker, job, " ".join(PROSE), slots=slots))
    elapsed = time.perf_counter() - started
    samples = sum(b.size for b in blocks)
    return {"seconds": elapsed, "audio_s": samples / job.model.sr, "spans": recorder.spans}


def stream_gaps(items: list[dict[str, Any]]) -> dict[str, float]:
    """First audio, largest gap between consecutive items, median gap inside a sentence."""
    gaps = [b["t"] - a["t"] for a, b in zip(items, items[1:])]
    inside = [b["t"] - a["t"] for a, b in zip(items, items[1:]) if a["chunk"] == b["chunk"]]
    return {"first_audio_s": items[0]["t"], "max_gap_s": max(gaps),
            "median_window_gap_s": statistics.median(inside) if inside else float("nan"),
            "max_over_median": max(gaps) / statistics.median(inside) if inside else float("nan")}


# (name, STREAM_LOOKAHEAD_CHUNKS, STREAM_WINDOWS_AHEAD) of each streamed run.
STREAM_RUNS = (("before", 0, 0), ("unpaced", 1, 0), ("after", 1, 1))


def stream_run(worker, job, recorder: Recorder, lookahead: int, windows_ahead: int) -> dict[str, Any]:
    from chatterbox_worker.pipeline.speech import speak_stream
    from chatterbox_worker.settings import get_settings

    os.environ["STREAM_LOOKAHEAD_CHUNKS"] = str(lookahead)
    os.environ["STREAM_WINDOWS_AHEAD"] = str(windows_ahead)
    get_settings.cache_clear()
    recorder.restart()
    text = " ".join(PROSE[:STREAM_SENTENCES])
    for wav in speak_stream(worker, job, text, STREAM_WINDOW_TOKENS):
        recorder.items.append({"t": recorder.now(), "chunk": getattr(recorder, "last_chunk", -1),
                               "samples": int(wav.size)})
    return {**stream_gaps(recorder.items), "items": recorder.items, "spans": recorder.spans}


def memory_figures() -> dict[str, Any]:
    out = subprocess.run([sys.executable, str(REPO / "bench" / "longform_memory.py")], capture_output=True,
                         text=True, check=True, cwd=REPO)
    return json.loads(out.stdout.strip().splitlines()[-1])


def load(device: str):
    from chatterbox_worker.serving.worker import Worker
    from optimized_chatterbox import create_optimized_tts
    from optimized_voice_library import OptimizedVoiceLibrary

    model = create_optimized_tts(device, checkpoint_dir())
    model.warm_up()
    demo = OptimizedVoiceLibrary(REPO)
    audio = demo.get_voice_audio(demo.list_voices()[0]["voice_id"])
    conds = model.prepare_conditionals_from_array(audio.samples[: int(VOICE_SECONDS * audio.sample_rate)],
                                                  audio.sample_rate)
    return Worker({"standard": model}, demo, None), model, conds


def run(args) -> dict[str, Any]:
    import torch

    from chatterbox_worker.settings import get_settings

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    os.environ["TTS_CHUNK_MAX_CHARS"] = str(CHUNK_CHARS)
    get_settings.cache_clear()
    started = time.perf_counter()
    result: dict[str, Any] = {"device": device, "torch": torch.__version__, "threads": torch.get_num_threads(),
                              "platform": platform.platform(), "sentences": len(PROSE), "chunk_tokens": args.tokens,
                              "parallel_slots": PARALLEL_SLOTS}
    if not args.skip_model:
        worker, model, conds = load(device)
        recorder = Recorder(model)
        job = speech_job(model, conds, args.tokens)
        logger.info("basic: 16 sentences one after another, then %d at once", PARALLEL_SLOTS)
        sequential = basic_run(worker, job, recorder, slots=1)
        parallel = basic_run(worker, job, recorder, slots=PARALLEL_SLOTS)
        result.update(sequential_s=sequential["seconds"], parallel_s=parallel["seconds"],
                      speedup=sequential["seconds"] / parallel["seconds"], basic_audio_s=parallel["audio_s"])
        logger.info("stream: %d sentences without, then with look-ahead", STREAM_SENTENCES)
        stream_job = speech_job(model, conds, args.stream_tokens)
        runs = {name: stream_run(worker, stream_job, recorder, lookahead, ahead)
                for name, lookahead, ahead in STREAM_RUNS}
        before, after = runs["before"], runs["after"]
        for name, figures in runs.items():
            for key in ("first_audio_s", "max_gap_s", "median_window_gap_s", "max_over_median"):
                result[f"stream_{key}_{name}"] = figures[key]
        result["engine"] = model.engine_stats().as_dict()
        result["timeline"] = {"sequential": sequential["spans"], "parallel": parallel["spans"],
                              "stream_before": before["items"], "stream_after": after["items"]}
        if device == "cuda":
            result["gpu"] = torch.cuda.get_device_name()
            result["peak_gpu_memory_mb"] = torch.cuda.max_memory_allocated() / MB
    logger.info("100,000 characters through the stub model, in its own process")
    result.update(memory_figures())
    result["load_average"] = os.getloadavg()
    result["wall_s"] = time.perf_counter() - started
    return result


def table(r: dict[str, Any]) -> str:
    rows = [("device", r["device"], "")]
    if "speedup" in r:
        rows += [
            ("basic, 16 sentences: sequential s", f"{r['sequential_s']:.1f}", f"{r['chunk_tokens']} tokens a chunk"),
            (f"basic, 16 sentences: {r['parallel_slots']} at once s", f"{r['parallel_s']:.1f}", ""),
            ("speedup", f"{r['speedup']:.2f}x", "goal >= 1.8x"),
        ]
        for name, _, _ in STREAM_RUNS:
            rows += [(f"stream {name}: first audio / max gap / median window gap s",
                      f"{r[f'stream_first_audio_s_{name}']:.2f} / {r[f'stream_max_gap_s_{name}']:.2f} / "
                      f"{r[f'stream_median_window_gap_s_{name}']:.2f}",
                      f"max/median {r[f'stream_max_over_median_{name}']:.2f} (goal <= 1.2 after)")]
    rows += [
        ("100k chars: audio s", f"{r['longform_audio_s']:.0f}", f"float32 would be {r['longform_float32_mb']:.0f} MB"),
        ("100k chars: peak RSS growth MB", f"{r['longform_peak_rss_growth_mb']:.0f}",
         f"goal < 500; delivered by {r['longform_delivered_by']}"),
        ("wall s", f"{r['wall_s']:.0f}", ""),
    ]
    width = max(len(a) for a, _, _ in rows)
    return "\n".join(f"{a:<{width}}  {b:>22}  {c}" for a, b, c in rows)


def main(argv: list[str] | None = None) -> int:
    parser = report.parser(__doc__)
    parser.add_argument("--tokens", type=int, default=CHUNK_TOKENS, help="speech-token cap per basic chunk")
    parser.add_argument("--stream-tokens", type=int, default=STREAM_TOKENS, help="speech-token cap per streamed sentence")
    parser.add_argument("--picture", type=Path, default=REPO / "docs" / "longform-timeline.png")
    parser.add_argument("--skip-model", action="store_true", help="only the 100,000-character stub job")
    args = parser.parse_args(argv)
    report.start_logging()
    result = run(args)
    report.finish(result, table(result), args.out)
    if "timeline" in result and args.picture:
        draw_timeline(result["timeline"], args.picture, title=f"{result['device']}, {result['chunk_tokens']} tokens a chunk")
        logger.info("drew %s", args.picture)
    return 0


if __name__ == "__main__":
    sys.exit(main())
