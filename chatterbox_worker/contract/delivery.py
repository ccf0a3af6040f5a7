"""Getting encoded audio to the client within RunPod's result size limits.

RunPod drops results over 10 MB on ``/run`` (20 MB on ``/runsync``). Audio that would not
fit is uploaded to the bucket named by RunPod's ``BUCKET_*`` variables and returned as a
URL; without a bucket, the job fails with an error that says which limit and what to do.
"""
from __future__ import annotations

import uuid

from chatterbox_worker.audio.codec import to_base64
from chatterbox_worker.contract.errors import JobError
from chatterbox_worker.contract.limits import FILE_EXTENSIONS, MB
from chatterbox_worker.settings import get_settings, mb_to_bytes


def upload(data: bytes, fmt: str) -> str:
    """Upload to the configured bucket; returns a presigned URL."""
    from runpod.serverless.utils import rp_upload  # imported only when needed: ~2 s

    return rp_upload.upload_in_memory_object(f"{uuid.uuid4().hex}.{FILE_EXTENSIONS[fmt]}", data)


def deliver_audio(data: bytes, fmt: str, *, key: str = "audio") -> dict[str, str]:
    """``{key: base64}`` when it fits the result limit, else ``{key + "_url": url}``."""
    encoded = to_base64(data)
    settings = get_settings()
    limit = mb_to_bytes(settings.max_result_mb)
    if len(encoded) <= limit:
        return {key: encoded}
    if settings.bucket_endpoint_url:
        return {f"{key}_url": upload(data, fmt)}
    raise JobError("output_format", f"the {fmt} audio is {len(encoded) / MB:.1f} MB as base64, over the "
                                    f"{limit / MB:g} MB result limit of RunPod's /run; ask for output_format "
                                    "'mp3' or 'opus', send shorter text, or set the BUCKET_* variables to "
                                    "receive a URL instead")
