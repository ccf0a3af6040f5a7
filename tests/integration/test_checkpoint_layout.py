"""The random-weights checkpoint from scripts/make_random_checkpoint.py
(``chatterbox_worker.testing.random_checkpoint``).

Each variant directory holds exactly the files its ``from_local`` reads, and the library's
own loaders read them: ChatterboxTTS and ChatterboxVC (standard), ChatterboxMultilingualTTS
and ChatterboxTurboTTS (slow: one more 3 GB model each). The checkpoint is built once and
cached; these tests reuse it.
"""
from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from chatterbox_worker.testing import random_checkpoint
from chatterbox_worker.testing.demo_library import REPO_ROOT as REPO

pytestmark = pytest.mark.integration

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")

SCRIPT = REPO / "scripts" / "make_random_checkpoint.py"
BUILDER = "chatterbox_worker.testing.random_checkpoint"

STANDARD_FILES = {"ve.safetensors", "t3_cfg.safetensors", "s3gen.safetensors", "tokenizer.json",
                  "conds.pt", ".complete"}
MULTILINGUAL_FILES = {"ve.pt", "t3_mtl23ls_v2.safetensors", "s3gen.pt",
                      "grapheme_mtl_merged_expanded_v1.json", "conds.pt", ".complete"}
TURBO_FILES = {"ve.safetensors", "t3_turbo_v1.safetensors", "s3gen_meanflow.safetensors",
               "tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "conds.pt",
               ".complete"}
HUB_CACHE = "models--ResembleAI--chatterbox"

ENGLISH_VOCAB, MULTILINGUAL_VOCAB, TURBO_VOCAB = 704, 2454, 50276
START_TEXT, STOP_TEXT = 255, 0


def cache_key_in_a_fresh_interpreter(seed: int) -> str:
    code = f"from {BUILDER} import cache_key; print(cache_key({seed}))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    return out.stdout.strip()


def files_under(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def script():
    return random_checkpoint


@pytest.fixture(scope="module")
def standard_dir(script) -> Path:
    return script.ensure_checkpoint("standard")


@pytest.fixture(scope="module")
def tts(standard_dir):
    from chatterbox.tts import ChatterboxTTS

    model = ChatterboxTTS.from_local(standard_dir, "cpu")
    yield model
    del model
    gc.collect()


def test_script_import_is_cheap():
    code = (f"import sys, {BUILDER}; "
            "heavy = [n for n in ('torch', 'chatterbox', 'transformers') if n in sys.modules]; "
            "print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_standard_layout(script, standard_dir):
    assert files_under(standard_dir) == STANDARD_FILES
    assert set(script.expected_files("standard")) == STANDARD_FILES
    marker = json.loads((standard_dir / ".complete").read_text())
    assert marker["variant"] == "standard" and marker["seed"] == 0
    assert marker["files"] == {name: (standard_dir / name).stat().st_size
                               for name in STANDARD_FILES - {".complete"}}


def test_cache_key_is_stable_and_reused(script, standard_dir, monkeypatch):
    from chatterbox_worker.testing.random_checkpoint import cache

    key = script.cache_key(0)
    assert key == script.cache_key(0) == cache_key_in_a_fresh_interpreter(0)
    assert script.cache_key(1) != key
    assert standard_dir.name == f"standard-{key}"
    written = {name: (standard_dir / name).stat().st_mtime_ns for name in STANDARD_FILES}

    def no_build(*args, **kwargs):
        raise AssertionError("a complete checkpoint was built again")

    # Complete: neither a child build nor an in-process one may run, and no file is rewritten.
    monkeypatch.setattr(cache, "subprocess", SimpleNamespace(run=no_build))
    monkeypatch.setattr(cache, "build_variant", no_build)
    assert script.ensure_checkpoint("standard") == standard_dir
    assert cache.build_cached("standard", 0) == standard_dir
    assert {name: (standard_dir / name).stat().st_mtime_ns for name in STANDARD_FILES} == written


def test_cli_cached_prints_the_directory_last(standard_dir):
    out = subprocess.run([sys.executable, str(SCRIPT), "--cached", "--variant", "standard"],
                         capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip().splitlines()[-1] == str(standard_dir)


def test_tts_from_local_loads_the_builtin_voice(tts):
    conds = tts.conds
    assert conds is not None
    assert tuple(conds.t3.speaker_emb.shape) == (1, 256)
    assert conds.t3.cond_prompt_speech_tokens.shape[0] == 1
    assert 0 < conds.t3.cond_prompt_speech_tokens.shape[1] <= tts.t3.hp.speech_cond_prompt_len
    assert {"prompt_token", "prompt_feat", "embedding"} <= set(conds.gen)


def test_conds_read_safely_and_plainly(standard_dir):
    import torch
    from chatterbox.tts import Conditionals

    safe = Conditionals.load(standard_dir / "conds.pt")
    plain = torch.load(standard_dir / "conds.pt", map_location="cpu", weights_only=False)
    assert torch.equal(safe.t3.speaker_emb, plain["t3"]["speaker_emb"])
    assert torch.equal(safe.gen["prompt_token"], plain["gen"]["prompt_token"])


def test_english_tokenizer(tts):
    tokenizer = tts.tokenizer
    vocab = tokenizer.tokenizer.get_vocab()
    assert vocab["[START]"] == tts.t3.hp.start_text_token == START_TEXT
    assert vocab["[STOP]"] == tts.t3.hp.stop_text_token == STOP_TEXT
    assert tts.t3.hp.text_tokens_dict_size == ENGLISH_VOCAB

    ids = tokenizer.encode("Hello, world!")
    assert len(ids) == len("Hello, world!")  # one token per character, [SPACE] for the space
    assert ids[6] == vocab["[SPACE]"]
    assert all(0 <= i < ENGLISH_VOCAB for i in ids)
    assert START_TEXT not in ids and STOP_TEXT not in ids  # the model adds them, not the text
    assert tokenizer.decode(ids) == "Hello, world!"
    tokens = tokenizer.text_to_tokens("Hello, world!")
    assert tuple(tokens.shape) == (1, len(ids))

    odd = tokenizer.encode("Ünïcödé — 日本語\t“quotes” ☃ 123")
    assert all(0 <= i < ENGLISH_VOCAB for i in odd)
    assert vocab["[UNK]"] in odd


def test_tiny_synthesis_through_the_real_modules(tts):
    """Three speech tokens through T3 (with CFG, as generate does) and S3Gen + HiFiGAN."""
    import torch
    import torch.nn.functional as F

    text = tts.tokenizer.text_to_tokens("Hello, world!")
    text = torch.cat([text, text])
    text = F.pad(text, (1, 0), value=tts.t3.hp.start_text_token)
    text = F.pad(text, (0, 1), value=tts.t3.hp.stop_text_token)
    torch.manual_seed(0)
    speech = tts.t3.inference(t3_cond=tts.conds.t3, text_tokens=text, max_new_tokens=3,
                              cfg_weight=0.5)[0]
    assert speech.numel() >= 1
    speech = speech[speech < 6561]
    if speech.numel() == 0:
        speech = torch.tensor([0])
    wav, _ = tts.s3gen.inference(speech_tokens=speech, ref_dict=tts.conds.gen)
    assert wav.ndim == 2 and wav.shape[1] > 0
    assert bool(torch.isfinite(wav).all())


def test_vc_from_local_loads_the_builtin_voice(standard_dir):
    from chatterbox.vc import ChatterboxVC

    vc = ChatterboxVC.from_local(standard_dir, "cpu")
    try:
        assert vc.ref_dict is not None
        assert {"prompt_token", "prompt_feat", "embedding"} <= set(vc.ref_dict)
    finally:
        del vc
        gc.collect()


@pytest.mark.slow
def test_multilingual_from_local(script, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    ckpt = script.ensure_checkpoint("multilingual")
    files = files_under(ckpt)
    hub = {f for f in files if f.startswith(HUB_CACHE + "/")}
    assert files - hub == MULTILINGUAL_FILES
    assert len(hub) == 2 and any(f.endswith("/Cangjie5_TC.json") for f in hub)

    from chatterbox.mtl_tts import SUPPORTED_LANGUAGES, ChatterboxMultilingualTTS

    model = ChatterboxMultilingualTTS.from_local(ckpt, "cpu")
    try:
        assert model.conds is not None
        assert model.t3.hp.text_tokens_dict_size == MULTILINGUAL_VOCAB
        vocab = model.tokenizer.tokenizer.get_vocab()
        assert (vocab["[START]"], vocab["[STOP]"]) == (START_TEXT, STOP_TEXT)
        for lang in SUPPORTED_LANGUAGES:
            ids = model.tokenizer.encode("Hello, world!", language_id=lang)
            assert ids[0] == vocab[f"[{lang}]"]
            assert all(0 <= i < MULTILINGUAL_VOCAB for i in ids)
        assert model.tokenizer.cangjie_converter.word2cj  # resolved from the hub-cache layout
        chinese = model.tokenizer.encode("你好", language_id="zh")
        assert vocab["[cj_.]"] in chinese
    finally:
        del model
        gc.collect()


@pytest.mark.slow
def test_turbo_from_local(script):
    ckpt = script.ensure_checkpoint("turbo")
    assert files_under(ckpt) == TURBO_FILES

    from chatterbox.tts_turbo import ChatterboxTurboTTS

    model = ChatterboxTurboTTS.from_local(ckpt, "cpu")
    try:
        assert model.conds is not None
        assert len(model.tokenizer) == model.t3.hp.text_tokens_dict_size == TURBO_VOCAB
        ids = model.tokenizer("Hello, world! [laugh]", return_tensors="pt", padding=True,
                              truncation=True).input_ids
        assert ids.shape[0] == 1 and 0 <= int(ids.min()) and int(ids.max()) < TURBO_VOCAB
    finally:
        del model
        gc.collect()
