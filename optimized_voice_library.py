"""The voice library: named reference clips that jobs pick by id or by name.

Two layouts are read unchanged:

* legacy deployments: the catalog inside a folder with ``embeddings/<id>.pkl.gz``
  files (gzip pickles of ``{"audio": float32 array, "sample_rate": 24000, ...}``);
* this repository: a top-level catalog with ``voice_embeddings/<id>.flac`` files.

New voices are always written as FLAC (PCM_24), so nothing this worker writes ever
needs pickle to read. ``OptimizedVoiceLibrary`` is the face over the parts in
``chatterbox_worker/voices/``: the catalog files (``catalog_store``), the file readers (``readers``,
legacy pickles through a numpy-only unpickler), lookups (``lookup``) and the LRU of
decoded arrays (``array_cache``).
"""
from __future__ import annotations

import io
import logging
import secrets
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
from filelock import Timeout as LockTimeout

from chatterbox_worker.audio.codec import audio_fingerprint
from chatterbox_worker.contract.errors import JobError, ShippedVoiceError, VoiceLibraryError, VoiceNotFoundError
from chatterbox_worker.contract.limits import MAX_DESCRIPTION_CHARS, MAX_GENDER_CHARS, MAX_NAME_CHARS, MB
from chatterbox_worker.settings import Settings, get_settings, mb_to_bytes
from chatterbox_worker.voices import lookup
from chatterbox_worker.voices.array_cache import VoiceArrayCache
from chatterbox_worker.voices.catalog_store import (
    ORIGIN_FIELD,
    SAVED_ORIGIN,
    CatalogState,
    CatalogStore,
    is_deletable,
    public_entry,
)
from chatterbox_worker.voices.readers import LEGACY_SAMPLE_RATE, RefusedVoiceFileError, read_voice_file
from chatterbox_worker.voices.validation import (
    check_sample_rate,
    normalize_voice_id,
    prepare_upload,
    quote,
    validate_text,
)

logger = logging.getLogger(__name__)

LIBRARY_DIR_ENV = Settings.env_name("voice_library_dir")
CACHE_MAX_VOICES_ENV = Settings.env_name("voice_cache_max_voices")
CACHE_MAX_MB_ENV = Settings.env_name("voice_cache_max_mb")
DEFAULT_CACHE_MAX_VOICES = Settings.model_fields["voice_cache_max_voices"].default
DEFAULT_CACHE_MAX_MB = Settings.model_fields["voice_cache_max_mb"].default
# The shipped demo library sits beside this file.
SHIPPED_LIBRARY_DIR = Path(__file__).resolve().parent

NEW_VOICE_TYPE = "flac_audio"
NEW_VOICE_FORMAT = "FLAC"
# 24-bit PCM stores 16-bit sources exactly and keeps float sources to within 2**-23.
NEW_VOICE_SUBTYPE = "PCM_24"
NEW_VOICE_SUFFIX = ".flac"
MAX_ORIGINAL_FILE_CHARS = 255


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


def _new_voice_id(entries: dict[str, Any], name: str, requested: str | None) -> str:
    """The id a save writes to: the named voice's own, the requested one, or a fresh one."""
    folded = name.casefold()
    existing = [vid for vid, e in entries.items() if str(e.get("speaker_name", "")).casefold() == folded]
    if existing:
        if requested is not None and requested != existing[0]:
            raise JobError("voice_id", f"the name {quote(name)} already belongs to voice '{existing[0]}'")
        return existing[0]
    if requested is not None:
        if requested in entries:
            other = entries[requested].get("speaker_name")
            raise JobError("voice_id", f"voice id '{requested}' already belongs to {quote(other)}")
        return requested
    voice_id = secrets.token_hex(4)
    while voice_id in entries:
        voice_id = secrets.token_hex(4)
    return voice_id


def _new_entry(voice_id: str, name: str, gender: str, original_file: str, rel: str, duration: float,
               rate: int, description: str) -> dict[str, Any]:
    """A new voice's catalog entry: the legacy catalog's fields, plus its description."""
    return {
        "voice_id": voice_id,
        "speaker_name": name,
        "gender": gender,
        "original_file": original_file,
        "embedding_file": rel,
        "duration": round(duration, 3),
        "sample_rate": rate,
        "created_at": datetime.now(UTC).isoformat(),
        "type": NEW_VOICE_TYPE,
        "description": description,
    }


def _stays_deletable(previous: dict[str, Any] | None, deletable: bool) -> bool:
    """Whether a saved entry may be deleted later. A replaced voice keeps its status: a
    shipped voice saved over stays shipped, since deleting it would lose the voice."""
    return is_deletable(previous) if previous is not None else deletable


def _encode_flac(audio: np.ndarray, rate: int) -> bytes:
    # Encoded in memory so that a full disk surfaces as a plain OSError from write(),
    # not as a libsndfile error from inside the encoder.
    encoded = io.BytesIO()
    sf.write(encoded, audio, rate, format=NEW_VOICE_FORMAT, subtype=NEW_VOICE_SUBTYPE)
    return encoded.getvalue()


class OptimizedVoiceLibrary:
    """Voice catalog lookups plus an LRU cache of decoded reference clips."""

    def __init__(
        self,
        library_dir: str | Path | None = None,
        max_cache_voices: int | None = None,
        max_cache_bytes: int | None = None,
    ):
        if library_dir is None:
            library_dir = get_settings().voice_library_dir or SHIPPED_LIBRARY_DIR
        if max_cache_voices is None:
            max_cache_voices = get_settings().voice_cache_max_voices
        if max_cache_bytes is None:
            max_cache_bytes = mb_to_bytes(get_settings().voice_cache_max_mb)
        self.library_dir = Path(library_dir).expanduser().resolve()
        self._store = CatalogStore(self.library_dir)
        self.catalog_path = self._store.catalog_path
        self.mapping_path = self._store.mapping_path
        self.lock_path = self._store.lock_path
        self.max_cache_voices = max(0, int(max_cache_voices))
        self.max_cache_bytes = max(0, int(max_cache_bytes))

        self._lock = threading.Lock()  # catalog state, cache and counters
        self._cache = VoiceArrayCache(self.max_cache_voices, self.max_cache_bytes)
        self._hits = 0
        self._misses = 0
        # Bumped whenever a voice's file may have changed, so a load that started
        # before the change does not put the old audio into the cache.
        self._generations: dict[str, int] = {}

    # ------------------------------------------------------------------ catalog

    def _refresh_locked(self) -> CatalogState:
        state, changed = self._store.refresh()
        for voice_id in changed:
            self._invalidate_locked(voice_id)
        return state

    def _catalog(self) -> CatalogState:
        """The current catalog, re-read if either file changed on disk (one stat each)."""
        with self._lock:
            state = self._refresh_locked()
        if state.error is not None:
            raise state.error
        return state

    def _install(self, state: CatalogState, voice_id: str) -> None:
        with self._lock:
            for changed in self._store.install(state) | {voice_id}:
                # Also covers a re-save whose entry compares equal (same second, same fields).
                self._invalidate_locked(changed)

    # -------------------------------------------------------------------- cache

    def _invalidate_locked(self, voice_id: str) -> None:
        self._generations[voice_id] = self._generations.get(voice_id, 0) + 1
        self._cache.pop(voice_id, None)

    def _load_voice(self, voice_id: str, entry: dict[str, Any]) -> VoiceAudio:
        name = str(entry.get("speaker_name", voice_id))
        path, rel = self._store.entry_path(voice_id, entry)
        if not path.is_file():
            raise VoiceLibraryError("voice_id", f"voice '{voice_id}' ({name}) is listed but its file {rel} is missing")
        try:
            default_rate = check_sample_rate(entry.get("sample_rate", LEGACY_SAMPLE_RATE), rel)
        except VoiceLibraryError:
            default_rate = LEGACY_SAMPLE_RATE
        try:
            samples, rate = read_voice_file(path, rel, default_rate)
        except RefusedVoiceFileError:
            raise  # already names the file and why it was refused
        except VoiceLibraryError as exc:
            raise VoiceLibraryError("voice_id", f"voice '{voice_id}' ({name}): {exc.message}") from None
        except Exception as exc:  # corrupt gzip, truncated pickle, libsndfile errors...
            raise VoiceLibraryError(
                "voice_id", f"voice '{voice_id}' ({name}) has a corrupt file {rel}: {type(exc).__name__}: {exc}"
            ) from None
        samples.setflags(write=False)
        return VoiceAudio(voice_id, name, samples, rate, audio_fingerprint(samples, rate))

    # ------------------------------------------------------------------ lookups

    def get_voice_audio(self, voice_id: str) -> VoiceAudio:
        """The decoded clip of a voice, from the cache or from disk."""
        voice_id = normalize_voice_id(voice_id)
        with self._lock:
            # Catalog, cache and generation are read in one step: a change noticed later
            # bumps the generation and keeps this load out of the cache.
            state = self._refresh_locked()
            if state.error is None:
                cached = self._cache.get(voice_id)
                if cached is not None:
                    self._hits += 1
                    return cached
                self._misses += 1
            generation = self._generations.get(voice_id, 0)
        if state.error is not None:
            raise state.error
        entry = state.entries.get(voice_id)
        if entry is None:
            raise VoiceNotFoundError("voice_id", f"voice '{voice_id}' not found in the voice library")
        # Decoding takes milliseconds to seconds; other lookups must not wait for it.
        voice = self._load_voice(voice_id, entry)
        with self._lock:
            if self._generations.get(voice_id, 0) == generation:
                self._cache.put(voice_id, voice)
        return voice

    def get_voice_audio_by_name(self, name: str) -> VoiceAudio:
        return self.get_voice_audio(self.resolve_voice_id(name))

    def resolve_voice_id(self, name: str) -> str:
        """Voice id for a name: mapping (exact, then any case), speaker name, then unique partial."""
        query = lookup.name_query(name)  # a bad name is refused before the catalog is read
        return lookup.resolve_name(self._catalog(), query)

    def get_voice_info(self, voice_id: str) -> dict[str, Any]:
        voice_id = normalize_voice_id(voice_id)
        entry = self._catalog().entries.get(voice_id)
        if entry is None:
            raise VoiceNotFoundError("voice_id", f"voice '{voice_id}' not found in the voice library")
        return public_entry(entry)

    def list_voices(self) -> list[dict[str, Any]]:
        return self.search_voices()

    def search_voices(self, query: str | None = None, gender: str | None = None) -> list[dict[str, Any]]:
        """Voices whose name, id or description contains ``query``, optionally of one gender."""
        return lookup.search(self._catalog().entries, query, gender)

    def get_stats(self) -> dict[str, Any]:
        stats = lookup.catalog_stats(self._catalog().entries)
        with self._lock:
            return {
                **stats,
                "cache_size": len(self._cache),
                "max_cache_size": self.max_cache_voices,
                "cache_bytes": self._cache.currsize,
                "max_cache_bytes": self.max_cache_bytes,
                "hits": self._hits,
                "misses": self._misses,
                "evictions": self._cache.evictions,
                "library_dir": str(self.library_dir),
            }

    # ------------------------------------------------------------------- saving

    def _write_error(self, field: str, exc: OSError) -> VoiceLibraryError:
        if isinstance(exc, LockTimeout):
            return VoiceLibraryError(
                field,
                f"the voice library at {self.library_dir} stayed locked by another writer; try again. "
                f"If no worker is saving, {self.lock_path} was left by a crashed one and may be deleted.",
            )
        return VoiceLibraryError(
            field,
            f"cannot write to the voice library at {self.library_dir}: {exc.strerror or exc}. "
            f"Set {LIBRARY_DIR_ENV} to a writable directory (for example a mounted volume).",
        )

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
        deletable: bool = True,
    ) -> dict[str, Any]:
        """Store a voice as FLAC and list it in the catalog; returns its catalog entry.

        A name that is already in the library (any case) replaces that voice and keeps
        its id, and whether it may be deleted. ``voice_id`` fixes the id of a new voice
        and ``deletable=False`` marks it as shipped (both used for the demo library).
        """
        name = validate_text("voice_name", name, MAX_NAME_CHARS, allow_empty=False)
        description = validate_text("voice_description", description, MAX_DESCRIPTION_CHARS, allow_empty=True)
        gender = validate_text("gender", gender, MAX_GENDER_CHARS, allow_empty=True) or "unknown"
        original_file = validate_text("original_file", original_file, MAX_ORIGINAL_FILE_CHARS, allow_empty=True)
        if voice_id is not None:
            try:
                voice_id = normalize_voice_id(voice_id)
            except VoiceNotFoundError as exc:
                raise JobError("voice_id", exc.message) from None
        audio, rate = prepare_upload(samples, sample_rate)
        encoded = _encode_flac(audio, rate)

        try:
            with self._store.locked():
                # Re-read from disk under the file lock: another worker may have just saved.
                state = self._store.read()
                if state.error is not None:
                    raise state.error
                voice_id = _new_voice_id(state.entries, name, voice_id)
                path, rel = self._store.new_voice_path(state.entries, f"{voice_id}{NEW_VOICE_SUFFIX}")
                path.parent.mkdir(parents=True, exist_ok=True)
                entry = _new_entry(voice_id, name, gender, original_file, rel, len(audio) / rate, rate, description)
                if _stays_deletable(state.entries.get(voice_id), deletable):
                    entry[ORIGIN_FIELD] = SAVED_ORIGIN
                entries = {**state.entries, voice_id: entry}
                folded = name.casefold()
                mapping = {k: v for k, v in state.mapping.items() if k.casefold() != folded}
                mapping[name] = voice_id
                written = self._store.write(entries, mapping, audio=(path, encoded))
        except OSError as exc:
            raise self._write_error("save_to_library", exc) from None
        self._install(written, voice_id)
        logger.info("Saved voice %s (%s) to %s", voice_id, name, rel)
        return public_entry(entry)

    def delete_voice(self, voice_id: str) -> dict[str, Any]:
        """Remove a voice that ``save_voice`` added; returns its listing summary.

        Shipped and legacy voices (entries without the saved mark) are refused.
        """
        voice_id = normalize_voice_id(voice_id)
        try:
            with self._store.locked():
                state = self._store.read()
                if state.error is not None:
                    raise state.error
                entry = state.entries.get(voice_id)
                if entry is None:
                    raise VoiceNotFoundError("voice_id", f"voice '{voice_id}' not found in the voice library")
                name = entry.get("speaker_name", voice_id)
                if not is_deletable(entry):
                    raise ShippedVoiceError(
                        "voice_id", f"voice '{voice_id}' ({name}) is a shipped voice and cannot be deleted")
                path, _ = self._store.entry_path(voice_id, entry)
                entries = {vid: e for vid, e in state.entries.items() if vid != voice_id}
                mapping = {k: v for k, v in state.mapping.items() if v != voice_id}
                written = self._store.write(entries, mapping, remove=path)
        except OSError as exc:
            raise self._write_error("voice_id", exc) from None
        self._install(written, voice_id)
        logger.info("Deleted voice %s (%s)", voice_id, name)
        return lookup.summary(voice_id, entry)


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
        stats["max_cache_bytes"] // MB,
    )
    return library

