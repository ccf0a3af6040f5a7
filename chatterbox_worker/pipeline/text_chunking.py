"""Splitting long text into chunks the model speaks well: whole sentences, never half words.

The model stops at 1000 speech tokens (about 40 s) and is at its best on around 30 s of
speech per call, so long text is spoken chunk by chunk with one voice.
"""
from __future__ import annotations

import re

from chatterbox_worker.settings import get_settings

ABBREVIATIONS = {
    "mr", "mrs", "ms", "dr", "prof", "st", "jr", "sr", "vs", "etc", "e.g", "i.e", "a.m", "p.m",
    "u.s", "no", "fig", "approx", "inc", "ltd", "co", "mt",
}
# A sentence ends at . ! ? … (or CJK 。！？), with any closing quotes or brackets after it.
_SENTENCE_END = re.compile(r"[.!?…。！？]+[\"'”’)\]」』]*")
_CJK_END = set("。！？")
# ASCII marks break a clause only before whitespace, so "1,000" and "10:30" stay whole.
_CLAUSE_BREAK = re.compile(r"(?<=[,;:])(?=\s)|(?<=[，、；：])")


def _ends_sentence(text: str, match: re.Match) -> bool:
    end = match.end()
    if match.group()[0] in _CJK_END:
        return True
    if end < len(text) and not text[end].isspace():
        return False  # 3.14, U.S.A, example.com
    if match.group() == ".":
        word = text[: match.start()].rsplit(" ", 1)[-1].lower().lstrip("\"'“‘(")
        if word in ABBREVIATIONS or (len(word) == 1 and word.isalpha()):
            return False  # Dr. Smith, J. R. R. Tolkien
    return True


def split_sentences(text: str) -> list[str]:
    text = " ".join(text.split())
    sentences, start = [], 0
    for match in _SENTENCE_END.finditer(text):
        if _ends_sentence(text, match):
            sentences.append(text[start:match.end()].strip())
            start = match.end()
    sentences.append(text[start:].strip())
    return [s for s in sentences if s]


def _split_long(sentence: str, max_chars: int) -> list[str]:
    """A sentence over the bound: at clause punctuation, then at spaces, then hard."""
    for pieces in (_CLAUSE_BREAK.split(sentence), sentence.split(" ")):
        pieces = [p.strip() for p in pieces if p.strip()]
        if len(pieces) > 1:
            return [part for piece in _pack(pieces, max_chars) for part in
                    (_split_long(piece, max_chars) if len(piece) > max_chars else [piece])]
    return [sentence[i:i + max_chars] for i in range(0, len(sentence), max_chars)]


def _pack(pieces: list[str], max_chars: int) -> list[str]:
    chunks, current = [], ""
    for piece in pieces:
        candidate = f"{current} {piece}" if current else piece
        if len(candidate) <= max_chars or not current:
            current = candidate
        else:
            chunks.append(current)
            current = piece
    if current:
        chunks.append(current)
    return chunks


def split_text(text: str, max_chars: int | None = None) -> list[str]:
    """Chunks of at most ``max_chars`` (default ``TTS_CHUNK_MAX_CHARS``); joined with single
    spaces they give back the whitespace-normalised text (CJK sentences and over-long words
    gain a space at a cut)."""
    max_chars = max_chars or get_settings().tts_chunk_max_chars
    pieces: list[str] = []
    for sentence in split_sentences(text):
        pieces.extend(_split_long(sentence, max_chars) if len(sentence) > max_chars else [sentence])
    return _pack(pieces, max_chars)
