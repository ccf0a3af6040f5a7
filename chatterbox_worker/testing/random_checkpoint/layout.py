"""What a random-weights checkpoint holds: its variants, the files of each, and the library's
vocabulary facts the builders must match."""
from __future__ import annotations

import hashlib

VARIANTS = ("standard", "multilingual", "turbo")
COMPLETE_MARKER = ".complete"

# Where ChineseCangjieConverter's hf_hub_download(REPO_ID, "Cangjie5_TC.json",
# cache_dir=ckpt_dir) looks: <cache_dir>/models--<org>--<name>/refs/main holds a commit
# hash, and the file is <cache_dir>/models--<org>--<name>/snapshots/<hash>/<filename>.
HUB_REPO_ID = "ResembleAI/chatterbox"
HUB_REPO_DIR = "models--" + HUB_REPO_ID.replace("/", "--")
HUB_REVISION = "main"
HUB_COMMIT = hashlib.sha1(b"chatterbox random-weights checkpoint").hexdigest()  # any 40-hex id
CANGJIE_FILENAME = "Cangjie5_TC.json"

# Text vocabulary facts of the library (checked against T3Config at build time).
SOT, EOT, UNK, SPACE = "[START]", "[STOP]", "[UNK]", "[SPACE]"
EN_SPECIALS = (EOT, UNK, SPACE, "[PAD]", "[SEP]", "[CLS]", "[MASK]")  # ids 0..6; [STOP] = 0
START_TEXT_TOKEN = 255
STOP_TEXT_TOKEN = 0
ENGLISH_TEXT_VOCAB = 704
MULTILINGUAL_TEXT_VOCAB = 2454
TURBO_TEXT_VOCAB = 50276
GPT2_EOS = "<|endoftext|>"

FILES = {
    "standard": (
        "ve.safetensors",
        "t3_cfg.safetensors",
        "s3gen.safetensors",
        "tokenizer.json",
        "conds.pt",
    ),
    "multilingual": (
        "ve.pt",
        "t3_mtl23ls_v2.safetensors",
        "s3gen.pt",
        "grapheme_mtl_merged_expanded_v1.json",
        "conds.pt",
        f"{HUB_REPO_DIR}/refs/{HUB_REVISION}",
        f"{HUB_REPO_DIR}/snapshots/{HUB_COMMIT}/{CANGJIE_FILENAME}",
    ),
    "turbo": (
        "ve.safetensors",
        "t3_turbo_v1.safetensors",
        "s3gen_meanflow.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "vocab.json",
        "merges.txt",
        "conds.pt",
    ),
}



def check_variant(variant: str) -> None:
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; expected one of {', '.join(VARIANTS)}")


def expected_files(variant: str) -> tuple[str, ...]:
    """Relative paths (``/``-separated) of a completed checkpoint, marker included."""
    check_variant(variant)
    return FILES[variant] + (COMPLETE_MARKER,)
