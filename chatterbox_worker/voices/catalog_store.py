"""The catalog and name mapping on disk: reading, validating, caching, and locked atomic writes.

A library is a directory holding ``voice_catalog.json`` (an object keyed by an 8-hex voice
id), an optional ``name_mapping.json`` ({"Amy": "de16e46c", ...}) and one audio file per
voice, named in the catalog by ``embedding_file`` relative to that directory. Several
workers may share the directory on a volume: readers notice a change by one stat per
file, writers take ``.voice_library.lock`` and swap whole files in.
"""
from __future__ import annotations

import copy
import json
import logging
import os
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from chatterbox_worker.contract.errors import VoiceLibraryError
from chatterbox_worker.storage.atomic_files import commit, fsync_dir, write_partial
from chatterbox_worker.storage.file_locks import volume_lock
from chatterbox_worker.voices.validation import VOICE_ID_PATTERN, quote

logger = logging.getLogger(__name__)

CATALOG_FILENAME = "voice_catalog.json"
NAME_MAPPING_FILENAME = "name_mapping.json"
LOCK_FILENAME = ".voice_library.lock"
DEFAULT_VOICE_SUBDIR = "voice_embeddings"

# Entries written by save_voice carry ``"origin": "saved"``; only those may be deleted.
# Legacy catalogs and the shipped demo voices lack the field. It is bookkeeping, so
# entries handed to callers leave it out.
ORIGIN_FIELD = "origin"
SAVED_ORIGIN = "saved"
PRIVATE_FIELDS = (ORIGIN_FIELD,)

# (mtime_ns, size, inode) of a file when read; None = file absent.
StatKey = tuple[int, int, int] | None
Entries = dict[str, dict[str, Any]]


@dataclass(frozen=True)
class CatalogState:
    entries: Entries
    mapping: dict[str, str]
    catalog_key: StatKey
    mapping_key: StatKey
    error: VoiceLibraryError | None = None


def stat_key(path: Path) -> StatKey:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


def json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


def public_entry(entry: dict[str, Any]) -> dict[str, Any]:
    """A caller's own copy of a catalog entry, without the library's bookkeeping fields."""
    return {k: copy.deepcopy(v) for k, v in entry.items() if k not in PRIVATE_FIELDS}


def is_deletable(entry: dict[str, Any]) -> bool:
    return entry.get(ORIGIN_FIELD) == SAVED_ORIGIN


def changed_ids(old: Entries, new: Entries) -> set[str]:
    """Ids whose entry differs or is gone: their decoded audio may be stale."""
    return {voice_id for voice_id, entry in old.items() if new.get(voice_id) != entry}


def voice_subdir(entries: Entries) -> str:
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


class CatalogStore:
    """One library directory's catalog files.

    ``refresh`` and ``install`` keep the last state read and are not thread-safe: the
    library calls them under its own lock, so that a catalog change and the cache
    invalidation it implies are one step. Writers call ``write`` inside ``locked()``.
    """

    def __init__(self, library_dir: Path):
        self.library_dir = library_dir
        self.catalog_path = library_dir / CATALOG_FILENAME
        self.mapping_path = library_dir / NAME_MAPPING_FILENAME
        self.lock_path = library_dir / LOCK_FILENAME
        self._state: CatalogState | None = None
        self._missing_warned = False
        self._write_lock = threading.Lock()  # one writer at a time in this process

    # ------------------------------------------------------------------ reading

    def read(self) -> CatalogState:
        """Both files as they are on disk now; a broken catalog comes back as ``error``."""
        catalog_key = stat_key(self.catalog_path)
        mapping_key = stat_key(self.mapping_path)
        if catalog_key is None:
            if not self._missing_warned:
                logger.warning("No voice catalog at %s; the voice library is empty", self.catalog_path)
                self._missing_warned = True
            return CatalogState({}, {}, None, mapping_key)
        self._missing_warned = False
        try:
            raw = json.loads(self.catalog_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            return self._broken(f"cannot read the voice catalog {self.catalog_path}: {exc}", catalog_key, mapping_key)
        if not isinstance(raw, dict):
            return self._broken(f"the voice catalog {self.catalog_path} is not a JSON object keyed by voice id",
                                catalog_key, mapping_key)
        entries: Entries = {}
        for key, entry in raw.items():
            voice_id = str(key).lower()
            if not VOICE_ID_PATTERN.match(voice_id) or not isinstance(entry, dict):
                # One bad entry must not take the other voices down with it.
                logger.warning("Skipping malformed catalog entry %r in %s", key, self.catalog_path)
                continue
            entries[voice_id] = entry
        return CatalogState(entries, self.read_mapping(), catalog_key, mapping_key)

    @staticmethod
    def _broken(message: str, catalog_key: StatKey, mapping_key: StatKey) -> CatalogState:
        error = VoiceLibraryError("voice_library", message)
        logger.error("%s", error)
        return CatalogState({}, {}, catalog_key, mapping_key, error)

    def read_mapping(self) -> dict[str, str]:
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

    def refresh(self) -> tuple[CatalogState, set[str]]:
        """The current state, re-read if either file changed (one stat each), and the changed ids."""
        state = self._state
        if (
            state is not None
            and state.catalog_key == stat_key(self.catalog_path)
            and state.mapping_key == stat_key(self.mapping_path)
        ):
            return state, set()
        new = self.read()
        return new, self.install(new)

    def install(self, new: CatalogState) -> set[str]:
        """Make ``new`` the current state; returns the ids whose entries changed."""
        old = self._state
        self._state = new
        # Another worker may have replaced a voice in place: same id, new file.
        return changed_ids(old.entries, new.entries) if old is not None else set()

    # ------------------------------------------------------------------- paths

    def entry_path(self, voice_id: str, entry: dict[str, Any]) -> tuple[Path, str]:
        """The audio file of an entry, refused if it would lie outside the library."""
        rel = entry.get("embedding_file")
        if not isinstance(rel, str) or not rel.strip():
            raise VoiceLibraryError("voice_id", f"voice '{voice_id}' has no embedding_file in the catalog")
        path = (self.library_dir / rel).resolve()
        if not path.is_relative_to(self.library_dir):
            raise VoiceLibraryError(
                "voice_id",
                f"voice '{voice_id}': its embedding_file points outside the voice library ({quote(rel)})",
            )
        return path, rel

    def new_voice_path(self, entries: Entries, file_name: str) -> tuple[Path, str]:
        """Where a new voice file goes: beside the existing ones, never outside the library."""
        rel = str(PurePosixPath(voice_subdir(entries)) / file_name)
        path = (self.library_dir / rel).resolve()
        if not path.is_relative_to(self.library_dir):  # e.g. a symlinked folder
            rel = f"{DEFAULT_VOICE_SUBDIR}/{file_name}"
            path = (self.library_dir / rel).resolve()
            if not path.is_relative_to(self.library_dir):
                raise VoiceLibraryError(
                    "save_to_library", f"{self.library_dir / DEFAULT_VOICE_SUBDIR} points outside the voice library"
                )
        return path, rel

    # ------------------------------------------------------------------ writing

    @contextmanager
    def locked(self) -> Iterator[None]:
        """One writer at a time: a thread lock here, a file lock across workers."""
        with self._write_lock, volume_lock(self.lock_path):
            yield

    def write(
        self,
        entries: Entries,
        mapping: dict[str, str],
        *,
        audio: tuple[Path, bytes] | None = None,
        remove: Path | None = None,
    ) -> CatalogState:
        """Swap in a new catalog and mapping, adding or removing one voice file; inside ``locked()``.

        Every file is complete on disk before any is swapped in, so a crash or a full disk
        leaves the old library intact. The audio file goes in before the catalog that lists
        it and goes out after the catalog that no longer does. Returns the state written.
        """
        partials: list[Path] = []
        audio_path = audio[0] if audio is not None else None
        new_audio_file = audio_path is not None and not audio_path.exists()
        audio_committed = False
        try:
            if audio is not None:
                partials.append(write_partial(audio[0].parent, audio[0].suffix, audio[1]))
            partials.append(write_partial(self.library_dir, ".json", json_bytes(entries)))
            partials.append(write_partial(self.library_dir, ".json", json_bytes(mapping)))
            *audio_partial, catalog_partial, mapping_partial = partials
            if audio_path is not None:
                commit(audio_partial[0], audio_path)
                audio_committed = True
            commit(catalog_partial, self.catalog_path)
        except BaseException:
            for partial in partials:
                partial.unlink(missing_ok=True)
            if audio_committed and new_audio_file:
                audio_path.unlink(missing_ok=True)  # the catalog never listed it
            raise
        try:
            commit(mapping_partial, self.mapping_path)
        except OSError as exc:
            # The catalog is written and voices are found by speaker name; only the index is stale.
            mapping_partial.unlink(missing_ok=True)
            logger.warning("Updated %s but could not update %s: %s", self.catalog_path, self.mapping_path, exc)
        if remove is not None:
            try:
                remove.unlink(missing_ok=True)
                fsync_dir(remove.parent)
            except OSError as exc:
                # No catalog lists it any more; the file is only wasted space.
                logger.warning("Could not remove %s: %s", remove, exc)
        return CatalogState(entries, self.read_mapping(), stat_key(self.catalog_path), stat_key(self.mapping_path))
