"""Audio arrays in and out of the worker: decoding, resampling, encoding."""
from __future__ import annotations

import hashlib

import numpy as np


def audio_fingerprint(samples: np.ndarray, sample_rate: int) -> str:
    """A content key for a prompt: the same samples at the same rate give the same key.

    The conditionals cache keys on this, so a voice re-uploaded under an old name is
    never served the conditionals of its previous audio.
    """
    data = np.ascontiguousarray(samples, dtype=np.float32)
    digest = hashlib.sha256(data.tobytes())
    digest.update(int(sample_rate).to_bytes(4, "little"))
    return digest.hexdigest()
