"""Pause tags in a job's text: ``[pause:1.5s]`` and ``[pause:300ms]`` become exact silence.

A text is read as a list of segments: runs of text to speak, and silences between them.
Only tags that start with ``[pause`` are ours; every other bracketed tag (Turbo's
``[laugh]``, ``[cough]``, ``[chuckle]``...) stays in the text, unchanged, for the model.

A tag that starts like ours but is not one (``[pause]``, ``[pause:abc]``, ``[pause:2]``
without a unit, ``[pause:12s]`` past the bound) is refused with an error naming ``text``,
rather than being spoken aloud as letters.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from chatterbox_worker.contract.errors import JobError

FIELD = "text"
MAX_PAUSE_SECONDS = 10.0
MS_PER_SECOND = 1000.0
# Anything that opens like a pause tag, up to its closing bracket (or the end of the text).
_CANDIDATE = re.compile(r"\[\s*pause\b[^\]]*\]?", re.IGNORECASE)
_PAUSE = re.compile(r"\[\s*pause\s*:\s*(\d+(?:\.\d+)?|\.\d+)\s*(ms|s)\s*\]", re.IGNORECASE)
SYNTAX = "[pause:1.5s] or [pause:300ms]"


@dataclass(frozen=True)
class Speech:
    """A run of text to speak."""

    text: str


@dataclass(frozen=True)
class Silence:
    """Exact silence of ``seconds``."""

    seconds: float


Segment = Speech | Silence


def _seconds(tag: str) -> float:
    match = _PAUSE.fullmatch(tag)
    if match is None:
        raise JobError(FIELD, f"malformed pause tag {tag!r}: write {SYNTAX}")
    value, unit = float(match.group(1)), match.group(2).lower()
    seconds = value / MS_PER_SECOND if unit == "ms" else value
    if seconds > MAX_PAUSE_SECONDS:
        raise JobError(FIELD, f"pause tag {tag!r} is {seconds:g} s; a pause lasts 0 to {MAX_PAUSE_SECONDS:g} s")
    return seconds


def _append_text(segments: list[Segment], text: str) -> None:
    text = " ".join(text.split())
    if text:
        segments.append(Speech(text))


def _append_silence(segments: list[Segment], seconds: float) -> None:
    # Pauses side by side are one silence: their lengths add up exactly.
    if segments and isinstance(segments[-1], Silence):
        segments[-1] = Silence(segments[-1].seconds + seconds)
    elif seconds > 0:
        segments.append(Silence(seconds))


def parse_segments(text: str) -> list[Segment]:
    """The text as speech and silence, in order. Raises :class:`JobError` on a bad tag."""
    segments: list[Segment] = []
    position = 0
    for match in _CANDIDATE.finditer(text):
        _append_text(segments, text[position:match.start()])
        _append_silence(segments, _seconds(match.group()))
        position = match.end()
    _append_text(segments, text[position:])
    return segments


def has_pause_tags(text: str) -> bool:
    return _CANDIDATE.search(text) is not None


def spoken_text(segments: list[Segment]) -> str:
    """What the model speaks, tags removed: the text a response echoes for its chunks."""
    return " ".join(s.text for s in segments if isinstance(s, Speech))


def require_speech(segments: list[Segment]) -> None:
    """A text of tags alone (or nothing) has nothing to speak: refuse it, naming ``text``."""
    if not any(isinstance(s, Speech) for s in segments):
        raise JobError(FIELD, "nothing to speak: the text holds only pause tags or white space")


def check_speakable(text: str) -> str:
    """``text`` as a request validator sees it: a bad pause tag, or tags with nothing to
    speak between them, raise ValueError (pydantic reports it against the field)."""
    if not text.strip():
        return text  # a blank text has its own message ("must not be blank")
    try:
        require_speech(parse_segments(text))
    except JobError as exc:
        raise ValueError(exc.message) from None
    return text
