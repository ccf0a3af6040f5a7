"""A command-line client for the Chatterbox worker, on either kind of RunPod endpoint.

    python -m chatterbox_client --url http://localhost:8000 say "Hello" --voice Amy -o hi.mp3 --stream
    python -m chatterbox_client --endpoint-id abc123 voices          (RUNPOD_API_KEY in the environment)
    python -m chatterbox_client --url ... clone ref.wav --name Me

``--url`` speaks to a worker in HTTP mode (a load-balancing endpoint, or ``server.py``);
``--endpoint-id`` to a queue endpoint through the runpod SDK; ``--queue-url`` to a queue
worker's local test API (``python handler.py --rp_serve_api``).
"""
from __future__ import annotations

from .backends import Backend, ClientError, SpeechOptions

__all__ = ["Backend", "ClientError", "SpeechOptions"]
