"""Getting encoded audio to the client within RunPod's result size limits.

RunPod drops results over 10 MB on ``/run`` (20 MB on ``/runsync``). Audio that would not
fit is uploaded to the bucket named by RunPod's ``BUCKET_*`` variables and returned as a
URL; without a bucket, the job fails with an error that says which limit and what to do.
"""
from __future__ import annotations

import math
import uuid
from collections.abc import Callable
from pathlib import Path

from chatterbox_worker.audio.codec import to_base64
from chatterbox_worker.contract.errors import JobError
from chatterbox_worker.contract.limits import FILE_EXTENSIONS, MB
from chatterbox_worker.settings import get_settings, mb_to_bytes

# Base64 turns every 3 bytes into 4.
BASE64_RATIO = 4 / 3
IN_MEMORY_ADVICE = ("ask for output_format 'mp3' or 'opus', send shorter text, or set the BUCKET_* variables to "
                    "receive a URL instead")
FILE_ADVICE = "set the BUCKET_* variables to receive a URL, ask for 'mp3' or 'opus', or use mode 'streaming'"


def _object_name(fmt: str) -> str:
    return f"{uuid.uuid4().hex}.{FILE_EXTENSIONS[fmt]}"


def upload(data: bytes, fmt: str) -> str:
    """Upload to the configured bucket; returns a presigned URL."""
    from runpod.serverless.utils import rp_upload  # imported only when needed: ~2 s

    return rp_upload.upload_in_memory_object(_object_name(fmt), data)


def upload_file(path: Path, fmt: str) -> str:
    """Upload a file to the configured bucket, without reading it into memory; a presigned URL."""
    from runpod.serverless.utils import rp_upload

    return rp_upload.upload_file_to_bucket(_object_name(fmt), str(path))


def _within_limit(base64_bytes: int, fmt: str, key: str, inline: Callable[[], str], send: Callable[[], str],
                  advice: str) -> dict[str, str]:
    """The one rule: inline base64 within MAX_RESULT_MB, else a bucket URL, else a clear error."""
    settings = get_settings()
    limit = mb_to_bytes(settings.max_result_mb)
    if base64_bytes <= limit:
        return {key: inline()}
    if settings.bucket_endpoint_url:
        return {f"{key}_url": send()}
    raise JobError("output_format", f"the {fmt} audio is {base64_bytes / MB:.1f} MB as base64, over the "
                                    f"{limit / MB:g} MB result limit of RunPod's /run; {advice}")


def deliver_audio(data: bytes, fmt: str, *, key: str = "audio") -> dict[str, str]:
    """``{key: base64}`` when it fits the result limit, else ``{key + "_url": url}``."""
    encoded = to_base64(data)
    return _within_limit(len(encoded), fmt, key, lambda: encoded, lambda: upload(data, fmt), IN_MEMORY_ADVICE)


def deliver_file(path: Path, fmt: str, *, key: str = "audio") -> dict[str, str]:
    """:func:`deliver_audio` for audio on disk: read only when it goes inline."""
    size = math.ceil(path.stat().st_size * BASE64_RATIO)
    return _within_limit(size, fmt, key, lambda: to_base64(path.read_bytes()), lambda: upload_file(path, fmt),
                         FILE_ADVICE)
