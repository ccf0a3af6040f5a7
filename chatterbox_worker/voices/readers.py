"""Voice file readers: each decodes one format into mono float32 samples and a sample rate.

Nothing this worker writes needs pickle (new voices are FLAC), but legacy deployments hold
gzip pickles. A voice library may sit on a shared volume that other people can write to,
and plain ``pickle.load`` would run whatever a file tells it to, so pickles are read by an
unpickler that can build numpy arrays and nothing else.
"""
from __future__ import annotations

import gzip
import io
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from chatterbox_worker.audio.codec import SOUNDFILE_SUFFIXES
from chatterbox_worker.contract.errors import VoiceLibraryError
from chatterbox_worker.contract.limits import MB, MODEL_SAMPLE_RATE
from chatterbox_worker.voices.validation import check_sample_rate, to_voice_samples

try:  # numpy 1.x; numpy 2 moved the module to numpy._core
    from numpy.core.multiarray import _reconstruct as _np_reconstruct
except ImportError:  # pragma: no cover - numpy 2
    from numpy._core.multiarray import _reconstruct as _np_reconstruct

# Legacy clips are at the model's rate; a payload or catalog entry without a rate is taken as that.
LEGACY_SAMPLE_RATE = MODEL_SAMPLE_RATE
# A legacy pickle is ~2 MB compressed and ~2.3 MB decompressed; anything near this cap
# is not a voice clip but a gzip bomb or the wrong file.
MAX_DECOMPRESSED_BYTES = 256 * MB

PICKLE_SUFFIXES = (".pkl.gz", ".pkl")
NPZ_SUFFIX = ".npz"
# Messages of refused files start with this (the error's type, not this text, marks a refusal).
REFUSAL_PREFIX = "refusing to load"

# The only globals a legacy voice pickle refers to. Both spellings of the array
# reconstructor map to the same function so pickles written by numpy 2 load too.
_ALLOWED_PICKLE_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _np_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _np_reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


class RefusedVoiceFileError(VoiceLibraryError):
    """A voice file refused for what it holds (oversized, or asking for code): its message is
    complete as raised, so callers pass it on unchanged instead of wrapping it."""


class _RefusedGlobal(Exception):
    def __init__(self, reference: str):
        super().__init__(reference)
        self.reference = reference


class _VoiceFileUnpickler(pickle.Unpickler):
    """Builds numpy arrays and refuses every other global a pickle asks for."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED_PICKLE_GLOBALS[(module, name)]
        except KeyError:
            raise _RefusedGlobal(f"{module}.{name}") from None


def read_pickle_voice(path: Path, rel: str, default_rate: int = LEGACY_SAMPLE_RATE) -> tuple[np.ndarray, int]:
    """A legacy ``{"audio": array, "sample_rate": int, ...}`` pickle, gzipped or not."""
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rb") as fh:
        # One byte past the cap tells an oversized payload from one that just fits.
        data = fh.read(MAX_DECOMPRESSED_BYTES + 1)
    if len(data) > MAX_DECOMPRESSED_BYTES:
        raise RefusedVoiceFileError(
            "voice_id", f"{REFUSAL_PREFIX} {rel}: it is larger than {MAX_DECOMPRESSED_BYTES // MB} MB"
        )
    try:
        payload = _VoiceFileUnpickler(io.BytesIO(data)).load()
    except _RefusedGlobal as refused:
        raise RefusedVoiceFileError(
            "voice_id",
            f"{REFUSAL_PREFIX} {rel}: it references {refused.reference}, which a voice file never needs",
        ) from None
    if not isinstance(payload, dict) or "audio" not in payload:
        raise VoiceLibraryError("voice_id", f"{rel} is not a voice file: expected a dict with an 'audio' array")
    rate = check_sample_rate(payload.get("sample_rate", default_rate), rel)
    return to_voice_samples(payload["audio"], rel), rate


def read_soundfile_voice(path: Path, rel: str) -> tuple[np.ndarray, int]:
    """Any file libsndfile reads (FLAC, WAV, ...)."""
    data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    # Reference clips are mono; a stereo upload is mixed down rather than refused.
    return to_voice_samples(data.mean(axis=1), rel), check_sample_rate(rate, rel)


def read_npz_voice(path: Path, rel: str, default_rate: int = LEGACY_SAMPLE_RATE) -> tuple[np.ndarray, int]:
    """An ``.npz`` with an ``audio`` array and optionally ``sample_rate``; object arrays are refused."""
    with np.load(path, allow_pickle=False) as archive:
        if "audio" not in archive.files:
            raise VoiceLibraryError("voice_id", f"{rel} has no 'audio' array")
        audio = archive["audio"]
        rate_value = archive["sample_rate"].item() if "sample_rate" in archive.files else default_rate
    return to_voice_samples(audio, rel), check_sample_rate(rate_value, rel)


def read_voice_file(path: Path, rel: str, default_rate: int = LEGACY_SAMPLE_RATE) -> tuple[np.ndarray, int]:
    """Decode one voice file by its suffix. ``rel`` names it in error messages."""
    name = path.name.lower()
    if name.endswith(PICKLE_SUFFIXES):
        return read_pickle_voice(path, rel, default_rate)
    if name.endswith(SOUNDFILE_SUFFIXES):
        return read_soundfile_voice(path, rel)
    if name.endswith(NPZ_SUFFIX):
        return read_npz_voice(path, rel, default_rate)
    raise VoiceLibraryError("voice_id", f"{rel} has an unsupported file type")
