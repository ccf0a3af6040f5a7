"""Checks of what enters the voice library: ids, client text, uploaded clips, decoded files."""
from __future__ import annotations

import logging
import re
import unicodedata
from typing import Any

import numpy as np

from chatterbox_worker.contract.errors import JobError, VoiceLibraryError, VoiceNotFoundError

logger = logging.getLogger(__name__)

VOICE_ID_PATTERN = re.compile(r"^[0-9a-f]{8}$")
MIN_SAMPLE_RATE = 1000
MAX_SAMPLE_RATE = 384000
# Client input quoted back in an error message is cut to this length.
MAX_QUOTED_INPUT = 60


def quote(value: Any) -> str:
    """``value`` as it may be quoted back to a client: repr'd and cut short."""
    text = value if isinstance(value, str) else str(value)
    if len(text) > MAX_QUOTED_INPUT:
        text = text[:MAX_QUOTED_INPUT] + "..."
    return repr(text)


def normalize_voice_id(voice_id: Any) -> str:
    """Lowercase and check a voice id; raise VoiceNotFoundError if it is malformed."""
    if not isinstance(voice_id, str):
        raise VoiceNotFoundError("voice_id", f"a voice id must be a string, got {type(voice_id).__name__}")
    normalized = voice_id.strip().lower()
    if not VOICE_ID_PATTERN.match(normalized):
        raise VoiceNotFoundError(
            "voice_id", f"invalid voice id {quote(voice_id)}: expected 8 hexadecimal characters"
        )
    return normalized


def validate_text(field: str, value: Any, max_length: int, *, allow_empty: bool) -> str:
    """A stripped single-line client string of at most ``max_length`` characters, or JobError."""
    if not isinstance(value, str):
        raise JobError(field, f"must be a string, got {type(value).__name__}")
    text = value.strip()
    if not text and not allow_empty:
        raise JobError(field, "must not be empty")
    if len(text) > max_length:
        raise JobError(field, f"must be at most {max_length} characters, got {len(text)}")
    if any(unicodedata.category(ch) == "Cc" for ch in text):
        raise JobError(field, "must not contain control characters")
    return text


def to_voice_samples(audio: Any, what: str) -> np.ndarray:
    """Float32, C-contiguous, 1-D, finite and non-empty, or VoiceLibraryError."""
    if not isinstance(audio, np.ndarray):
        raise VoiceLibraryError("voice_id", f"{what} holds {type(audio).__name__}, not an audio array")
    if not np.issubdtype(audio.dtype, np.floating):
        # Integer PCM would need a scale the file does not state; voice files hold floats.
        raise VoiceLibraryError("voice_id", f"{what} holds a {audio.dtype} array, not float audio samples")
    if audio.ndim != 1:
        raise VoiceLibraryError("voice_id", f"{what} holds a {audio.ndim}-D array; expected 1-D audio")
    if audio.size == 0:
        raise VoiceLibraryError("voice_id", f"{what} holds empty audio")
    samples = np.ascontiguousarray(audio, dtype=np.float32)
    if not np.isfinite(samples).all():
        raise VoiceLibraryError("voice_id", f"{what} holds NaN or infinite samples")
    return samples


def check_sample_rate(value: Any, what: str) -> int:
    """A whole number of Hz within the plausible range, or VoiceLibraryError."""
    try:
        rate = int(value)
    except (TypeError, ValueError):
        raise VoiceLibraryError("voice_id", f"{what} has an invalid sample rate {quote(value)}") from None
    if rate != value or not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
        raise VoiceLibraryError("voice_id", f"{what} has an invalid sample rate {quote(value)}")
    return rate


def prepare_upload(samples: Any, sample_rate: Any) -> tuple[np.ndarray, int]:
    """Validate an uploaded clip and bring it to mono float32 within [-1, 1]."""
    audio = np.asarray(samples)
    if audio.ndim == 2:
        audio = audio.mean(axis=1)  # (frames, channels), as soundfile returns it
    if audio.ndim != 1 or audio.size == 0:
        raise JobError("audio", "voice audio must be a non-empty mono clip")
    if not (np.issubdtype(audio.dtype, np.floating) or np.issubdtype(audio.dtype, np.integer)):
        raise JobError("audio", f"voice audio must be numeric samples, got {audio.dtype}")
    if np.issubdtype(audio.dtype, np.integer):
        # Integer PCM is full scale at its type's limit (32768 for int16).
        audio = audio.astype(np.float64) / (np.iinfo(audio.dtype).max + 1)
    audio = np.asarray(audio, dtype=np.float32)
    if not np.isfinite(audio).all():
        raise JobError("audio", "voice audio contains NaN or infinite samples")
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, np.integer)):
        raise JobError("audio", f"sample rate must be an integer, got {quote(sample_rate)}")
    rate = int(sample_rate)
    if not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
        raise JobError("audio", f"sample rate {rate} is outside {MIN_SAMPLE_RATE}-{MAX_SAMPLE_RATE} Hz")
    peak = float(np.max(np.abs(audio)))
    if peak > 1.0:
        # PCM cannot hold samples past full scale and libsndfile would clip them;
        # scaling keeps the waveform's shape, which is what voice cloning listens to.
        logger.info("Scaling voice audio with peak %.3f down to full scale", peak)
        audio = audio / peak
    return np.ascontiguousarray(audio), rate
