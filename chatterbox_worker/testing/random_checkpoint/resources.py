"""Memory housekeeping and sizes for the build log: a build holds several GB at its peak,
and a caller that loads the model next wants it back."""
from __future__ import annotations

import gc
import os
from pathlib import Path

KIB = 1024


def release_memory() -> None:
    """Collect garbage and hand freed heap pages back to the system (glibc only)."""
    gc.collect()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def peak_rss_bytes() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * KIB  # KiB on Linux


def rss_bytes() -> int:
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return 0
    return pages * os.sysconf("SC_PAGE_SIZE")


def human(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < KIB or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= KIB
    return f"{size} B"
