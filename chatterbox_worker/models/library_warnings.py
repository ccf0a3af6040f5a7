"""Warnings the libraries under the models print on every clean start, silenced once, narrowly.

Each filter names the warning's message and the module it is attributed to, so that the
same kind of warning from anywhere else (our own code included) still shows. Warnings that
our own code caused are fixed at their cause instead of being listed here.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass


@dataclass(frozen=True)
class LibraryWarning:
    category: type[Warning]
    message: str  # a regular expression matched against the start of the message
    module: str  # a regular expression matched against the module the warning is attributed to
    why: str


LIBRARY_WARNINGS = (
    LibraryWarning(
        FutureWarning, r"`LoRACompatibleLinear` is deprecated", r"diffusers\.models\.lora",
        "diffusers 0.29 (chatterbox-tts's pin) warns about its own class, which S3Gen's decoder uses"),
    LibraryWarning(
        FutureWarning, r"`torch\.backends\.cuda\.sdp_kernel\(\)` is deprecated", r"contextlib",
        "chatterbox's T3 perceiver enters torch's deprecated sdp_kernel; torch attributes the "
        "warning to contextlib, where the context manager is entered"),
)


def silence_library_warnings() -> None:
    """Install the filters above (idempotent: ``warnings`` drops duplicate filters)."""
    for known in LIBRARY_WARNINGS:
        warnings.filterwarnings("ignore", message=known.message, category=known.category, module=known.module)
