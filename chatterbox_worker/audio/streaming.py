"""Encoding audio as it is made: the OpenAI speech formats, window by window, through PyAV.

An :class:`AudioStreamEncoder` takes float32 windows at the model's rate and returns, for
each, the encoded bytes that are ready to send. Its output, concatenated, is one playable
file: mp3 frames, Ogg Opus pages, AAC in ADTS frames, FLAC frames, a WAV header of unknown
length followed by 16-bit samples, or raw 16-bit samples (``pcm``). libsndfile has no AAC
encoder and writes whole files only, so every compressed format goes through ffmpeg's
encoders (PyAV). A speed other than 1 passes the audio through ffmpeg's ``atempo`` filter,
which changes tempo and keeps pitch, and keeps its state across windows.
"""
from __future__ import annotations

import io
import logging
import struct
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

logger = logging.getLogger(__name__)

SPEECH_FORMATS = ("mp3", "opus", "aac", "flac", "wav", "pcm")
SPEECH_MIME_TYPES = {"mp3": "audio/mpeg", "opus": "audio/ogg", "aac": "audio/aac", "flac": "audio/flac",
                     "wav": "audio/wav", "pcm": "audio/pcm"}
# Formats whose header carries the clip's length. Streamed, the length is unknown when the
# header leaves, and libsndfile (soundfile) refuses such a FLAC ("array is too big") or
# reads such a WAV's size field literally; so these are sent whole unless a stream is
# asked for by name.
LENGTH_IN_HEADER_FORMATS = ("flac", "wav")
MIN_SPEED, MAX_SPEED = 0.25, 4.0
# One atempo stage handles 0.5–2.0 without skipping samples; wider factors chain stages.
ATEMPO_MIN, ATEMPO_MAX = 0.5, 2.0
PCM_MAX = 32767.0
# WAV sizes for a stream whose length is unknown when the header leaves: decoders read to EOF.
WAV_UNKNOWN_SIZE = 0xFFFFFFFF
# Ogg pages of at most 20 ms, so that every decoded window leaves at once instead of
# waiting for a full page (ffmpeg's default is one second).
OGG_PAGE_MICROSECONDS = "20000"


@dataclass(frozen=True)
class _Codec:
    container: str
    codec: str
    sample_format: str
    options: dict[str, str]
    bit_rate: int | None = None


_CODECS = {
    "mp3": _Codec("mp3", "libmp3lame", "fltp", {}, 64_000),
    "opus": _Codec("ogg", "libopus", "flt", {"page_duration": OGG_PAGE_MICROSECONDS}, 32_000),
    "aac": _Codec("adts", "aac", "fltp", {}, 64_000),
    "flac": _Codec("flac", "flac", "s16", {}),
}


def _to_pcm16(samples: np.ndarray) -> bytes:
    clipped = np.clip(np.asarray(samples, dtype=np.float32), -1.0, 1.0)
    return (clipped * PCM_MAX).round().astype("<i2").tobytes()


def wav_header(sample_rate: int, data_bytes: int | None = None) -> bytes:
    """A 16-bit mono WAV header; ``data_bytes=None`` marks a stream of unknown length."""
    data_size = WAV_UNKNOWN_SIZE if data_bytes is None else data_bytes
    riff_size = WAV_UNKNOWN_SIZE if data_bytes is None else 36 + data_bytes
    return (b"RIFF" + struct.pack("<I", riff_size) + b"WAVEfmt "
            + struct.pack("<IHHIIHH", 16, 1, 1, sample_rate, sample_rate * 2, 2, 16)
            + b"data" + struct.pack("<I", data_size))


def atempo_factors(speed: float) -> list[float]:
    """``speed`` as a product of factors each within one atempo stage's range."""
    if not MIN_SPEED <= speed <= MAX_SPEED:
        raise ValueError(f"speed {speed} is outside {MIN_SPEED}–{MAX_SPEED}")
    factors = []
    while speed < ATEMPO_MIN:
        factors.append(ATEMPO_MIN)
        speed /= ATEMPO_MIN
    while speed > ATEMPO_MAX:
        factors.append(ATEMPO_MAX)
        speed /= ATEMPO_MAX
    return [*factors, speed]


def _frame(samples: np.ndarray, sample_rate: int, pts: int | None = None):
    import av

    frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples, dtype=np.float32)[None, :],
                                       format="flt", layout="mono")
    frame.sample_rate = sample_rate
    if pts is not None:
        frame.pts = pts
        frame.time_base = Fraction(1, sample_rate)
    return frame


class TempoFilter:
    """Pitch-preserving tempo change, fed window by window (ffmpeg's ``atempo``)."""

    def __init__(self, speed: float, sample_rate: int):
        import av.filter

        self.sample_rate = sample_rate
        self._pts = 0
        self._graph = av.filter.Graph()
        node = self._graph.add_abuffer(sample_rate=sample_rate, format="flt", layout="mono",
                                       time_base=Fraction(1, sample_rate))
        for factor in atempo_factors(speed):
            stage = self._graph.add("atempo", f"{factor:.6f}")
            node.link_to(stage)
            node = stage
        sink = self._graph.add("abuffersink")
        node.link_to(sink)
        self._graph.configure()

    def _drain(self) -> np.ndarray:
        import av

        parts = []
        while True:
            try:
                frame = self._graph.pull()
            except (av.BlockingIOError, av.EOFError):
                break
            parts.append(frame.to_ndarray().reshape(-1).astype(np.float32, copy=False))
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)

    def push(self, samples: np.ndarray) -> np.ndarray:
        if samples.size == 0:
            return np.zeros(0, dtype=np.float32)
        self._graph.push(_frame(samples, self.sample_rate, self._pts))
        self._pts += samples.size
        return self._drain()

    def finish(self) -> np.ndarray:
        self._graph.push(None)
        return self._drain()


class _Sink:
    """A write-only file for PyAV's muxer; what it is given is collected until taken."""

    def __init__(self):
        self._parts: list[bytes] = []

    def write(self, data) -> int:
        self._parts.append(bytes(data))
        return len(data)

    def take(self) -> bytes:
        data, self._parts = b"".join(self._parts), []
        return data


class _PyAVWriter:
    def __init__(self, fmt: str, sample_rate: int):
        import av

        codec = _CODECS[fmt]
        self._sink = _Sink()
        self._container = av.open(self._sink, mode="w", format=codec.container, options=codec.options)
        self._stream = self._container.add_stream(codec.codec, rate=sample_rate)
        self._stream.layout = "mono"
        self._stream.format = codec.sample_format
        if codec.bit_rate:
            self._stream.bit_rate = codec.bit_rate
        self.sample_rate = sample_rate

    def push(self, samples: np.ndarray) -> bytes:
        if samples.size:
            for packet in self._stream.encode(_frame(np.clip(samples, -1.0, 1.0), self.sample_rate)):
                self._container.mux(packet)
        return self._sink.take()

    def finish(self) -> bytes:
        for packet in self._stream.encode(None):
            self._container.mux(packet)
        self._container.close()
        return self._sink.take()

    def close(self) -> None:
        # An abandoned muxer must be closed on the thread that used it: one left to the
        # garbage collector can free its I/O context while another thread runs.
        try:
            self._container.close()
        except Exception:  # already closed, or its last write failed: nothing left to free
            logger.debug("closing an abandoned encoder", exc_info=True)


class _PcmWriter:
    def __init__(self, fmt: str, sample_rate: int):
        self._header = wav_header(sample_rate) if fmt == "wav" else b""

    def push(self, samples: np.ndarray) -> bytes:
        header, self._header = self._header, b""
        return header + _to_pcm16(samples)

    def finish(self) -> bytes:
        header, self._header = self._header, b""
        return header

    def close(self) -> None:
        pass


class AudioStreamEncoder:
    """Encode windows of float32 audio into one ``fmt`` stream, returning bytes as they are ready."""

    def __init__(self, fmt: str, sample_rate: int, speed: float = 1.0):
        if fmt not in SPEECH_FORMATS:
            raise ValueError(f"unknown speech format {fmt!r}; expected one of {', '.join(SPEECH_FORMATS)}")
        self.format = fmt
        self.sample_rate = sample_rate
        self._tempo = TempoFilter(speed, sample_rate) if speed != 1.0 else None
        self._writer = _PcmWriter(fmt, sample_rate) if fmt in ("wav", "pcm") else _PyAVWriter(fmt, sample_rate)
        self.samples_in = 0
        self.samples_out = 0
        self._finished = False

    def push(self, samples: np.ndarray) -> bytes:
        samples = np.asarray(samples, dtype=np.float32).reshape(-1)
        self.samples_in += samples.size
        if self._tempo is not None:
            samples = self._tempo.push(samples)
        self.samples_out += samples.size
        return self._writer.push(samples)

    def finish(self) -> bytes:
        tail = b""
        if self._tempo is not None:
            rest = self._tempo.finish()
            self.samples_out += rest.size
            tail = self._writer.push(rest)
        self._finished = True
        return tail + self._writer.finish()

    def close(self) -> None:
        """Free the encoder of a stream that ends early (an error, a client that left)."""
        if not self._finished:
            self._finished = True
            self._writer.close()

    def __enter__(self) -> AudioStreamEncoder:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def encode_speech(samples: np.ndarray, sample_rate: int, fmt: str, speed: float = 1.0) -> bytes:
    """A whole clip in ``fmt``; a WAV or FLAC made here carries its real length in the header."""
    if fmt in LENGTH_IN_HEADER_FORMATS:
        pcm = np.frombuffer(encode_speech(samples, sample_rate, "pcm", speed), "<i2")
        return _whole_file(pcm, sample_rate, fmt)
    with AudioStreamEncoder(fmt, sample_rate, speed) as encoder:
        return encoder.push(samples) + encoder.finish()


def _whole_file(pcm: np.ndarray, sample_rate: int, fmt: str) -> bytes:
    """16-bit samples as a complete file: WAV with its data size, FLAC with its sample count
    and MD5 (ffmpeg's streaming FLAC muxer cannot seek back to write them)."""
    if fmt == "wav":
        return wav_header(sample_rate, pcm.nbytes) + pcm.tobytes()
    import soundfile as sf

    buffer = io.BytesIO()
    sf.write(buffer, pcm, sample_rate, format="FLAC", subtype="PCM_16")
    return buffer.getvalue()
