"""Audio arrays in and out of the worker: decoding uploads, resampling, encoding results."""
from __future__ import annotations

import base64
import binascii
import hashlib
import io
import re
from dataclasses import dataclass

import numpy as np
import soundfile as sf

from chatterbox_worker.contract.errors import JobError
from chatterbox_worker.contract.limits import MB, OUTPUT_FORMATS
from chatterbox_worker.settings import get_settings, mb_to_bytes

# Below this peak an upload is silence (or a digital-zero file): nothing to clone.
SILENCE_PEAK = 1e-4
PEAK_TARGET = 0.95
RMS_TARGET_DBFS = -20.0
CROSSFADE_MS = 10.0
PAUSE_MS = 120.0
ACCEPTED_FORMATS = "WAV, FLAC, OGG (Vorbis/Opus) or MP3"
# Stored voice files that libsndfile reads, by file name ending.
SOUNDFILE_SUFFIXES = (".flac", ".wav", ".ogg")
# libsndfile container and subtype per output format.
_SOUNDFILE_FORMATS = {
    "wav": ("WAV", "PCM_16"),
    "flac": ("FLAC", "PCM_16"),
    "mp3": ("MP3", "MPEG_LAYER_III"),
    "ogg": ("OGG", "VORBIS"),
    "opus": ("OGG", "OPUS"),
}
# Opus is defined only at these rates; other rates are resampled to 48 kHz for it.
OPUS_RATES = (8000, 12000, 16000, 24000, 48000)
# Parameters may have a space after ";" ("audio/ogg; codecs=opus", as browsers write it).
_DATA_URI = re.compile(r"^data:[\w.+-]+/[\w.+-]+(\s*;\s*[\w.+-]+=[\w.+-]+)*;base64,", re.IGNORECASE)


@dataclass(frozen=True)
class DecodedAudio:
    samples: np.ndarray  # float32, mono, C-contiguous
    sample_rate: int

    @property
    def duration(self) -> float:
        return len(self.samples) / self.sample_rate


def audio_fingerprint(samples: np.ndarray, sample_rate: int) -> str:
    """A content key for a prompt: the same samples at the same rate give the same key.

    The conditionals cache keys on this, so a voice re-uploaded under an old name is
    never served the conditionals of its previous audio.
    """
    data = np.ascontiguousarray(samples, dtype=np.float32)
    digest = hashlib.sha256(data.tobytes())
    digest.update(int(sample_rate).to_bytes(4, "little"))
    return digest.hexdigest()


def _base64_payload(data: object, field: str, max_base64_bytes: int) -> bytes:
    if not isinstance(data, str):
        raise JobError(field, f"must be a base64 string, got {type(data).__name__}")
    text = data.strip()
    if text.lower().startswith("data:"):
        match = _DATA_URI.match(text)
        if not match:
            raise JobError(field, "has a data: URI prefix that does not parse; expected data:<mime>;base64,<data>")
        text = text[match.end():]
    text = "".join(text.split())
    if not text:
        raise JobError(field, "is empty")
    if len(text) > max_base64_bytes:
        raise JobError(field, f"is {len(text) / MB:.1f} MB of base64, over the {max_base64_bytes / MB:.0f} MB "
                              "limit (MAX_AUDIO_BASE64_MB)")
    text += "=" * (-len(text) % 4)  # base64url usually leaves the padding out
    try:
        if "-" in text or "_" in text:
            return base64.b64decode(text.replace("-", "+").replace("_", "/"), validate=True)
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise JobError(field, "is not valid base64") from None


def decode_audio_base64(data: object, field: str, *, max_base64_bytes: int | None = None,
                        min_seconds: float | None = None) -> DecodedAudio:
    """Decode a base64 audio file from a job field into mono float32 at its own rate."""
    if max_base64_bytes is None:
        max_base64_bytes = mb_to_bytes(get_settings().max_audio_base64_mb)
    raw = _base64_payload(data, field, max_base64_bytes)
    try:
        samples, sample_rate = sf.read(io.BytesIO(raw), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, ValueError, TypeError, EOFError) as exc:
        # libsndfile's message names the in-memory buffer object; keep only its reason.
        reason = getattr(exc, "error_string", None) or str(exc).split(": ", 1)[-1]
        raise JobError(field, f"is not a readable audio file ({ACCEPTED_FORMATS}): {reason}") from None
    # librosa.load's mono mix: the mean over channels, as the library's file path does.
    samples = np.ascontiguousarray(samples.mean(axis=1, dtype=np.float32) if samples.shape[1] > 1
                                   else samples[:, 0])
    if samples.size == 0:
        raise JobError(field, "contains no audio samples")
    if not np.isfinite(samples).all():
        raise JobError(field, "contains NaN or infinite samples")
    if float(np.abs(samples).max()) < SILENCE_PEAK:
        raise JobError(field, "is silent")
    decoded = DecodedAudio(samples, int(sample_rate))
    if min_seconds is not None and decoded.duration < min_seconds:
        raise JobError(field, f"is {decoded.duration:.2f} s long; at least {min_seconds:g} s is required")
    return decoded


def trim_to_seconds(samples: np.ndarray, sample_rate: int, max_seconds: float) -> np.ndarray:
    return samples[: int(max_seconds * sample_rate)]


def resample(samples: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    """librosa's soxr_hq resampler: the one ``librosa.load`` uses, so results match the library."""
    samples = np.asarray(samples, dtype=np.float32)
    if orig_sr == target_sr or samples.size == 0:
        return samples
    import librosa  # imported on first use: librosa takes a second to import

    return librosa.resample(samples, orig_sr=orig_sr, target_sr=target_sr).astype(np.float32, copy=False)


def normalize_audio(samples: np.ndarray, mode: str | None) -> np.ndarray:
    if mode is None:
        return samples
    if mode not in ("peak", "rms"):
        raise ValueError(f"unknown normalization {mode!r}")
    peak = float(np.abs(samples).max()) if samples.size else 0.0
    if peak < SILENCE_PEAK:
        return samples
    if mode == "peak":
        return (samples * (PEAK_TARGET / peak)).astype(np.float32)
    rms = float(np.sqrt(np.mean(np.square(samples, dtype=np.float64))))
    scaled = samples * (10 ** (RMS_TARGET_DBFS / 20) / rms)
    scaled_peak = float(np.abs(scaled).max())
    if scaled_peak > PEAK_TARGET:  # never clip to reach the loudness target
        scaled = scaled * (PEAK_TARGET / scaled_peak)
    return scaled.astype(np.float32)


def encode_audio(samples: np.ndarray, sample_rate: int, fmt: str = "wav") -> bytes:
    if fmt not in OUTPUT_FORMATS:
        raise ValueError(f"unknown output format {fmt!r}")
    # Integer formats wrap around outside [-1, 1]; clipping turns that into mild distortion.
    samples = np.clip(np.asarray(samples, dtype=np.float32), -1.0, 1.0)
    if samples.size == 0 and fmt not in ("wav", "pcm_16"):
        # libsndfile writes nothing, or an unreadable stream, for empty compressed audio.
        raise ValueError(f"no audio samples to encode as {fmt}")
    if fmt == "pcm_16":
        return (samples * 32767.0).round().astype("<i2").tobytes()
    if fmt == "opus" and sample_rate not in OPUS_RATES:
        samples, sample_rate = resample(samples, sample_rate, OPUS_RATES[-1]), OPUS_RATES[-1]
    container, subtype = _SOUNDFILE_FORMATS[fmt]
    buf = io.BytesIO()
    sf.write(buf, samples, sample_rate, format=container, subtype=subtype)
    return buf.getvalue()


def to_base64(data: bytes) -> str:
    """Base64 text, never bytes: RunPod silently drops a result that contains bytes."""
    return base64.b64encode(data).decode("ascii")


def encode_audio_base64(samples: np.ndarray, sample_rate: int, fmt: str = "wav") -> str:
    return to_base64(encode_audio(samples, sample_rate, fmt))


def join_audio_chunks(chunks: list[np.ndarray], sample_rate: int, *, crossfade_ms: float = CROSSFADE_MS,
                      pause_ms: float = PAUSE_MS) -> np.ndarray:
    """Join sentence chunks: fade each edge to zero and put a short pause between them.

    Fading to zero on both sides of the pause means no step at a join is larger than the
    fade's own slope, so the joins never click.
    """
    chunks = [np.asarray(c, dtype=np.float32) for c in chunks if len(c)]
    if not chunks:
        return np.zeros(0, dtype=np.float32)
    if len(chunks) == 1:
        return chunks[0]
    fade = int(sample_rate * crossfade_ms / 1000)
    pause = np.zeros(int(sample_rate * pause_ms / 1000), dtype=np.float32)
    parts: list[np.ndarray] = []
    for i, chunk in enumerate(chunks):
        chunk = chunk.copy()
        n = min(fade, len(chunk) // 2)
        if n:
            ramp = np.linspace(0.0, 1.0, n + 1, dtype=np.float32)[1:]
            if i > 0:
                chunk[:n] *= ramp
            if i < len(chunks) - 1:
                chunk[-n:] *= ramp[::-1]
        if i > 0:
            parts.append(pause)
        parts.append(chunk)
    return np.concatenate(parts)
