"""What every backend offers, and what a speech request carries."""
from __future__ import annotations

import struct
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Protocol

# Progress callback: a short line on what the job is doing.
Progress = Callable[[str], None]
PCM_SAMPLE_RATE = 24000
# How often a request that sends nothing until it is done reports that it is still running.
WAITING_REPORT_EVERY_S = 5.0
WAV_UNKNOWN_SIZE = 0xFFFFFFFF
# OpenAI's limit on /v1/audio/speech's input; the worker speaks longer text (a chapter)
# when the request says so (``long_input``).
OPENAI_MAX_INPUT_CHARS = 4096


class ClientError(Exception):
    """A request the service refused or could not answer; the message says why."""


@dataclass(frozen=True)
class SpeechOptions:
    text: str
    voice: str
    model: str = "tts-1"
    response_format: str = "mp3"
    speed: float = 1.0
    extras: dict[str, Any] = field(default_factory=dict)  # exaggeration, seed, max_new_tokens, ...

    def openai_body(self) -> dict[str, Any]:
        """The OpenAI speech request; the text goes as is (pause tags included)."""
        long_input = {"long_input": True} if len(self.text) > OPENAI_MAX_INPUT_CHARS else {}
        return {"model": self.model, "input": self.text, "voice": self.voice,
                "response_format": self.response_format, "speed": self.speed, **long_input, **self.extras}


class Backend(Protocol):
    def say(self, options: SpeechOptions, out: BinaryIO, *, stream: bool, progress: Progress) -> int:
        """Write the audio to ``out`` as it arrives; returns the bytes written."""

    def voices(self) -> list[dict[str, Any]]: ...

    def clone(self, audio: bytes, filename: str, name: str, description: str = "") -> dict[str, Any]: ...


def streaming_wav_header(sample_rate: int = PCM_SAMPLE_RATE) -> bytes:
    """A 16-bit mono WAV header for audio whose length is not known yet."""
    return (b"RIFF" + struct.pack("<I", WAV_UNKNOWN_SIZE) + b"WAVEfmt "
            + struct.pack("<IHHIIHH", 16, 1, 1, sample_rate, sample_rate * 2, 2, 16)
            + b"data" + struct.pack("<I", WAV_UNKNOWN_SIZE))


@contextmanager
def reporting_wait(progress: Progress, what: str, every_s: float = WAITING_REPORT_EVERY_S) -> Iterator[None]:
    """Report "<what>: N s" every ``every_s`` while a blocking request runs."""
    done = threading.Event()
    started = time.monotonic()

    def tick() -> None:
        while not done.wait(every_s):
            progress(f"{what}: {time.monotonic() - started:.0f} s")

    thread = threading.Thread(target=tick, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()
