"""Limits of the job contract and units, defined once; every module imports them from here."""
from __future__ import annotations

from chatterbox_worker.models.registry import VARIANT_NAMES

MB = 1024 * 1024
MS_PER_SECOND = 1000.0

# The model's own output rate (S3Gen); saved voices are stored at it too.
MODEL_SAMPLE_RATE = 24000
# Speech tokens per second of audio (S3 tokenizer rate).
SPEECH_TOKENS_PER_SECOND = 25

# The library hard-codes 1000 new speech tokens per call (about 40 s of audio).
LIBRARY_MAX_NEW_TOKENS = 1000

# A job's text may be a chapter: about 100 minutes of speech. Its audio is held as 16-bit
# PCM in a file while it is made, not as float32 in memory (pipeline.long_output).
MAX_TEXT_CHARS = 100_000
# OpenAI's own limit on /v1/audio/speech's ``input``; a request passes it only by asking
# (``long_input: true``), so that OpenAI clients see OpenAI's behaviour.
OPENAI_MAX_INPUT_CHARS = 4096
MAX_NAME_CHARS = 100
MAX_DESCRIPTION_CHARS = 1000
MAX_GENDER_CHARS = 32
MAX_SEED = 2**32 - 1

# Output formats a job may ask for, with their file extensions.
OUTPUT_FORMATS = ("wav", "flac", "mp3", "ogg", "opus", "pcm_16")
FILE_EXTENSIONS = {"wav": "wav", "flac": "flac", "mp3": "mp3", "ogg": "ogg", "opus": "opus", "pcm_16": "pcm"}

# The model variants a job may name (the model registry defines them).
MODEL_VARIANTS = VARIANT_NAMES
