"""Fetch the weights of the chosen Chatterbox models into the Hugging Face cache.

Used at image build time (see the Dockerfile), so that the worker starts with
``HF_HUB_OFFLINE=1``. Each model is fetched by its own library class's
``from_pretrained``, so exactly the files that class reads at run time are cached.

    python scripts/download_weights.py standard,multilingual,turbo
"""
from __future__ import annotations

import logging
import sys

logger = logging.getLogger("download_weights")


def library_class(variant: str):
    if variant == "standard":
        from chatterbox.tts import ChatterboxTTS
        return ChatterboxTTS
    if variant == "multilingual":
        from chatterbox.mtl_tts import ChatterboxMultilingualTTS
        return ChatterboxMultilingualTTS
    if variant == "turbo":
        from chatterbox.tts_turbo import ChatterboxTurboTTS
        return ChatterboxTurboTTS
    raise SystemExit(f"unknown model {variant!r}; choose from standard, multilingual, turbo")


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    variants = [v.strip() for v in (argv[0] if argv else "standard").split(",") if v.strip()]
    for variant in variants:
        logger.info("fetching the %s model", variant)
        # Loading on the CPU once also proves the cached files are complete.
        model = library_class(variant).from_pretrained("cpu")
        del model
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
