"""The checkpoint's text tokenizers, built offline: character-level WordLevel vocabularies for
the English and multilingual front ends, a sample Cangjie table for Chinese, and a small
GPT-2 byte-level BPE for Turbo. They cover the characters the library's text front ends
produce and map anything else to [UNK]."""
from __future__ import annotations

import json
import logging
from pathlib import Path

from chatterbox_worker.testing.random_checkpoint.layout import (
    CANGJIE_FILENAME,
    EN_SPECIALS,
    ENGLISH_TEXT_VOCAB,
    EOT,
    GPT2_EOS,
    HUB_COMMIT,
    HUB_REPO_DIR,
    HUB_REVISION,
    MULTILINGUAL_TEXT_VOCAB,
    SOT,
    START_TEXT_TOKEN,
    STOP_TEXT_TOKEN,
    TURBO_TEXT_VOCAB,
    UNK,
)

logger = logging.getLogger(__name__)


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

