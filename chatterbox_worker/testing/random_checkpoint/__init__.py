"""Build a random-weights Chatterbox checkpoint that the library's own ``from_local`` loads.

The real weights live on the Hugging Face hub. Tests and benchmarks that must run without
it use a checkpoint with the same layout, built here by instantiating the real library
modules with a seeded initialisation and saving their ``state_dict()``. Rerunning with the
same seed (same chatterbox and torch versions, same machine) writes identical files.

    python scripts/make_random_checkpoint.py --out DIR [--variant V] [--seed 0] [--force]
    python scripts/make_random_checkpoint.py --cached [--variant V] [--seed 0] [--force] [--prune]
    python -m chatterbox_worker.testing.random_checkpoint ...   (the same command line)

V is ``standard`` (default), ``multilingual``, ``turbo`` or ``all``. With ``--out`` and
``all`` each variant goes to its own sub-directory (``DIR/standard`` ...). ``--cached``
builds into ``${CHATTERBOX_CKPT_CACHE:-~/.cache/chatterbox-worker/checkpoints}/<V>-<key>``
(key: a hash of every source file of this package, the chatterbox and torch versions and
the seed), reuses a completed build, and prints the directory as the last line of stdout
(for ``all``: the standard, multilingual and turbo directories, one per line). Logs go to
stderr. Editing any file of this package changes the key, so the next call rebuilds;
``--prune`` deletes the variant's cached builds under other keys.

From Python (import-cheap: torch and chatterbox are imported only to build)::

    ensure_checkpoint("standard", seed=0) -> Path

Files per variant (exactly what each ``from_local`` reads, plus the ``.complete`` marker):

* standard (``ChatterboxTTS`` and ``ChatterboxVC``): ve.safetensors, t3_cfg.safetensors,
  s3gen.safetensors, tokenizer.json, conds.pt
* multilingual (``ChatterboxMultilingualTTS``): ve.pt, t3_mtl23ls_v2.safetensors, s3gen.pt,
  grapheme_mtl_merged_expanded_v1.json, conds.pt, and a small Cangjie5_TC.json placed in
  the hub-cache layout under the checkpoint (models--ResembleAI--chatterbox/...), where the
  Chinese text converter's ``hf_hub_download(..., cache_dir=ckpt_dir)`` finds it with
  HF_HUB_OFFLINE=1 (without it that call first asks the hub; if the hub answers, the real
  file is downloaded next to it)
* turbo (``ChatterboxTurboTTS``): ve.safetensors, t3_turbo_v1.safetensors,
  s3gen_meanflow.safetensors, a small GPT-2 byte-level BPE tokenizer (tokenizer.json,
  tokenizer_config.json, vocab.json, merges.txt) sized to the Turbo text vocabulary, conds.pt

The built-in voice (conds.pt) is the loaded model's own ``prepare_conditionals`` on a
synthetic, speech-like 6 s reference. The tokenizers are built offline; they cover the
characters the library's text front ends produce and map anything else to [UNK].

Modules: ``layout`` (variants, files, vocabulary facts), ``builders`` (per-variant weights
and the built-in voice), ``tokenizers``, ``reference_audio``, ``key`` (the cache key),
``cache`` (cache directory, ``ensure_checkpoint``), ``cli`` (the command line).
"""
from chatterbox_worker.testing.random_checkpoint.builders import build_variant
from chatterbox_worker.testing.random_checkpoint.cache import (
    CACHE_ENV,
    DEFAULT_CACHE_DIR,
    build_cached,
    build_into,
    cache_root,
    cached_checkpoint_dir,
    ensure_checkpoint,
    is_complete,
)
from chatterbox_worker.testing.random_checkpoint.key import cache_key
from chatterbox_worker.testing.random_checkpoint.layout import COMPLETE_MARKER, FILES, VARIANTS, expected_files

__all__ = [
    "CACHE_ENV",
    "COMPLETE_MARKER",
    "DEFAULT_CACHE_DIR",
    "FILES",
    "VARIANTS",
    "build_cached",
    "build_into",
    "build_variant",
    "cache_key",
    "cache_root",
    "cached_checkpoint_dir",
    "ensure_checkpoint",
    "expected_files",
    "is_complete",
]
