"""Build a random-weights Chatterbox checkpoint that the library's own ``from_local`` loads.

The real weights live on the Hugging Face hub. Tests and benchmarks that must run without
it use a checkpoint with the same layout, built here by instantiating the real library
modules with a seeded initialisation and saving their ``state_dict()``. Rerunning with the
same seed (same chatterbox and torch versions, same machine) writes identical files.

    python scripts/make_random_checkpoint.py --out DIR [--variant V] [--seed 0] [--force]
    python scripts/make_random_checkpoint.py --cached [--variant V] [--seed 0] [--force] [--prune]

V is ``standard`` (default), ``multilingual``, ``turbo`` or ``all``. With ``--out`` and
``all`` each variant goes to its own sub-directory (``DIR/standard`` ...). ``--cached``
builds into ``${CHATTERBOX_CKPT_CACHE:-~/.cache/chatterbox-worker/checkpoints}/<V>-<key>``
(key: a hash of this file, the chatterbox and torch versions and the seed), reuses a
completed build, and prints the directory as the last line of stdout (for ``all``: the
standard, multilingual and turbo directories, one per line). Logs go to stderr. Editing
this file changes the key, so the next call rebuilds; ``--prune`` deletes the variant's
cached builds under other keys.

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
"""
from __future__ import annotations

import argparse
import contextlib
import fcntl
import gc
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Callable, Iterator

logger = logging.getLogger("make_random_checkpoint")

VARIANTS = ("standard", "multilingual", "turbo")
CACHE_ENV = "CHATTERBOX_CKPT_CACHE"
DEFAULT_CACHE_DIR = "~/.cache/chatterbox-worker/checkpoints"
COMPLETE_MARKER = ".complete"
KEY_LENGTH = 12

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

REFERENCE_SECONDS = 6.0  # Turbo's prepare_conditionals requires more than 5 s
REFERENCE_SR = 24000

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


def expected_files(variant: str) -> tuple[str, ...]:
    """Relative paths (``/``-separated) of a completed checkpoint, marker included."""
    _check_variant(variant)
    return FILES[variant] + (COMPLETE_MARKER,)


# --------------------------------------------------------------------------- cache


def cache_root() -> Path:
    return Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE_DIR).expanduser()


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "missing"


def cache_key(seed: int = 0) -> str:
    """Short hash of this script's source, the chatterbox and torch versions and the seed."""
    digest = hashlib.sha256()
    digest.update(Path(__file__).read_bytes())
    for part in (_version("chatterbox-tts"), _version("torch"), str(int(seed))):
        digest.update(b"\0" + part.encode())
    return digest.hexdigest()[:KEY_LENGTH]


def cached_checkpoint_dir(variant: str = "standard", seed: int = 0) -> Path:
    _check_variant(variant)
    return cache_root() / f"{variant}-{cache_key(seed)}"


def is_complete(ckpt_dir: Path, variant: str) -> bool:
    ckpt_dir = Path(ckpt_dir)
    return all((ckpt_dir / rel).is_file() for rel in expected_files(variant))


def ensure_checkpoint(variant: str = "standard", seed: int = 0, *, force: bool = False,
                      in_subprocess: bool = True) -> Path:
    """Return the cached checkpoint directory for ``variant``, building it first if needed.

    The build runs in a child interpreter by default, so that its transient memory (about
    7 GB for standard) is returned to the system before the caller loads the model.
    Concurrent callers are serialised by a lock file; only one builds.
    """
    _check_variant(variant)
    target = cached_checkpoint_dir(variant, seed)
    if not force and is_complete(target, variant):
        return target
    if not in_subprocess:
        return _build_cached(variant, seed, force=force)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--cached", "--variant", variant,
           "--seed", str(int(seed))] + (["--force"] if force else [])
    env = dict(os.environ)
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TQDM_DISABLE", "1")
    result = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"building the {variant} checkpoint failed (exit {result.returncode}): "
                           f"{' '.join(cmd)}")
    if not is_complete(target, variant):
        raise RuntimeError(f"the {variant} checkpoint build finished but {target} is incomplete")
    return target


@contextlib.contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    with open(lock_path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _build_cached(variant: str, seed: int, *, force: bool = False, prune: bool = False) -> Path:
    root = cache_root()
    root.mkdir(parents=True, exist_ok=True)
    name = f"{variant}-{cache_key(seed)}"
    final = root / name
    with _locked(root / f".{name}.lock"):
        if not force and is_complete(final, variant):
            logger.info("reusing %s", final)
            _report_other_entries(root, variant, final, prune)
            return final
        # Left by a killed build or swap; safe to remove since every builder holds the lock.
        for stale in [*root.glob(f".{name}.tmp-*"), *root.glob(f".{name}.old-*")]:
            logger.info("removing stale partial build %s", stale)
            shutil.rmtree(stale, ignore_errors=True)
        tmp = root / f".{name}.tmp-{os.getpid()}"
        tmp.mkdir()
        try:
            build_variant(variant, tmp, seed)
            old = None
            if final.exists():
                old = root / f".{name}.old-{os.getpid()}"
                os.rename(final, old)
            os.rename(tmp, final)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    _report_other_entries(root, variant, final, prune)
    return final


def _report_other_entries(root: Path, variant: str, keep: Path, prune: bool) -> None:
    """Cache entries of ``variant`` under other keys (older versions of this script)."""
    others = sorted(p for p in root.glob(f"{variant}-*") if p.is_dir() and p != keep)
    for other in others:
        if prune:
            logger.info("pruning %s", other)
            shutil.rmtree(other, ignore_errors=True)
        else:
            logger.info("other cached %s checkpoint (remove it, or use --prune): %s", variant, other)


def build_into(out: Path, variant: str, seed: int = 0, *, force: bool = False) -> Path:
    """Build ``variant`` into ``out`` (created if needed). A non-empty ``out`` needs ``force``;
    only the entries this build writes are replaced there."""
    out = Path(out).expanduser().absolute()
    if out.exists() and any(out.iterdir()) and not force:
        raise FileExistsError(f"{out} is not empty (use --force to overwrite its checkpoint files)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        build_variant(variant, tmp, seed)
        out.mkdir(exist_ok=True)
        (out / COMPLETE_MARKER).unlink(missing_ok=True)
        entries = sorted(p.name for p in tmp.iterdir() if p.name != COMPLETE_MARKER)
        for entry in entries + [COMPLETE_MARKER]:
            dest = out / entry
            if dest.is_dir() and not dest.is_symlink():
                shutil.rmtree(dest)
            elif dest.exists() or dest.is_symlink():
                dest.unlink()
            os.rename(tmp / entry, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _check_variant(variant: str) -> None:
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; expected one of {', '.join(VARIANTS)}")


# --------------------------------------------------------------------------- build


def build_variant(variant: str, dest: Path, seed: int = 0) -> None:
    """Write every file of ``variant`` into the existing directory ``dest``; the
    ``.complete`` marker is written last, after the checkpoint has been loaded back."""
    _check_variant(variant)
    dest = Path(dest)
    os.environ.setdefault("TQDM_DISABLE", "1")
    logger.info("building the %s checkpoint (seed %d) in %s", variant, seed, dest)
    started = time.perf_counter()
    # Library code prints progress (e.g. the watermarker); keep stdout for the paths.
    with _hub_offline(), contextlib.redirect_stdout(sys.stderr):
        {"standard": _build_standard, "multilingual": _build_multilingual,
         "turbo": _build_turbo}[variant](dest, seed)
    files = {rel: (dest / rel).stat().st_size for rel in FILES[variant]}
    marker = {
        "variant": variant,
        "seed": int(seed),
        "cache_key": cache_key(seed),
        "chatterbox-tts": _version("chatterbox-tts"),
        "torch": _version("torch"),
        "files": files,
    }
    (dest / COMPLETE_MARKER).write_text(json.dumps(marker, indent=2) + "\n")
    for rel, size in files.items():
        logger.info("  %-60s %10s", rel, _human(size))
    _release_memory()
    logger.info("%s checkpoint: %s in %d files, built in %.1f s (peak RSS so far %s, RSS now %s)",
                variant, _human(sum(files.values())), len(files),
                time.perf_counter() - started, _human(_peak_rss_bytes()), _human(_rss_bytes()))


@contextlib.contextmanager
def _hub_offline() -> Iterator[None]:
    """Keep the build off the network even where HF_HUB_OFFLINE is unset: the multilingual
    loader asks the hub for Cangjie5_TC.json, and online it would fetch the real file."""
    from huggingface_hub import constants

    previous = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = previous


def _seeded(seed: int, factory: Callable):
    import torch

    torch.manual_seed(seed)
    return factory()


def _timed(label: str):
    @contextlib.contextmanager
    def timer():
        started = time.perf_counter()
        yield
        logger.info("  %s: %.1f s", label, time.perf_counter() - started)
    return timer()


def _save_safetensors(module, path: Path) -> None:
    from safetensors.torch import save_file

    state = {k: v.detach().contiguous() for k, v in module.state_dict().items()}
    save_file(state, str(path), metadata={"format": "pt"})


def _save_torch(module, path: Path) -> None:
    import torch

    torch.save(module.state_dict(), path)


def _write_module(seed: int, factory: Callable, saver: Callable, path: Path) -> None:
    with _timed(f"{path.name} (init + save)"):
        module = _seeded(seed, factory)
        saver(module, path)
        del module
        _release_memory()


def _turbo_t3_config():
    """The hyper-parameters ChatterboxTurboTTS.from_local builds its T3 with."""
    from chatterbox.models.t3.modules.t3_config import T3Config

    hp = T3Config(text_tokens_dict_size=TURBO_TEXT_VOCAB)
    hp.llama_config_name = "GPT2_medium"
    hp.speech_tokens_dict_size = 6563
    hp.input_pos_emb = None
    hp.speech_cond_prompt_len = 375
    hp.use_perceiver_resampler = False
    hp.emotion_adv = False
    return hp


def _check_text_config(hp, vocab_size: int) -> None:
    if (hp.text_tokens_dict_size, hp.start_text_token, hp.stop_text_token) != (
            vocab_size, START_TEXT_TOKEN, STOP_TEXT_TOKEN):
        raise RuntimeError(
            "T3Config text tokens changed: "
            f"size={hp.text_tokens_dict_size} start={hp.start_text_token} stop={hp.stop_text_token}")


def _build_standard(dest: Path, seed: int) -> None:
    from chatterbox.models.s3gen import S3Gen
    from chatterbox.models.t3 import T3
    from chatterbox.models.t3.modules.t3_config import T3Config
    from chatterbox.models.voice_encoder import VoiceEncoder
    from chatterbox.tts import ChatterboxTTS

    _check_text_config(T3Config.english_only(), ENGLISH_TEXT_VOCAB)
    _write_module(seed, VoiceEncoder, _save_safetensors, dest / "ve.safetensors")
    _write_module(seed, lambda: T3(T3Config.english_only()), _save_safetensors,
                  dest / "t3_cfg.safetensors")
    _write_module(seed, S3Gen, _save_safetensors, dest / "s3gen.safetensors")
    write_english_tokenizer(dest / "tokenizer.json")
    _write_conds(ChatterboxTTS, dest, seed, ENGLISH_TEXT_VOCAB,
                 lambda model: model.tokenizer.text_to_tokens("Hello, world! ~{}"))


def _build_multilingual(dest: Path, seed: int) -> None:
    from chatterbox.models.s3gen import S3Gen
    from chatterbox.models.t3 import T3
    from chatterbox.models.t3.modules.t3_config import T3Config
    from chatterbox.models.voice_encoder import VoiceEncoder
    from chatterbox.mtl_tts import SUPPORTED_LANGUAGES, ChatterboxMultilingualTTS

    _check_text_config(T3Config.multilingual(), MULTILINGUAL_TEXT_VOCAB)
    _write_module(seed, VoiceEncoder, _save_torch, dest / "ve.pt")
    _write_module(seed, lambda: T3(T3Config.multilingual()), _save_safetensors,
                  dest / "t3_mtl23ls_v2.safetensors")
    _write_module(seed, S3Gen, _save_torch, dest / "s3gen.pt")
    write_multilingual_tokenizer(dest / "grapheme_mtl_merged_expanded_v1.json",
                                 sorted(SUPPORTED_LANGUAGES))
    write_cangjie_hub_cache(dest)

    def sample_ids(model):
        import torch

        samples = [model.tokenizer.text_to_tokens("Hello, world!", language_id=lang)
                   for lang in sorted(SUPPORTED_LANGUAGES)]
        chinese = model.tokenizer.text_to_tokens("你好,世界。", language_id="zh")
        if model.tokenizer.cangjie_converter.word2cj.get("你") is None:
            raise RuntimeError("the Cangjie mapping did not load from the hub-cache layout")
        return torch.cat(samples + [chinese], dim=1)

    _write_conds(ChatterboxMultilingualTTS, dest, seed, MULTILINGUAL_TEXT_VOCAB, sample_ids)


def _build_turbo(dest: Path, seed: int) -> None:
    from chatterbox.models.s3gen import S3Gen
    from chatterbox.models.t3 import T3
    from chatterbox.models.voice_encoder import VoiceEncoder
    from chatterbox.tts_turbo import ChatterboxTurboTTS

    hp = _turbo_t3_config()
    _write_module(seed, VoiceEncoder, _save_safetensors, dest / "ve.safetensors")
    _write_module(seed, lambda: T3(_turbo_t3_config()), _save_safetensors,
                  dest / "t3_turbo_v1.safetensors")
    _write_module(seed, lambda: S3Gen(meanflow=True), _save_safetensors,
                  dest / "s3gen_meanflow.safetensors")
    write_gpt2_tokenizer(dest, hp.text_tokens_dict_size)

    def sample_ids(model):
        if len(model.tokenizer) != hp.text_tokens_dict_size:
            raise RuntimeError(f"turbo tokenizer has {len(model.tokenizer)} tokens")
        return model.tokenizer("Hello, world! [laugh] ~{}", return_tensors="pt").input_ids

    _write_conds(ChatterboxTurboTTS, dest, seed, hp.text_tokens_dict_size, sample_ids)


def _write_conds(model_cls, dest: Path, seed: int, vocab_size: int, sample_ids: Callable) -> None:
    """Load the checkpoint written so far with the library's own from_local, compute the
    built-in voice with its own prepare_conditionals, and save it as conds.pt."""
    import torch

    with _timed(f"{model_cls.__name__}.from_local"):
        model = model_cls.from_local(dest, "cpu")
    ids = sample_ids(model)
    if int(ids.max()) >= vocab_size or int(ids.min()) < 0:
        raise RuntimeError(f"tokenizer produced ids outside [0, {vocab_size}): {ids.tolist()}")
    with tempfile.TemporaryDirectory(prefix="chatterbox-ref-") as tmp, _timed("prepare_conditionals"):
        wav_path = Path(tmp) / "reference.wav"
        write_wav(wav_path, synthetic_voice(seed=seed), REFERENCE_SR)
        torch.manual_seed(seed)
        model.prepare_conditionals(str(wav_path))
    conds_path = dest / "conds.pt"
    model.conds.save(conds_path)
    del model
    _release_memory()
    # Readers: Conditionals.load (weights_only=True) and ChatterboxVC.from_local (plain load).
    loaded = _check_conds(conds_path)
    logger.info("  conds.pt: t3 %s, gen %s", sorted(loaded["t3"]), sorted(loaded["gen"]))


def _check_conds(path: Path) -> dict:
    import torch

    safe = torch.load(path, map_location="cpu", weights_only=True)
    plain = torch.load(path, map_location="cpu", weights_only=False)
    for states in (safe, plain):
        if set(states) != {"t3", "gen"} or states["t3"].get("speaker_emb") is None:
            raise RuntimeError(f"unexpected conds layout in {path}: {sorted(states)}")
    return safe


# --------------------------------------------------------------------------- tokenizers


def _char_ranges(*ranges: tuple[int, int]) -> list[str]:
    return [chr(c) for lo, hi in ranges for c in range(lo, hi + 1)]


# Printable ASCII without the space (EnTokenizer turns spaces into [SPACE]), Latin-1 and
# Latin Extended-A letters and signs, and the typographic punctuation punc_norm leaves.
ENGLISH_CHARS = _char_ranges((0x21, 0x7E), (0xA1, 0xAC), (0xAE, 0xFF), (0x100, 0x17F),
                             (0x2010, 0x2027))

# The multilingual front end lowercases and NFKD-decomposes, so combining marks come
# separately; scripts of the supported languages, kana and Hangul jamo (Korean is
# decomposed), CJK and fullwidth punctuation. Chinese characters become [cj_*] codes.
MULTILINGUAL_CHARS = _char_ranges(
    (0x21, 0x7E), (0xA1, 0xAC), (0xAE, 0xFF), (0x100, 0x17F), (0x300, 0x36F),  # Latin
    (0x370, 0x3FF),  # Greek
    (0x400, 0x4FF),  # Cyrillic
    (0x591, 0x5F4),  # Hebrew, with points
    (0x600, 0x6FF),  # Arabic
    (0x900, 0x97F),  # Devanagari
    (0x1100, 0x11FF),  # Hangul jamo
    (0x2010, 0x2027), (0x3000, 0x303F),  # punctuation, CJK symbols
    (0x3041, 0x309F), (0x30A0, 0x30FF),  # hiragana, katakana
    (0xFF01, 0xFF5E),  # fullwidth forms
)
CANGJIE_CODE_CHARS = "abcdefghijklmnopqrstuvwxyz."


def _char_vocab(specials: tuple[str, ...], chars: list[str], extra: list[str],
                size: int) -> dict[str, int]:
    """Specials from id 0, then ``extra`` then ``chars``; [START] is pinned at id 255."""
    vocab: dict[str, int] = {}
    next_id = 0
    for token in list(specials) + list(extra) + list(chars):
        if token in vocab:
            continue
        if next_id == START_TEXT_TOKEN:
            next_id += 1
        vocab[token] = next_id
        next_id += 1
    if next_id <= START_TEXT_TOKEN:
        raise ValueError("vocabulary too small to place [START] at 255")
    vocab[SOT] = START_TEXT_TOKEN
    if max(vocab.values()) >= size:
        raise ValueError(f"{len(vocab)} tokens do not fit a text vocabulary of {size}")
    if vocab[EOT] != STOP_TEXT_TOKEN:
        raise AssertionError("[STOP] must be id 0")
    return vocab


def _char_level_tokenizer(vocab: dict[str, int], bracket_tokens: list[str]):
    """A WordLevel model over single characters: every character is its own word, bracketed
    tokens ([SPACE], [en], [cj_a] ...) are matched whole before that, and anything not in
    the vocabulary is [UNK]."""
    from tokenizers import AddedToken, Regex, Tokenizer, models, pre_tokenizers

    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tokenizer.add_special_tokens(
        [AddedToken(t, special=True, normalized=False) for t in bracket_tokens])
    return tokenizer


def write_english_tokenizer(path: Path) -> None:
    vocab = _char_vocab(EN_SPECIALS, ENGLISH_CHARS, [], ENGLISH_TEXT_VOCAB)
    tokenizer = _char_level_tokenizer(vocab, [SOT, *EN_SPECIALS])
    tokenizer.save(str(path))
    logger.info("  tokenizer.json: %d tokens, ids < %d", len(vocab), ENGLISH_TEXT_VOCAB)


def write_multilingual_tokenizer(path: Path, languages: list[str]) -> None:
    tags = [f"[{lang.lower()}]" for lang in languages]
    cangjie = [f"[cj_{c}]" for c in CANGJIE_CODE_CHARS]
    vocab = _char_vocab(EN_SPECIALS, MULTILINGUAL_CHARS, tags + cangjie, MULTILINGUAL_TEXT_VOCAB)
    tokenizer = _char_level_tokenizer(vocab, [SOT, *EN_SPECIALS, *tags, *cangjie])
    tokenizer.save(str(path))
    logger.info("  %s: %d tokens (%d language tags), ids < %d", path.name, len(vocab), len(tags),
                MULTILINGUAL_TEXT_VOCAB)


# A sample of the Cangjie 5 table (traditional), in the file's "glyph<TAB>code" format.
CANGJIE_SAMPLE = (
    "日\ta", "月\tb", "金\tc", "木\td", "水\te", "火\tf", "土\tg", "竹\th", "戈\ti", "十\tj",
    "大\tk", "中\tl", "一\tm", "弓\tn", "人\to", "心\tp", "手\tq", "口\tr", "尸\ts", "廿\tt",
    "山\tu", "女\tv", "田\tw", "卜\ty", "你\tonf", "好\tvnd", "我\thqi", "是\tamyo", "的\thapi",
    "不\tmf", "了\tnn", "在\tklg", "有\tkb", "世\tpt", "界\twoll", "文\tyk", "天\tmk",
    "上\tym", "下\tmy", "小\tnc", "子\tnd", "生\thqm", "國\twirm", "語\tymrr", "言\tymr",
)


def write_cangjie_hub_cache(ckpt_dir: Path) -> Path:
    """Place Cangjie5_TC.json where hf_hub_download(..., cache_dir=ckpt_dir) resolves it
    without a network call (HF_HUB_OFFLINE=1, or any failed metadata request)."""
    repo = ckpt_dir / HUB_REPO_DIR
    snapshot = repo / "snapshots" / HUB_COMMIT
    snapshot.mkdir(parents=True, exist_ok=True)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / HUB_REVISION).write_text(HUB_COMMIT)  # read verbatim: no newline
    target = snapshot / CANGJIE_FILENAME
    target.write_text(json.dumps(list(CANGJIE_SAMPLE), ensure_ascii=False, indent=0) + "\n",
                      encoding="utf-8")
    return target


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table, in GPT-2's id order."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) \
        + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


# Training text for the byte-level BPE merges (any English text will do).
BPE_CORPUS = """
The quick brown fox jumps over the lazy dog. Hello, world! How are you today?
Good morning, and welcome to the station. The next train to the city centre leaves from
platform two in about ten minutes. Please keep your ticket with you until the end of
your journey. She sells sea shells by the sea shore, and the shells she sells are surely
sea shells. It was the best of times, it was the worst of times. We would like to thank
you for calling; your call is important to us and will be answered in the order it was
received. There are three hundred and sixty five days in a year, twelve months, and
fifty two weeks. Thank you for listening, and have a wonderful evening. I think that's
what they're going to say, but we'll see what happens when they've heard the news.
Numbers like 1, 2, 3, 10, 42, 100 and 2025 appear in text as well as names and places.
"""
BPE_MERGES = 400
TURBO_ADDED_TOKENS = ("[laugh]", "[chuckle]", "[cough]", "[sigh]", "[gasp]", "[groan]",
                      "[sniff]", "[clear throat]", "[shush]")


def _train_byte_bpe(text: str, n_merges: int) -> list[tuple[str, str]]:
    """Deterministic byte-level BPE (ties broken by the pair's text)."""
    from collections import Counter

    from tokenizers import pre_tokenizers

    pre = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    words = Counter(piece for line in text.split("\n") for piece, _ in pre.pre_tokenize_str(line))
    splits = {word: list(word) for word in words}
    merges: list[tuple[str, str]] = []
    for _ in range(n_merges):
        pairs: Counter = Counter()
        for word, freq in words.items():
            parts = splits[word]
            for pair in zip(parts, parts[1:]):
                pairs[pair] += freq
        if not pairs:
            break
        best = min(pairs, key=lambda p: (-pairs[p], p))
        if pairs[best] < 2:
            break
        merges.append(best)
        for word, parts in splits.items():
            i, merged = 0, []
            while i < len(parts):
                if i + 1 < len(parts) and (parts[i], parts[i + 1]) == best:
                    merged.append(parts[i] + parts[i + 1])
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            splits[word] = merged
    return merges


def write_gpt2_tokenizer(dest: Path, vocab_size: int = TURBO_TEXT_VOCAB) -> None:
    """A small GPT-2 style tokenizer with exactly ``vocab_size`` tokens: the 256 byte
    symbols, merges learnt from BPE_CORPUS, unused filler entries up to id 50255,
    <|endoftext|> at 50256 (as in GPT-2), then added tokens (tags, reserved) to the size."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

    byte_symbols = list(_bytes_to_unicode().values())
    merges = _train_byte_bpe(BPE_CORPUS, BPE_MERGES)
    eos_id = 50256
    vocab: dict[str, int] = {}
    for token in byte_symbols + [a + b for a, b in merges]:
        vocab.setdefault(token, len(vocab))
    while len(vocab) < eos_id:
        vocab[f"<|unused_{len(vocab)}|>"] = len(vocab)
    vocab[GPT2_EOS] = eos_id
    n_added = vocab_size - len(vocab)
    if n_added < len(TURBO_ADDED_TOKENS):
        raise ValueError(f"turbo vocabulary of {vocab_size} leaves no room for the added tokens")
    added = list(TURBO_ADDED_TOKENS) + [f"<|reserved_{i}|>"
                                         for i in range(n_added - len(TURBO_ADDED_TOKENS))]

    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    tokenizer.add_special_tokens([AddedToken(GPT2_EOS, special=True, normalized=False)])
    tokenizer.add_tokens([AddedToken(t, normalized=False) for t in added])
    if tokenizer.get_vocab_size(with_added_tokens=True) != vocab_size:
        raise AssertionError(f"GPT-2 tokenizer has {tokenizer.get_vocab_size()} tokens")
    tokenizer.save(str(dest / "tokenizer.json"))

    (dest / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False) + "\n", encoding="utf-8")
    (dest / "merges.txt").write_text(
        "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8")
    added_decoder = {str(eos_id): {"content": GPT2_EOS, "special": True}}
    for i, token in enumerate(added, start=eos_id + 1):
        added_decoder[str(i)] = {"content": token, "special": False}
    config = {
        "tokenizer_class": "GPT2Tokenizer",
        "add_prefix_space": False,
        "bos_token": GPT2_EOS,
        "eos_token": GPT2_EOS,
        "unk_token": GPT2_EOS,
        "model_max_length": 2048,  # T3Config.max_text_tokens
        "clean_up_tokenization_spaces": False,
        "added_tokens_decoder": {
            k: {"lstrip": False, "normalized": False, "rstrip": False, "single_word": False, **v}
            for k, v in added_decoder.items()},
    }
    (dest / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n",
                                                encoding="utf-8")
    logger.info("  GPT-2 tokenizer: %d tokens (%d merges, %d added)", vocab_size, len(merges),
                len(added))


# --------------------------------------------------------------------------- reference audio


def synthetic_voice(seconds: float = REFERENCE_SECONDS, sr: int = REFERENCE_SR, seed: int = 0):
    """Speech-like audio: a glottal source with a moving pitch, shaped by vowel formants that
    change every syllable, a 4 Hz syllable envelope, short pauses and some breath noise."""
    import numpy as np

    rng = np.random.default_rng(seed)
    n = int(seconds * sr)
    t = np.arange(n) / sr
    f0 = 125 + 20 * np.sin(2 * np.pi * 0.4 * t) + 8 * np.sin(2 * np.pi * 2.3 * t)
    phase = 2 * np.pi * np.cumsum(f0) / sr
    vowels = np.array([[730, 1090, 2440], [270, 2290, 3010], [530, 1840, 2480],
                       [570, 840, 2410], [300, 870, 2240], [660, 1720, 2410]], dtype=float)
    syllable = 0.25
    n_syll = int(np.ceil(seconds / syllable)) + 1
    choice = rng.integers(0, len(vowels), n_syll)
    idx = np.minimum((t / syllable).astype(int), n_syll - 2)
    frac = (t / syllable) - idx
    formants = vowels[choice[idx]] * (1 - frac[:, None]) + vowels[choice[idx + 1]] * frac[:, None]
    voiced = np.zeros(n)
    for k in range(1, 40):
        freq = k * f0
        gain = np.exp(-((freq[:, None] - formants) ** 2) / (2 * 90.0 ** 2)).sum(axis=1) / k ** 0.5
        gain *= freq < sr / 2 - 500
        voiced += gain * np.sin(k * phase)
    envelope = 0.55 - 0.45 * np.cos(2 * np.pi * t / syllable)
    pauses = np.ones(n)
    for start in rng.uniform(0.5, seconds - 0.5, 3):
        pauses[(t > start) & (t < start + 0.18)] = 0.05
    noise = rng.standard_normal(n) * 0.02
    audio = (voiced * envelope + noise) * pauses
    return (0.5 * audio / np.abs(audio).max()).astype(np.float32)


def write_wav(path: Path, samples, sr: int) -> None:
    import wave

    import numpy as np

    pcm = (np.clip(samples, -1.0, 1.0) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as handle:
        handle.setnchannels(1)
        handle.setsampwidth(2)
        handle.setframerate(sr)
        handle.writeframes(pcm.tobytes())


# --------------------------------------------------------------------------- helpers


def _release_memory() -> None:
    gc.collect()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _peak_rss_bytes() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def _rss_bytes() -> int:
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return 0
    return pages * os.sysconf("SC_PAGE_SIZE")


def _human(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size} B"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--out", type=Path, help="build into this directory")
    where.add_argument("--cached", action="store_true",
                       help=f"build into (or reuse) the cache under ${CACHE_ENV} "
                            f"(default {DEFAULT_CACHE_DIR}); prints the directory last")
    parser.add_argument("--variant", choices=VARIANTS + ("all",), default="standard")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--force", action="store_true",
                        help="rebuild even if complete / overwrite files in a non-empty --out")
    parser.add_argument("--prune", action="store_true",
                        help="with --cached: delete cached builds of the variant under other keys")
    args = parser.parse_args(argv)
    if args.prune and not args.cached:
        parser.error("--prune needs --cached")

    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)s: %(message)s")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TQDM_DISABLE", "1")

    variants = VARIANTS if args.variant == "all" else (args.variant,)
    started = time.perf_counter()
    paths = []
    try:
        for variant in variants:
            if args.cached:
                paths.append(_build_cached(variant, args.seed, force=args.force, prune=args.prune))
            else:
                out = args.out / variant if args.variant == "all" else args.out
                paths.append(build_into(out, variant, args.seed, force=args.force))
            _release_memory()
    except FileExistsError as exc:
        parser.error(str(exc))
    logger.info("done in %.1f s (peak RSS %s)", time.perf_counter() - started,
                _human(_peak_rss_bytes()))
    for path in paths:
        print(path, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
