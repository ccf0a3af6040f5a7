"""Getting encoded audio to the client within RunPod's result size limits.

RunPod drops results over 10 MB on ``/run`` (20 MB on ``/runsync``). Audio that would not
fit is uploaded to the bucket named by RunPod's ``BUCKET_*`` variables and returned as a
URL; without a bucket, the job fails with an error that says which limit and what to do.
"""
from __future__ import annotations

import base64
import os
import uuid

from job_errors import JobError

MB = 1024 * 1024
DEFAULT_RESULT_LIMIT_MB = 10.0  # /run's limit, the stricter of the two
BUCKET_ENV = "BUCKET_ENDPOINT_URL"
FILE_EXTENSIONS = {"wav": "wav", "flac": "flac", "mp3": "mp3", "ogg": "ogg", "opus": "opus", "pcm_16": "pcm"}


def result_limit_bytes() -> int:
    return int(float(os.environ.get("MAX_RESULT_MB", DEFAULT_RESULT_LIMIT_MB)) * MB)


def upload(data: bytes, fmt: str) -> str:
    """Upload to the configured bucket; returns a presigned URL."""
    from runpod.serverless.utils import rp_upload  # imported only when needed: ~2 s

    return rp_upload.upload_in_memory_object(f"{uuid.uuid4().hex}.{FILE_EXTENSIONS[fmt]}", data)


def deliver_audio(data: bytes, fmt: str, *, key: str = "audio") -> dict[str, str]:
    """``{key: base64}`` when it fits the result limit, else ``{key + "_url": url}``."""
    encoded = base64.b64encode(data).decode("ascii")
    limit = result_limit_bytes()
    if len(encoded) <= limit:
        return {key: encoded}
    if os.environ.get(BUCKET_ENV):
        return {f"{key}_url": upload(data, fmt)}
    raise JobError("output_format", f"the {fmt} audio is {len(encoded) / MB:.1f} MB as base64, over the "
                                    f"{limit / MB:g} MB result limit of RunPod's /run; ask for output_format "
                                    "'mp3' or 'opus', send shorter text, or set the BUCKET_* variables to "
                                    "receive a URL instead")
