"""Pure lookups over one catalog state: name resolution, search and summaries."""
from __future__ import annotations

import difflib
import math
from collections import Counter
from typing import Any

from chatterbox_worker.contract.errors import VoiceNotFoundError
from chatterbox_worker.voices.catalog_store import CatalogState, Entries, is_deletable
from chatterbox_worker.voices.validation import quote

CLOSE_MATCH_COUNT = 3
CLOSE_MATCH_CUTOFF = 0.6


def name_query(name: Any) -> str:
    """A voice name as looked up: a non-empty stripped string, or VoiceNotFoundError."""
    if not isinstance(name, str):
        raise VoiceNotFoundError("voice_name", f"a voice name must be a string, got {type(name).__name__}")
    query = name.strip()
    if not query:
        raise VoiceNotFoundError("voice_name", "a voice name must not be empty")
    return query


def resolve_name(state: CatalogState, query: str) -> str:
    """Voice id for a ``name_query``: mapping (exact, then any case), speaker name, then unique partial."""
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
        raise _ambiguous(query, exact, names)
    partial = [vid for vid, speaker in names.items() if folded in speaker.casefold()]
    if len(partial) == 1:
        return partial[0]
    if len(partial) > 1:
        raise _ambiguous(query, partial, names)

    candidates = {speaker.casefold(): speaker for speaker in names.values() if speaker}
    for key in state.mapping:
        candidates.setdefault(key.casefold(), key)
    close = [candidates[c] for c in
             difflib.get_close_matches(folded, list(candidates), CLOSE_MATCH_COUNT, CLOSE_MATCH_CUTOFF)]
    hint = f"close matches: {', '.join(close)}" if close else "no close matches"
    raise VoiceNotFoundError("voice_name", f"voice {quote(query)} not found; {hint}")


def _ambiguous(query: str, voice_ids: list[str], names: dict[str, str]) -> VoiceNotFoundError:
    counts = Counter(names[vid].casefold() for vid in voice_ids)
    # Two voices with the same name can only be told apart by id.
    labels = sorted(
        f"{names[vid]} ({vid})" if counts[names[vid].casefold()] > 1 else names[vid] for vid in voice_ids
    )
    return VoiceNotFoundError("voice_name", f"voice name {quote(query)} is ambiguous: matches {', '.join(labels)}")


def summary(voice_id: str, entry: dict[str, Any]) -> dict[str, Any]:
    """What listings show of a voice."""
    return {
        "voice_id": voice_id,
        "speaker_name": entry.get("speaker_name", ""),
        "gender": entry.get("gender", "unknown"),
        "duration": entry.get("duration"),
        "original_file": entry.get("original_file"),
        "type": entry.get("type"),
        "deletable": is_deletable(entry),  # false: a shipped voice, which delete_voice refuses
    }


def search(entries: Entries, query: str | None = None, gender: str | None = None) -> list[dict[str, Any]]:
    """Summaries of voices whose name, id or description contains ``query``, optionally of one gender."""
    needle = query.strip().casefold() if query else ""
    wanted_gender = gender.strip().casefold() if gender else None
    found = []
    for voice_id, entry in entries.items():
        if wanted_gender is not None and str(entry.get("gender", "")).casefold() != wanted_gender:
            continue
        if needle:
            haystack = (str(entry.get("speaker_name", "")), voice_id, str(entry.get("description", "")))
            if not any(needle in text.casefold() for text in haystack):
                continue
        found.append(summary(voice_id, entry))
    found.sort(key=lambda v: (str(v["speaker_name"]).casefold(), v["voice_id"]))
    return found


def catalog_stats(entries: Entries) -> dict[str, Any]:
    """Voice count, genders and mean duration (entries without a usable duration are left out)."""
    genders = Counter(str(entry.get("gender", "unknown")) for entry in entries.values())
    durations = [
        float(d)
        for d in (entry.get("duration") for entry in entries.values())
        if isinstance(d, (int, float)) and not isinstance(d, bool) and math.isfinite(d)
    ]
    return {
        "total_voices": len(entries),
        "gender_distribution": dict(genders),
        "average_duration": sum(durations) / len(durations) if durations else 0.0,
    }
