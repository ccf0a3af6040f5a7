"""The voice library: named reference clips that jobs pick by id or by name.

A library is a directory holding ``voice_catalog.json`` (an object keyed by an 8-hex
voice id), an optional ``name_mapping.json`` ({"Amy": "de16e46c", ...}) and one audio
file per voice, named in the catalog by ``embedding_file`` relative to that directory.

Two layouts are read unchanged:

* legacy deployments: the catalog inside a folder with ``embeddings/<id>.pkl.gz``
  files (gzip pickles of ``{"audio": float32 array, "sample_rate": 24000, ...}``);
* this repository: a top-level catalog with ``voice_embeddings/<id>.flac`` files.

New voices are always written as FLAC (PCM_24), so nothing this worker writes ever
needs pickle to read. Legacy pickles are read through a restricted unpickler that can
build numpy arrays and nothing else: a voice library may sit on a shared volume that
other people can write to, and plain ``pickle.load`` would run whatever it is told.

Decoded arrays are kept in an LRU cache bounded by voice count and by bytes.
"""
from __future__ import annotations

import copy
import difflib
import fcntl
import gzip
import io
import json
import logging
import os
import pickle
import re
import secrets
import threading
import unicodedata
from collections import Counter, OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Any, Iterator

import numpy as np
import soundfile as sf

from atomic_files import fsync_dir, write_partial
from audio_io import SOUNDFILE_SUFFIXES, audio_fingerprint
from job_errors import JobError, VoiceLibraryError, VoiceNotFoundError

try:  # numpy 1.x; numpy 2 moved the module to numpy._core
    from numpy.core.multiarray import _reconstruct as _np_reconstruct
except ImportError:  # pragma: no cover - numpy 2
    from numpy._core.multiarray import _reconstruct as _np_reconstruct

logger = logging.getLogger(__name__)

VOICE_ID_PATTERN = re.compile(r"^[0-9a-f]{8}$")

LIBRARY_DIR_ENV = "VOICE_LIBRARY_DIR"
CACHE_MAX_VOICES_ENV = "VOICE_CACHE_MAX_VOICES"
CACHE_MAX_MB_ENV = "VOICE_CACHE_MAX_MB"
DEFAULT_CACHE_MAX_VOICES = 32
DEFAULT_CACHE_MAX_MB = 512
BYTES_PER_MB = 1024 * 1024

CATALOG_FILENAME = "voice_catalog.json"
NAME_MAPPING_FILENAME = "name_mapping.json"
LOCK_FILENAME = ".voice_library.lock"
DEFAULT_VOICE_SUBDIR = "voice_embeddings"

# Legacy clips are 24 kHz; a payload or catalog entry without a rate is taken as that.
LEGACY_SAMPLE_RATE = 24000
MIN_SAMPLE_RATE = 1000
MAX_SAMPLE_RATE = 384000

# A legacy pickle is ~2 MB compressed and ~2.3 MB decompressed; anything near this cap
# is not a voice clip but a gzip bomb or the wrong file.
MAX_DECOMPRESSED_BYTES = 256 * BYTES_PER_MB

NEW_VOICE_TYPE = "flac_audio"
NEW_VOICE_FORMAT = "FLAC"
# 24-bit PCM stores 16-bit sources exactly and keeps float sources to within 2**-23.
NEW_VOICE_SUBTYPE = "PCM_24"
NEW_VOICE_SUFFIX = ".flac"

MAX_NAME_LENGTH = 100
MAX_GENDER_LENGTH = 32
MAX_DESCRIPTION_LENGTH = 1000
MAX_ORIGINAL_FILE_LENGTH = 255
# Client input quoted back in an error message is cut to this length.
MAX_QUOTED_INPUT = 60
CLOSE_MATCH_COUNT = 3
CLOSE_MATCH_CUTOFF = 0.6

PICKLE_SUFFIXES = (".pkl.gz", ".pkl")
NPZ_SUFFIX = ".npz"

# The only globals a legacy voice pickle refers to. Both spellings of the array
# reconstructor map to the same function so pickles written by numpy 2 load too.
_ALLOWED_PICKLE_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _np_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _np_reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


@dataclass(frozen=True)
class VoiceAudio:
    """One voice's reference clip, decoded. ``samples`` is read-only and shared."""

    voice_id: str
    speaker_name: str
    samples: np.ndarray
    sample_rate: int
    content_hash: str

    @property
    def duration(self) -> float:
        return len(self.samples) / self.sample_rate


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


@dataclass
class _CatalogState:
    entries: dict[str, dict[str, Any]]
    mapping: dict[str, str]
    # (mtime_ns, size, inode) of catalog and mapping when read; None = file absent.
    catalog_key: tuple[int, int, int] | None
    mapping_key: tuple[int, int, int] | None
    error: VoiceLibraryError | None = None


def _quote(value: Any) -> str:
    text = value if isinstance(value, str) else str(value)
    if len(text) > MAX_QUOTED_INPUT:
        text = text[:MAX_QUOTED_INPUT] + "..."
    return repr(text)


def _stat_key(path: Path) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        logger.warning("%s=%r is not an integer; using %d", name, raw, default)
        return default
    if value < 0:
        logger.warning("%s=%r is negative; using %d", name, raw, default)
        return default
    return value


def _env_float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        logger.warning("%s=%r is not a number; using %s", name, raw, default)
        return default
    if not np.isfinite(value) or value < 0:
        logger.warning("%s=%r is out of range; using %s", name, raw, default)
        return default
    return value


def normalize_voice_id(voice_id: Any) -> str:
    """Lowercase and check a voice id; raise VoiceNotFoundError if it is malformed."""
    if not isinstance(voice_id, str):
        raise VoiceNotFoundError("voice_id", f"a voice id must be a string, got {type(voice_id).__name__}")
    normalized = voice_id.strip().lower()
    if not VOICE_ID_PATTERN.match(normalized):
        raise VoiceNotFoundError(
            "voice_id", f"invalid voice id {_quote(voice_id)}: expected 8 hexadecimal characters"
        )
    return normalized


def _validate_text(field: str, value: Any, max_length: int, *, allow_empty: bool) -> str:
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


def _to_voice_samples(audio: Any, what: str) -> np.ndarray:
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


def _check_sample_rate(value: Any, what: str) -> int:
    try:
        rate = int(value)
    except (TypeError, ValueError):
        raise VoiceLibraryError("voice_id", f"{what} has an invalid sample rate {_quote(value)}") from None
    if rate != value or not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
        raise VoiceLibraryError("voice_id", f"{what} has an invalid sample rate {_quote(value)}")
    return rate


def _read_pickle_voice(path: Path, rel: str, default_rate: int) -> tuple[np.ndarray, int]:
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rb") as fh:
        # One byte past the cap tells an oversized payload from one that just fits.
        data = fh.read(MAX_DECOMPRESSED_BYTES + 1)
    if len(data) > MAX_DECOMPRESSED_BYTES:
        raise VoiceLibraryError(
            "voice_id", f"refusing to load {rel}: it is larger than {MAX_DECOMPRESSED_BYTES // BYTES_PER_MB} MB"
        )
    try:
        payload = _VoiceFileUnpickler(io.BytesIO(data)).load()
    except _RefusedGlobal as refused:
        raise VoiceLibraryError(
            "voice_id",
            f"refusing to load {rel}: it references {refused.reference}, which a voice file never needs",
        ) from None
    if not isinstance(payload, dict) or "audio" not in payload:
        raise VoiceLibraryError("voice_id", f"{rel} is not a voice file: expected a dict with an 'audio' array")
    rate = _check_sample_rate(payload.get("sample_rate", default_rate), rel)
    return _to_voice_samples(payload["audio"], rel), rate


def _read_soundfile_voice(path: Path, rel: str) -> tuple[np.ndarray, int]:
    data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    # Reference clips are mono; a stereo upload is mixed down rather than refused.
    return _to_voice_samples(data.mean(axis=1), rel), _check_sample_rate(rate, rel)


def _read_npz_voice(path: Path, rel: str, default_rate: int) -> tuple[np.ndarray, int]:
    with np.load(path, allow_pickle=False) as archive:
        if "audio" not in archive.files:
            raise VoiceLibraryError("voice_id", f"{rel} has no 'audio' array")
        audio = archive["audio"]
        rate_value = archive["sample_rate"].item() if "sample_rate" in archive.files else default_rate
    return _to_voice_samples(audio, rel), _check_sample_rate(rate_value, rel)


def read_voice_file(path: Path, rel: str, default_rate: int = LEGACY_SAMPLE_RATE) -> tuple[np.ndarray, int]:
    """Decode one voice file by its suffix. ``rel`` names it in error messages."""
    name = path.name.lower()
    if name.endswith(PICKLE_SUFFIXES):
        return _read_pickle_voice(path, rel, default_rate)
    if name.endswith(SOUNDFILE_SUFFIXES):
        return _read_soundfile_voice(path, rel)
    if name.endswith(NPZ_SUFFIX):
        return _read_npz_voice(path, rel, default_rate)
    raise VoiceLibraryError("voice_id", f"{rel} has an unsupported file type")


def _json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


class OptimizedVoiceLibrary:
    """Voice catalog lookups plus an LRU cache of decoded reference clips."""

    def __init__(
        self,
        library_dir: str | Path | None = None,
        max_cache_voices: int | None = None,
        max_cache_bytes: int | None = None,
    ):
        if library_dir is None:
            library_dir = os.environ.get(LIBRARY_DIR_ENV) or Path(__file__).resolve().parent
        self.library_dir = Path(library_dir).expanduser().resolve()
        self.catalog_path = self.library_dir / CATALOG_FILENAME
        self.mapping_path = self.library_dir / NAME_MAPPING_FILENAME
        self.lock_path = self.library_dir / LOCK_FILENAME

        if max_cache_voices is None:
            max_cache_voices = _env_int(CACHE_MAX_VOICES_ENV, DEFAULT_CACHE_MAX_VOICES)
        if max_cache_bytes is None:
            max_cache_bytes = int(_env_float(CACHE_MAX_MB_ENV, DEFAULT_CACHE_MAX_MB) * BYTES_PER_MB)
        self.max_cache_voices = max(0, int(max_cache_voices))
        self.max_cache_bytes = max(0, int(max_cache_bytes))

        self._lock = threading.Lock()  # catalog state, cache and counters
        self._save_lock = threading.Lock()  # one save at a time in this process
        self._cache: OrderedDict[str, VoiceAudio] = OrderedDict()
        self._cache_bytes = 0
        self._hits = 0
        self._misses = 0
        self._evictions = 0
        # Bumped whenever a voice's file may have changed, so a load that started
        # before the change does not put the old audio into the cache.
        self._generations: dict[str, int] = {}
        self._state: _CatalogState | None = None
        self._missing_warned = False

    # ------------------------------------------------------------------ catalog

    def _read_state(self) -> _CatalogState:
        catalog_key = _stat_key(self.catalog_path)
        mapping_key = _stat_key(self.mapping_path)
        if catalog_key is None:
            if not self._missing_warned:
                logger.warning("No voice catalog at %s; the voice library is empty", self.catalog_path)
                self._missing_warned = True
            return _CatalogState({}, {}, None, mapping_key)
        self._missing_warned = False
        try:
            raw = json.loads(self.catalog_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            error = VoiceLibraryError("voice_library", f"cannot read the voice catalog {self.catalog_path}: {exc}")
            logger.error("%s", error)
            return _CatalogState({}, {}, catalog_key, mapping_key, error)
        if not isinstance(raw, dict):
            error = VoiceLibraryError(
                "voice_library", f"the voice catalog {self.catalog_path} is not a JSON object keyed by voice id"
            )
            logger.error("%s", error)
            return _CatalogState({}, {}, catalog_key, mapping_key, error)

        entries: dict[str, dict[str, Any]] = {}
        for key, entry in raw.items():
            voice_id = str(key).lower()
            if not VOICE_ID_PATTERN.match(voice_id) or not isinstance(entry, dict):
                # One bad entry must not take the other voices down with it.
                logger.warning("Skipping malformed catalog entry %r in %s", key, self.catalog_path)
                continue
            entries[voice_id] = entry
        return _CatalogState(entries, self._read_mapping(), catalog_key, mapping_key)

    def _read_mapping(self) -> dict[str, str]:
        try:
            raw = json.loads(self.mapping_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            # The mapping only speeds up name lookups; speaker names still work without it.
            logger.warning("Ignoring unreadable %s: %s", self.mapping_path, exc)
            return {}
        if not isinstance(raw, dict):
            logger.warning("Ignoring %s: not a JSON object", self.mapping_path)
            return {}
        return {str(k): str(v).lower() for k, v in raw.items() if isinstance(v, str)}

    def _install_state(self, new: _CatalogState) -> None:
        """Swap in a new catalog; caller holds self._lock."""
        old = self._state
        if old is not None:
            # Another worker may have replaced a voice in place: same id, new file.
            for voice_id, entry in old.entries.items():
                if new.entries.get(voice_id) != entry:
                    self._invalidate_locked(voice_id)
        self._state = new

    def _catalog(self) -> _CatalogState:
        """The current catalog, re-read if either file changed on disk (one stat each)."""
        with self._lock:
            state = self._state
            if (
                state is None
                or state.catalog_key != _stat_key(self.catalog_path)
                or state.mapping_key != _stat_key(self.mapping_path)
            ):
                state = self._read_state()
                self._install_state(state)
        if state.error is not None:
            raise state.error
        return state

    # -------------------------------------------------------------------- cache

    def _invalidate_locked(self, voice_id: str) -> None:
        self._generations[voice_id] = self._generations.get(voice_id, 0) + 1
        cached = self._cache.pop(voice_id, None)
        if cached is not None:
            self._cache_bytes -= cached.samples.nbytes

    def _cache_put_locked(self, voice: VoiceAudio) -> None:
        size = voice.samples.nbytes
        if self.max_cache_voices == 0 or size > self.max_cache_bytes:
            return
        old = self._cache.pop(voice.voice_id, None)
        if old is not None:
            self._cache_bytes -= old.samples.nbytes
        self._cache[voice.voice_id] = voice
        self._cache_bytes += size
        while len(self._cache) > self.max_cache_voices or self._cache_bytes > self.max_cache_bytes:
            _, evicted = self._cache.popitem(last=False)
            self._cache_bytes -= evicted.samples.nbytes
            self._evictions += 1

    def _entry_path(self, voice_id: str, entry: dict[str, Any]) -> tuple[Path, str]:
        rel = entry.get("embedding_file")
        if not isinstance(rel, str) or not rel.strip():
            raise VoiceLibraryError("voice_id", f"voice '{voice_id}' has no embedding_file in the catalog")
        path = (self.library_dir / rel).resolve()
        if not path.is_relative_to(self.library_dir):
            raise VoiceLibraryError(
                "voice_id",
                f"voice '{voice_id}': its embedding_file points outside the voice library ({_quote(rel)})",
            )
        return path, rel

    def _load_voice(self, voice_id: str, entry: dict[str, Any]) -> VoiceAudio:
        name = str(entry.get("speaker_name", voice_id))
        path, rel = self._entry_path(voice_id, entry)
        if not path.is_file():
            raise VoiceLibraryError("voice_id", f"voice '{voice_id}' ({name}) is listed but its file {rel} is missing")
        try:
            default_rate = _check_sample_rate(entry.get("sample_rate", LEGACY_SAMPLE_RATE), rel)
        except VoiceLibraryError:
            default_rate = LEGACY_SAMPLE_RATE
        try:
            samples, rate = read_voice_file(path, rel, default_rate)
        except VoiceLibraryError as exc:
            if exc.message.startswith("refusing to load"):
                raise
            raise VoiceLibraryError("voice_id", f"voice '{voice_id}' ({name}): {exc.message}") from None
        except Exception as exc:  # corrupt gzip, truncated pickle, libsndfile errors...
            raise VoiceLibraryError(
                "voice_id", f"voice '{voice_id}' ({name}) has a corrupt file {rel}: {type(exc).__name__}: {exc}"
            ) from None
        samples.setflags(write=False)
        return VoiceAudio(voice_id, name, samples, rate, audio_fingerprint(samples, rate))

    # ------------------------------------------------------------------ lookups

    def get_voice_audio_direct(self, voice_id: str) -> VoiceAudio:
        """The decoded clip of a voice, from the cache or from disk."""
        voice_id = normalize_voice_id(voice_id)
        state = self._catalog()
        with self._lock:
            cached = self._cache.get(voice_id)
            if cached is not None:
                self._cache.move_to_end(voice_id)
                self._hits += 1
                return cached
            self._misses += 1
            generation = self._generations.get(voice_id, 0)
        entry = state.entries.get(voice_id)
        if entry is None:
            raise VoiceNotFoundError("voice_id", f"voice '{voice_id}' not found in the voice library")
        # Decoding takes milliseconds to seconds; other lookups must not wait for it.
        voice = self._load_voice(voice_id, entry)
        with self._lock:
            if self._generations.get(voice_id, 0) == generation:
                self._cache_put_locked(voice)
        return voice

    def get_voice_audio_by_name_direct(self, name: str) -> VoiceAudio:
        return self.get_voice_audio_direct(self.resolve_voice_id(name))

    def resolve_voice_id(self, name: str) -> str:
        """Voice id for a name: mapping (exact, then any case), speaker name, then unique partial."""
        if not isinstance(name, str):
            raise VoiceNotFoundError("voice_name", f"a voice name must be a string, got {type(name).__name__}")
        query = name.strip()
        if not query:
            raise VoiceNotFoundError("voice_name", "a voice name must not be empty")
        state = self._catalog()
        folded = query.casefold()

        voice_id = state.mapping.get(query)
        if voice_id in state.entries:
            return voice_id
        for key, voice_id in state.mapping.items():
            # A mapping entry for a voice that is gone falls through to the catalog.
            if key.casefold() == folded and voice_id in state.entries:
                return voice_id

        names = {vid: str(entry.get("speaker_name", "")) for vid, entry in state.entries.items()}
        exact = [vid for vid, speaker in names.items() if speaker.casefold() == folded]
        if len(exact) == 1:
            return exact[0]
        if len(exact) > 1:
            raise self._ambiguous(query, exact, names)
        partial = [vid for vid, speaker in names.items() if folded in speaker.casefold()]
        if len(partial) == 1:
            return partial[0]
        if len(partial) > 1:
            raise self._ambiguous(query, partial, names)

        candidates = {speaker.casefold(): speaker for speaker in names.values() if speaker}
        for key in state.mapping:
            candidates.setdefault(key.casefold(), key)
        close = [candidates[c] for c in difflib.get_close_matches(folded, list(candidates), CLOSE_MATCH_COUNT, CLOSE_MATCH_CUTOFF)]
        hint = f"close matches: {', '.join(close)}" if close else "no close matches"
        raise VoiceNotFoundError("voice_name", f"voice {_quote(query)} not found; {hint}")

    @staticmethod
    def _ambiguous(query: str, voice_ids: list[str], names: dict[str, str]) -> VoiceNotFoundError:
        counts = Counter(names[vid].casefold() for vid in voice_ids)
        # Two voices with the same name can only be told apart by id.
        labels = sorted(
            f"{names[vid]} ({vid})" if counts[names[vid].casefold()] > 1 else names[vid] for vid in voice_ids
        )
        return VoiceNotFoundError("voice_name", f"voice name {_quote(query)} is ambiguous: matches {', '.join(labels)}")

    def get_voice_info(self, voice_id: str) -> dict[str, Any]:
        voice_id = normalize_voice_id(voice_id)
        entry = self._catalog().entries.get(voice_id)
        if entry is None:
            raise VoiceNotFoundError("voice_id", f"voice '{voice_id}' not found in the voice library")
        return copy.deepcopy(entry)

    @staticmethod
    def _summary(voice_id: str, entry: dict[str, Any]) -> dict[str, Any]:
        return {
            "voice_id": voice_id,
            "speaker_name": entry.get("speaker_name", ""),
            "gender": entry.get("gender", "unknown"),
            "duration": entry.get("duration"),
            "original_file": entry.get("original_file"),
            "type": entry.get("type"),
        }

    def list_voices(self) -> list[dict[str, Any]]:
        return self.search_voices()

    def search_voices(self, query: str | None = None, gender: str | None = None) -> list[dict[str, Any]]:
        """Voices whose name, id or description contains ``query``, optionally of one gender."""
        state = self._catalog()
        needle = query.strip().casefold() if query else ""
        wanted_gender = gender.strip().casefold() if gender else None
        found = []
        for voice_id, entry in state.entries.items():
            if wanted_gender is not None and str(entry.get("gender", "")).casefold() != wanted_gender:
                continue
            if needle:
                haystack = (str(entry.get("speaker_name", "")), voice_id, str(entry.get("description", "")))
                if not any(needle in text.casefold() for text in haystack):
                    continue
            found.append(self._summary(voice_id, entry))
        found.sort(key=lambda v: (str(v["speaker_name"]).casefold(), v["voice_id"]))
        return found

    def get_stats(self) -> dict[str, Any]:
        state = self._catalog()
        genders = Counter(str(entry.get("gender", "unknown")) for entry in state.entries.values())
        durations = [
            float(d)
            for d in (entry.get("duration") for entry in state.entries.values())
            if isinstance(d, (int, float)) and not isinstance(d, bool) and np.isfinite(d)
        ]
        with self._lock:
            return {
                "total_voices": len(state.entries),
                "gender_distribution": dict(genders),
                "average_duration": float(np.mean(durations)) if durations else 0.0,
                "cache_size": len(self._cache),
                "max_cache_size": self.max_cache_voices,
                "cache_bytes": self._cache_bytes,
                "max_cache_bytes": self.max_cache_bytes,
                "hits": self._hits,
                "misses": self._misses,
                "evictions": self._evictions,
                "library_dir": str(self.library_dir),
            }

    # ------------------------------------------------------------------- saving

    @contextmanager
    def _save_guard(self) -> Iterator[None]:
        """One writer at a time: a thread lock here, a file lock across workers."""
        with self._save_lock:
            self.library_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                yield
            finally:
                os.close(fd)  # closing releases the flock

    def _voice_subdir(self, entries: dict[str, dict[str, Any]]) -> str:
        """The folder most existing voices live in, so new files sit beside them."""
        parents: Counter[str] = Counter()
        for entry in entries.values():
            rel = entry.get("embedding_file")
            if not isinstance(rel, str) or not rel:
                continue
            parent = PurePosixPath(rel.replace("\\", "/")).parent
            if parent.is_absolute() or ".." in parent.parts:
                continue
            parents[str(parent)] += 1
        if not parents:
            return DEFAULT_VOICE_SUBDIR
        return parents.most_common(1)[0][0]

    def save_voice(
        self,
        name: str,
        samples: np.ndarray,
        sample_rate: int,
        *,
        description: str = "",
        gender: str = "unknown",
        original_file: str = "upload",
        voice_id: str | None = None,
    ) -> dict[str, Any]:
        """Store a voice as FLAC and list it in the catalog; returns its catalog entry.

        A name that is already in the library (any case) replaces that voice and keeps
        its id. ``voice_id`` fixes the id of a new voice (used for the demo library).
        """
        name = _validate_text("voice_name", name, MAX_NAME_LENGTH, allow_empty=False)
        description = _validate_text("voice_description", description, MAX_DESCRIPTION_LENGTH, allow_empty=True)
        gender = _validate_text("gender", gender, MAX_GENDER_LENGTH, allow_empty=True) or "unknown"
        original_file = _validate_text("original_file", original_file, MAX_ORIGINAL_FILE_LENGTH, allow_empty=True)
        if voice_id is not None:
            try:
                voice_id = normalize_voice_id(voice_id)
            except VoiceNotFoundError as exc:
                raise JobError("voice_id", exc.message) from None
        audio, rate = _prepare_upload(samples, sample_rate)

        try:
            with self._save_guard():
                return self._save_locked(name, audio, rate, description, gender, original_file, voice_id)
        except OSError as exc:
            raise VoiceLibraryError(
                "save_to_library",
                f"cannot write to the voice library at {self.library_dir}: {exc.strerror or exc}. "
                f"Set {LIBRARY_DIR_ENV} to a writable directory (for example a mounted volume).",
            ) from None

    def _save_locked(
        self,
        name: str,
        audio: np.ndarray,
        rate: int,
        description: str,
        gender: str,
        original_file: str,
        requested_id: str | None,
    ) -> dict[str, Any]:
        # Re-read from disk under the file lock: another worker may have just saved.
        state = self._read_state()
        if state.error is not None:
            raise state.error
        entries = state.entries
        folded = name.casefold()
        existing = [vid for vid, e in entries.items() if str(e.get("speaker_name", "")).casefold() == folded]

        if existing:
            voice_id = existing[0]
            if requested_id is not None and requested_id != voice_id:
                raise JobError("voice_id", f"the name {_quote(name)} already belongs to voice '{voice_id}'")
        elif requested_id is not None:
            if requested_id in entries:
                other = entries[requested_id].get("speaker_name")
                raise JobError("voice_id", f"voice id '{requested_id}' already belongs to {_quote(other)}")
            voice_id = requested_id
        else:
            voice_id = secrets.token_hex(4)
            while voice_id in entries:
                voice_id = secrets.token_hex(4)

        file_name = f"{voice_id}{NEW_VOICE_SUFFIX}"
        rel = str(PurePosixPath(self._voice_subdir(entries)) / file_name)
        path = (self.library_dir / rel).resolve()
        if not path.is_relative_to(self.library_dir):  # e.g. a symlinked folder: never write outside
            rel = f"{DEFAULT_VOICE_SUBDIR}/{file_name}"
            path = (self.library_dir / rel).resolve()
            if not path.is_relative_to(self.library_dir):
                raise VoiceLibraryError(
                    "save_to_library", f"{self.library_dir / DEFAULT_VOICE_SUBDIR} points outside the voice library"
                )
        path.parent.mkdir(parents=True, exist_ok=True)

        entry = {
            "voice_id": voice_id,
            "speaker_name": name,
            "gender": gender,
            "original_file": original_file,
            "embedding_file": rel,
            "duration": round(len(audio) / rate, 3),
            "sample_rate": rate,
            "created_at": datetime.now(timezone.utc).isoformat(),
            "type": NEW_VOICE_TYPE,
            "description": description,
        }
        new_entries = dict(entries)
        new_entries[voice_id] = entry
        mapping = {k: v for k, v in state.mapping.items() if k.casefold() != folded}
        mapping[name] = voice_id

        # Encoded in memory so that a full disk surfaces as a plain OSError from write(),
        # not as a libsndfile error from inside the encoder.
        encoded = io.BytesIO()
        sf.write(encoded, audio, rate, format=NEW_VOICE_FORMAT, subtype=NEW_VOICE_SUBTYPE)
        # Every file is complete on disk before any is swapped in, so a crash or a full
        # disk leaves the old library intact.
        partials: list[Path] = []
        existed_before = path.exists()
        replaced_audio = False
        try:
            for directory, suffix, data in (
                (path.parent, NEW_VOICE_SUFFIX, encoded.getvalue()),
                (self.library_dir, ".json", _json_bytes(new_entries)),
                (self.library_dir, ".json", _json_bytes(mapping)),
            ):
                partials.append(write_partial(directory, suffix, data))
            audio_partial, catalog_partial, mapping_partial = partials
            os.replace(audio_partial, path)
            replaced_audio = True
            os.replace(catalog_partial, self.catalog_path)
        except BaseException:
            for partial in partials:
                partial.unlink(missing_ok=True)
            if replaced_audio and not existed_before:
                path.unlink(missing_ok=True)  # the catalog never listed it
            raise
        try:
            os.replace(mapping_partial, self.mapping_path)
        except OSError as exc:
            # The voice is saved and found by speaker name; only the index is stale.
            mapping_partial.unlink(missing_ok=True)
            logger.warning("Saved voice %s but could not update %s: %s", voice_id, self.mapping_path, exc)
        fsync_dir(path.parent)
        fsync_dir(self.library_dir)

        with self._lock:
            self._install_state(_CatalogState(
                new_entries, self._read_mapping(), _stat_key(self.catalog_path), _stat_key(self.mapping_path)
            ))
            # Also covers a re-save whose entry compares equal (same second, same fields).
            self._invalidate_locked(voice_id)
        logger.info("Saved voice %s (%s) to %s", voice_id, name, rel)
        return copy.deepcopy(entry)


def _prepare_upload(samples: Any, sample_rate: Any) -> tuple[np.ndarray, int]:
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
        raise JobError("audio", f"sample rate must be an integer, got {_quote(sample_rate)}")
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


def initialize_optimized_voice_library(library_dir: str | Path | None = None) -> OptimizedVoiceLibrary:
    """Build a library and log what it holds; a broken catalog is logged, not raised."""
    library = OptimizedVoiceLibrary(library_dir)
    try:
        stats = library.get_stats()
    except VoiceLibraryError as exc:
        logger.error("Voice library at %s is unusable until fixed: %s", library.library_dir, exc)
        return library
    logger.info(
        "Voice library: %d voices in %s (cache: %d voices / %d MB)",
        stats["total_voices"],
        stats["library_dir"],
        stats["max_cache_size"],
        stats["max_cache_bytes"] // BYTES_PER_MB,
    )
    return library


_singleton: OptimizedVoiceLibrary | None = None
_singleton_lock = threading.Lock()


def get_voice_library() -> OptimizedVoiceLibrary:
    """The process-wide library, created on first use."""
    global _singleton
    if _singleton is None:
        with _singleton_lock:
            if _singleton is None:
                _singleton = initialize_optimized_voice_library()
    return _singleton
