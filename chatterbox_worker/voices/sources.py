"""From a job's voice fields to one prompt array: library voice or uploaded audio."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from chatterbox_worker.audio.codec import audio_fingerprint, decode_audio_base64, trim_to_seconds
from optimized_voice_library import OptimizedVoiceLibrary

MIN_CLONE_SECONDS = 5.0
MAX_CLONE_SECONDS = 60.0


@dataclass(frozen=True)
class VoicePrompt:
    """The audio a voice is conditioned on, and where it came from."""

    samples: np.ndarray
    sample_rate: int
    content_hash: str
    source: str  # "library" or the name of the job field that carried the audio
    voice_id: str | None = None
    voice_name: str | None = None
    # The job field that named this voice, to blame when the voice is at fault.
    field: str = "reference_audio"

    @property
    def duration(self) -> float:
        return len(self.samples) / self.sample_rate


def library_voice(library: OptimizedVoiceLibrary, *, voice_id: str | None = None,
                  voice_name: str | None = None) -> VoicePrompt:
    voice = (library.get_voice_audio(voice_id) if voice_id is not None
             else library.get_voice_audio_by_name(voice_name))
    return VoicePrompt(voice.samples, voice.sample_rate, voice.content_hash, "library",
                       voice.voice_id, voice.speaker_name, field="voice_id" if voice_id is not None else "voice_name")


def uploaded_voice(data: str, field: str, *, max_seconds: float,
                   min_seconds: float | None = None) -> VoicePrompt:
    """Decode base64 audio from a job field, trimmed to its first ``max_seconds``."""
    decoded = decode_audio_base64(data, field, min_seconds=min_seconds)
    samples = trim_to_seconds(decoded.samples, decoded.sample_rate, max_seconds)
    return VoicePrompt(samples, decoded.sample_rate, audio_fingerprint(samples, decoded.sample_rate), field,
                       field=field)


def resolve_voice(library: OptimizedVoiceLibrary, *, voice_id: str | None = None,
                  voice_name: str | None = None, audio: str | None = None,
                  audio_field: str = "reference_audio",
                  max_seconds: float = MAX_CLONE_SECONDS) -> VoicePrompt | None:
    """The one voice a job names, or None for the model's built-in voice."""
    if audio is not None:
        return uploaded_voice(audio, audio_field, max_seconds=max_seconds)
    if voice_id is not None or voice_name is not None:
        return library_voice(library, voice_id=voice_id, voice_name=voice_name)
    return None
