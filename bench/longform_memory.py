"""Benchmark part: a 100,000-character job through the stub model, peak RSS above idle.

Run on its own process (``bench/longform.py`` starts it), so that the peak it reads is
this job's and not a loaded model's. The stub speaks at a real pace
(SECONDS_PER_CHAR: 100,000 characters give about 100 minutes), so the audio is
chapter-length; the job goes through the real pipeline and ``handler.handle``, and its
result is delivered by the bucket upload (replaced here by one that records the file's
size: nothing leaves the machine).

    python bench/longform_memory.py            # prints one JSON object
"""
from __future__ import annotations

import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(REPO))

LONG_CHARS = 100_000
# English read aloud runs at about 15 characters a second.
SECONDS_PER_CHAR = 1 / 16.5
KB = 1024
MB = 1024 * 1024
FLOAT32_BYTES = 4
PROSE = ("The lamp on the desk threw a small circle of light, and beyond it the room was dark. "
         "She turned the page slowly, as if the words might change their minds; then she read on, "
         "past midnight, until the candle in the hall went out. ")


def chapter(chars: int = LONG_CHARS) -> str:
    text = (PROSE * (chars // len(PROSE) + 1))[:chars]
    return text[: text.rfind(".") + 1]


def peak_rss_mb() -> float:
    """This process's peak RSS (VmHWM). Not ru_maxrss: a child started from a loaded model
    inherits its parent's peak through fork, and exec does not reset it."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * KB / MB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * KB / MB  # Linux reports KB


def run() -> dict:
    os.environ.update(BUCKET_ENDPOINT_URL="https://bucket.invalid", TQDM_DISABLE="1")
    import handler
    from chatterbox_worker.contract import delivery
    from chatterbox_worker.testing import stub_model
    from chatterbox_worker.testing.stub_worker import stub_worker

    stub_model.STUB_SECONDS_PER_CHAR = SECONDS_PER_CHAR
    uploads: list[int] = []
    delivery.upload_file = lambda path, fmt: uploads.append(path.stat().st_size) or "https://bucket.invalid/x"
    with tempfile.TemporaryDirectory() as tmp:
        from chatterbox_worker.testing.demo_library import copy_demo_library

        worker = stub_worker(copy_demo_library(Path(tmp) / "library"))
        handler.get_worker = lambda: worker
        text = chapter()
        handler.handle({"text": "Warm up the path once.", "output_format": "wav"})
        idle = peak_rss_mb()
        started = time.perf_counter()
        result = handler.handle({"text": text, "output_format": "wav", "seed": 1})
        elapsed = time.perf_counter() - started
    if "error" in result:
        raise RuntimeError(result["error"])
    seconds = result["duration"]
    return {"longform_chars": len(text), "longform_audio_s": seconds, "longform_wall_s": elapsed,
            "longform_idle_rss_mb": idle, "longform_peak_rss_mb": peak_rss_mb(),
            "longform_peak_rss_growth_mb": peak_rss_mb() - idle,
            "longform_float32_mb": seconds * result["sample_rate"] * FLOAT32_BYTES / MB,
            "longform_uploaded_mb": uploads[0] / MB if uploads else None,
            "longform_delivered_by": "upload" if "audio_url" in result else "inline"}


if __name__ == "__main__":
    print(json.dumps(run()))
