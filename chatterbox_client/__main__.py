"""``python -m chatterbox_client``: say, voices, clone."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import httpx

from .backends import Backend, ClientError, SpeechOptions

FORMATS = ("mp3", "opus", "aac", "flac", "wav", "pcm")
# File endings that name a format other than their own spelling.
SUFFIX_FORMATS = {"ogg": "opus", "m4a": "aac", "raw": "pcm"}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m chatterbox_client", description=__doc__)
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--url", help="base URL of a worker in HTTP mode (load-balancing endpoint or server.py)")
    target.add_argument("--endpoint-id", help="RunPod queue endpoint id (uses RUNPOD_API_KEY)")
    target.add_argument("--queue-url", help="local test API of a queue worker (handler.py --rp_serve_api)")
    p.add_argument("--api-key", help="bearer token; default RUNPOD_API_KEY from the environment")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    sub = p.add_subparsers(dest="command", required=True)

    say = sub.add_parser("say", help="speak text into an audio file")
    say.add_argument("text")
    say.add_argument("--voice", default="Amy", help="library voice name or id, or an OpenAI voice name")
    say.add_argument("--model", default="tts-1")
    say.add_argument("-o", "--output", default="out.mp3", help="file to write ('-' for stdout)")
    say.add_argument("--format", choices=FORMATS, help="default: from the output file's ending, else mp3")
    say.add_argument("--speed", type=float, default=1.0)
    say.add_argument("--stream", action="store_true", help="write audio as it is generated")
    for name, kind in (("exaggeration", float), ("cfg-weight", float), ("temperature", float), ("seed", int),
                       ("max-new-tokens", int), ("language", str)):
        say.add_argument(f"--{name}", type=kind)

    sub.add_parser("voices", help="list the voice library")

    clone = sub.add_parser("clone", help="save a reference clip as a library voice")
    clone.add_argument("reference", type=Path)
    clone.add_argument("--name", required=True)
    clone.add_argument("--description", default="")
    return p


def backend_for(args: argparse.Namespace) -> Backend:
    api_key = args.api_key or os.environ.get("RUNPOD_API_KEY")
    if args.url:
        from .http_backend import HttpBackend

        return HttpBackend(args.url, api_key)
    from .queue_backend import LocalTransport, QueueBackend, RunpodTransport

    transport = LocalTransport(args.queue_url) if args.queue_url else RunpodTransport(args.endpoint_id, api_key)
    return QueueBackend(transport)


def output_format(args: argparse.Namespace) -> str:
    if args.format:
        return args.format
    suffix = Path(args.output).suffix.lstrip(".").lower()
    return SUFFIX_FORMATS.get(suffix, suffix if suffix in FORMATS else "mp3")


def speech_options(args: argparse.Namespace) -> SpeechOptions:
    extras: dict[str, Any] = {}
    for name in ("exaggeration", "cfg_weight", "temperature", "seed", "max_new_tokens", "language"):
        value = getattr(args, name)
        if value is not None:
            extras[name] = value
    return SpeechOptions(args.text, args.voice, args.model, output_format(args), args.speed, extras)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    progress = (lambda _line: None) if args.quiet else (lambda line: print(line, file=sys.stderr, flush=True))
    try:
        backend = backend_for(args)
        if args.command == "say":
            options = speech_options(args)
            if args.output == "-":
                written = backend.say(options, sys.stdout.buffer, stream=args.stream, progress=progress)
            else:
                with open(args.output, "wb") as out:
                    written = backend.say(options, out, stream=args.stream, progress=progress)
            progress(f"wrote {written} bytes of {options.response_format} to {args.output}")
        elif args.command == "voices":
            for voice in backend.voices():
                print(f"{voice['id']}\t{voice['name']}\t{voice.get('gender', '')}")
        else:
            result = backend.clone(args.reference.read_bytes(), args.reference.name, args.name, args.description)
            print(json.dumps(result, indent=2))
    except ClientError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except (httpx.HTTPError, OSError) as exc:  # requests' errors are OSErrors too
        print(f"error: cannot reach the service: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
