"""Random jobs over every operation, well-formed and malformed, as a client mix would send
them: the soak run's traffic, reproducible from a seed.

Every operation runs (tts in all three modes with library voices and uploaded audio,
voice_cloning, upload_voice, the listing and search operations, voice_conversion and
voice_transfer in both modes); a malformed job is wrong in exactly one way the contract
forbids, so the worker must reject it.
"""
from __future__ import annotations

import base64
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from chatterbox_worker.contract.limits import MAX_TEXT_CHARS
from chatterbox_worker.testing.audio_payloads import float_wav_b64, make_wav_b64

MALFORMED_FRACTION = 0.2
LIBRARY_VOICES = ("Amy", "Aaron", "Bella", "Christopher", "Dana", "Eric")  # in the demo library
# Saved voices rotate through a few names: a re-save replaces the voice, so the library
# reaches a steady size and any growth after warm-up is the worker's, not the catalog's.
SAVED_VOICE_SLOTS = 4
OUTPUT_FORMATS = ("wav", "flac", "mp3", "ogg", "opus", "pcm_16")
OUTPUT_RATES = (None, None, None, 16000, 22050, 44100)
SENTENCES = (
    "Hello there.",
    "Dr. Smith will see you at 3.14 p.m. today.",
    "The quick brown fox jumps over the lazy dog!",
    "Is this thing on? I think it is.",
    "Wait... what was that noise?",
    "We shipped one thousand and twelve parcels, all on time, which was a record.",
    "你好。今天天气很好！",
)


@dataclass(frozen=True)
class Payloads:
    """Built once: the same strings are reused by every job, so they are not per-job growth."""

    clone: tuple[str, ...]  # over voices.sources.MIN_CLONE_SECONDS
    short: tuple[str, ...]  # conversion inputs and tts prompts
    silent: str
    nan: str
    truncated: str

    @classmethod
    def build(cls) -> Payloads:
        clone = (
            make_wav_b64(6.0, 16000, 220.0),
            make_wav_b64(6.5, 22050, 180.0, "PCM_16", "FLAC", channels=2),
            make_wav_b64(7.0, 48000, 260.0, "VORBIS", "OGG"),
        )
        short = (
            make_wav_b64(2.0, 16000, 330.0),
            make_wav_b64(2.5, 44100, 150.0, "MPEG_LAYER_III", "MP3"),
            "data:audio/wav;base64," + make_wav_b64(1.5, 24000, 400.0, "FLOAT", "WAV"),
        )
        truncated = base64.b64encode(base64.b64decode(clone[0])[:20]).decode("ascii")  # cut inside the header
        return cls(clone, short, float_wav_b64(np.zeros(6 * 16000)), float_wav_b64(np.full(16000, np.nan)),
                   truncated)


@dataclass(frozen=True)
class Job:
    kind: str  # a label for the report: operation, and mode or variant
    payload: Any  # what handler.handler receives (normally {"id": ..., "input": {...}})
    malformed: bool
    audio_key: str | None = None  # the result key that must carry audio, if any


class JobFactory:
    """Random well-formed and malformed jobs over every operation."""

    def __init__(self, rng: random.Random, payloads: Payloads, voice_ids: dict[str, str]):
        self.rng = rng
        self.audio = payloads
        self.voice_ids = voice_ids
        self.good: list[tuple[str, Callable[[], tuple[dict, str | None]]]] = [
            ("tts/basic", self.tts_basic),
            ("tts/basic", self.tts_basic),
            ("tts/streaming", self.tts_streaming),
            ("tts/streaming_voice_cloning", self.tts_streaming_voice_cloning),
            ("voice_cloning", self.voice_cloning),
            ("upload_voice", self.upload_voice),
            ("list_local_voices", lambda: ({"operation": "list_local_voices"}, None)),
            ("list_voices", lambda: ({"operation": "list_voices"}, None)),
            ("search_local_voices", self.search),
            ("voice_conversion", self.voice_conversion),
            ("voice_transfer/embedding", self.transfer_embedding),
            ("voice_transfer/audio", self.transfer_audio),
        ]

    # -- helpers

    def pick(self, options):
        return self.rng.choice(options)

    def text(self) -> str:
        # Mostly short; now and then long enough to be spoken in several chunks and joined.
        count = self.rng.choice((1, 1, 2, 3, 25))
        return " ".join(self.pick(SENTENCES) for _ in range(count))

    def library_voice(self) -> dict[str, str]:
        name = self.pick(LIBRARY_VOICES)
        return {"voice_name": name} if self.rng.random() < 0.5 else {"voice_id": self.voice_ids[name]}

    def output(self) -> dict[str, Any]:
        fields: dict[str, Any] = {"output_format": self.pick(OUTPUT_FORMATS)}
        rate = self.pick(OUTPUT_RATES)
        if rate is not None:
            fields["sample_rate"] = rate
        if self.rng.random() < 0.3:
            fields["seed"] = self.rng.randrange(2**32)
        if self.rng.random() < 0.2:
            fields["cache"] = False
        return fields

    def slot_name(self, prefix: str) -> str:
        return f"Soak {prefix} {self.rng.randrange(SAVED_VOICE_SLOTS)}"

    # -- well-formed jobs

    def tts_basic(self):
        voice = self.pick(({}, self.library_voice(), {"reference_audio": self.pick(self.audio.short)}))
        extra = {"audio_normalization": self.pick(("peak", "rms"))} if self.rng.random() < 0.3 else {}
        return {"operation": "tts", "text": self.text(), **voice, **self.output(), **extra}, "audio"

    def tts_streaming(self):
        voice = self.pick(({}, self.library_voice(), {"reference_audio": self.pick(self.audio.short)}))
        return {"operation": "tts", "mode": "streaming", "text": self.text(), "chunk_size": self.pick((10, 25, 50)),
                **voice, **self.output()}, "audio"

    def tts_streaming_voice_cloning(self):
        voice = self.pick((self.library_voice(), {"reference_audio": self.pick(self.audio.short)}))
        return {"operation": "tts", "mode": "streaming_voice_cloning", "text": self.text(), **voice,
                **self.output()}, "audio"

    def voice_cloning(self):
        job = {"operation": "voice_cloning", "reference_audio": self.pick(self.audio.clone),
               "voice_description": "soak clone", "gender": self.pick(("female", "male", "unknown")),
               **self.output()}
        if self.rng.random() < 0.75:
            job["voice_name"] = self.slot_name("Clone")
        else:
            job["save_to_library"] = False
        if self.rng.random() < 0.5:
            job["text"] = self.text()
        return job, "sample_audio"

    def upload_voice(self):
        return {"operation": "upload_voice", "voice_name": self.slot_name("Upload"),
                "reference_audio": self.pick(self.audio.clone), "voice_description": "soak upload"}, None

    def search(self):
        job: dict[str, Any] = {"operation": "search_local_voices"}
        if self.rng.random() < 0.7:
            job["query"] = self.pick(("a", "Amy", "soak", "zzz", ""))
        if self.rng.random() < 0.4:
            job["gender"] = self.pick(("female", "male"))
        return job, None

    def voice_conversion(self):
        target = self.pick((self.library_voice(), {"target_speaker": self.pick(self.audio.short)}))
        return {"operation": "voice_conversion", "input_audio": self.pick(self.audio.short), **target,
                "no_watermark": self.rng.random() < 0.5, **self.output()}, "audio"

    def transfer_embedding(self):
        return {"operation": "voice_transfer", "transfer_mode": "embedding",
                "input_audio": self.pick(self.audio.short), **self.library_voice(), **self.output()}, "audio"

    def transfer_audio(self):
        return {"operation": "voice_transfer", "transfer_mode": "audio", "input_audio": self.pick(self.audio.short),
                "target_audio": self.pick(self.audio.clone), **self.output()}, "audio"

    # -- malformed jobs

    def malformed(self) -> tuple[str, Any]:
        # Built afresh for every pick: a job is never the same object as an earlier one.
        return self.pick(malformed_jobs(self.audio, self.voice_ids))

    def make(self, index: int) -> Job:
        if self.rng.random() < MALFORMED_FRACTION:
            kind, payload = self.malformed()
            return Job(kind, payload, malformed=True)
        kind, build = self.pick(self.good)
        job_input, audio_key = build()
        return Job(kind, {"id": f"soak-{index}", "input": job_input}, malformed=False, audio_key=audio_key)


def malformed_jobs(payloads: Payloads, voice_ids: dict[str, str]) -> list[tuple[str, Any]]:
    """(label, raw job) pairs, each wrong in one way the contract forbids; ``voice_ids`` maps
    the demo library's voice names to their ids."""
    a = payloads
    return [
        ("bad/input-not-object", {"input": "speak this"}),
        ("bad/input-missing", {"id": "x"}),
        ("bad/job-not-object", ["not", "a", "job"]),
        ("bad/operation-unknown", {"input": {"operation": "sing", "text": "la"}}),
        ("bad/text-empty", {"input": {"text": ""}}),
        ("bad/text-too-long", {"input": {"text": "x" * (MAX_TEXT_CHARS + 1)}}),
        ("bad/text-not-string", {"input": {"text": 42}}),
        ("bad/voice-unknown", {"input": {"text": "Hi.", "voice_name": "Nobody At All"}}),
        ("bad/voice_id-traversal", {"input": {"text": "Hi.", "voice_id": "../../etc/passwd"}}),
        ("bad/two-voices", {"input": {"text": "Hi.", "voice_name": "Amy", "voice_id": voice_ids["Amy"]}}),
        ("bad/reference-not-base64", {"input": {"text": "Hi.", "reference_audio": "not base64 at all!"}}),
        ("bad/reference-silent", {"input": {"text": "Hi.", "reference_audio": a.silent}}),
        ("bad/reference-nan", {"input": {"text": "Hi.", "reference_audio": a.nan}}),
        ("bad/reference-truncated", {"input": {"text": "Hi.", "reference_audio": a.truncated}}),
        ("bad/svc-no-voice", {"input": {"text": "Hi.", "mode": "streaming_voice_cloning"}}),
        ("bad/format-unknown", {"input": {"text": "Hi.", "output_format": "aiff"}}),
        ("bad/rate-out-of-range", {"input": {"text": "Hi.", "sample_rate": 96000}}),
        ("bad/unknown-field", {"input": {"text": "Hi.", "speed": 2}}),
        ("bad/cloning-too-short", {"input": {"operation": "voice_cloning", "voice_name": "Short",
                                              "reference_audio": a.short[0]}}),
        ("bad/cloning-no-name", {"input": {"operation": "voice_cloning", "reference_audio": a.clone[0]}}),
        ("bad/upload-no-audio", {"input": {"operation": "upload_voice", "voice_name": "Nothing"}}),
        ("bad/search-query-int", {"input": {"operation": "search_local_voices", "query": 5}}),
        ("bad/list-unknown-field", {"input": {"operation": "list_voices", "limit": 3}}),
        ("bad/conversion-no-target", {"input": {"operation": "voice_conversion", "input_audio": a.short[0]}}),
        ("bad/conversion-input-nan", {"input": {"operation": "voice_conversion", "input_audio": a.nan,
                                                 "voice_name": "Amy"}}),
        ("bad/transfer-audio-no-target", {"input": {"operation": "voice_transfer", "transfer_mode": "audio",
                                                     "input_audio": a.short[0]}}),
        ("bad/transfer-embedding-with-audio", {"input": {"operation": "voice_transfer",
                                                         "input_audio": a.short[0],
                                                         "target_audio": a.clone[0]}}),
    ]
