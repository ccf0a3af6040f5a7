"""Chapter-length audio without chapter-length memory: written out as it is made.

A job whose text is over LONG_TEXT_CHARS takes this path. Its audio blocks (text order,
joins applied, :func:`speech.speak_blocks`) are resampled to the output rate and written as
16-bit PCM to a temporary file as they arrive, while the peak and energy that
normalisation needs are counted; memory holds only the chunks in flight. The file is then
encoded block by block into the asked format (libsndfile writes every contract format
incrementally), with the normalisation gain applied, and delivered: inline base64 when it
fits the result limit, else uploaded to the bucket from the file. Both files are removed
whatever happens. 100 minutes of speech at 24 kHz would be 576 MB as float32; here the
peak is a few chunks plus one encoding block.
"""
from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from chatterbox_worker.audio.codec import (
    _SOUNDFILE_FORMATS,
    OPUS_RATES,
    PEAK_TARGET,
    RMS_TARGET_DBFS,
    SILENCE_PEAK,
    resample,
)
from chatterbox_worker.contract.delivery import deliver_file

# Texts longer than this (the job limit before chapters were accepted) are written out as
# they are made; shorter ones keep the in-memory path and its exact audio.
LONG_TEXT_CHARS = 5000
PCM_SCALE = 32767.0
PCM_DTYPE = "<i2"
# Samples per encoding block: 10 s at 48 kHz, 1 MB of int16.
ENCODE_BLOCK_SAMPLES = 480_000


def is_long(text: str) -> bool:
    return len(text) > LONG_TEXT_CHARS


@dataclass
class PcmStats:
    """What normalisation needs of the whole signal, counted block by block."""

    samples: int = 0
    peak: float = 0.0
    sum_squares: float = 0.0

    def add(self, block: np.ndarray) -> None:
        if block.size:
            self.samples += block.size
            self.peak = max(self.peak, float(np.abs(block).max()))
            self.sum_squares += float(np.square(block, dtype=np.float64).sum())

    def gain(self, mode: str | None) -> float:
        """The factor ``audio.codec.normalize_audio`` would apply to the whole signal."""
        if mode is None or self.peak < SILENCE_PEAK:
            return 1.0
        if mode == "peak":
            return PEAK_TARGET / self.peak
        rms = math.sqrt(self.sum_squares / self.samples)
        return min(10 ** (RMS_TARGET_DBFS / 20) / rms, PEAK_TARGET / self.peak)  # never clip for loudness


def _pcm16(block: np.ndarray) -> bytes:
    return (np.clip(block, -1.0, 1.0) * PCM_SCALE).round().astype(PCM_DTYPE).tobytes()


def write_pcm(blocks: Iterable[np.ndarray], path: Path, model_sr: int, out_sr: int) -> PcmStats:
    """``blocks`` at ``out_sr`` as 16-bit PCM in ``path``; each block is resampled on its
    own (every chunk edge is faded to zero, so the cuts are silent)."""
    stats = PcmStats()
    with open(path, "wb") as raw:
        for block in blocks:
            block = resample(block, model_sr, out_sr)
            stats.add(block)
            raw.write(_pcm16(block))
    return stats


def _pcm_blocks(path: Path, gain: float) -> Iterator[np.ndarray]:
    with open(path, "rb") as raw:
        while data := raw.read(ENCODE_BLOCK_SAMPLES * 2):
            yield np.frombuffer(data, dtype=PCM_DTYPE).astype(np.float32) * (gain / PCM_SCALE)


def encode_pcm_file(pcm: Path, out: Path, sample_rate: int, fmt: str, gain: float) -> None:
    """The PCM file as a ``fmt`` file, block by block, scaled by ``gain``."""
    if fmt == "pcm_16":
        with open(out, "wb") as target:
            for block in _pcm_blocks(pcm, gain):
                target.write(_pcm16(block))
        return
    container, subtype = _SOUNDFILE_FORMATS[fmt]
    opus_rate = fmt == "opus" and sample_rate not in OPUS_RATES
    rate = OPUS_RATES[-1] if opus_rate else sample_rate
    with sf.SoundFile(out, "w", samplerate=rate, channels=1, format=container, subtype=subtype) as target:
        for block in _pcm_blocks(pcm, gain):
            target.write(np.clip(resample(block, sample_rate, rate), -1.0, 1.0))


@contextmanager
def scratch_files(count: int) -> Iterator[list[Path]]:
    """``count`` empty temporary paths, removed on the way out whatever happened."""
    paths = []
    try:
        for _ in range(count):
            handle, name = tempfile.mkstemp(prefix="chatterbox-long-")
            os.close(handle)
            paths.append(Path(name))
        yield paths
    finally:
        for path in paths:
            path.unlink(missing_ok=True)


@dataclass(frozen=True)
class LongAudio:
    """A delivered long result: the response's audio keys, its rate and length."""

    audio: dict[str, str]
    sample_rate: int
    seconds: float


def deliver_blocks(blocks: Iterable[np.ndarray], model_sr: int, *, output_format: str,
                   sample_rate: int | None = None, normalization: str | None = None) -> LongAudio:
    """Write, encode and deliver a long job's audio blocks (see the module docstring)."""
    out_sr = sample_rate or model_sr
    with scratch_files(2) as (pcm, encoded):
        stats = write_pcm(blocks, pcm, model_sr, out_sr)
        encode_pcm_file(pcm, encoded, out_sr, output_format, stats.gain(normalization))
        pcm.unlink()  # no longer needed: free the disk before the upload
        audio = deliver_file(encoded, output_format)
    return LongAudio(audio, out_sr, stats.samples / out_sr)
