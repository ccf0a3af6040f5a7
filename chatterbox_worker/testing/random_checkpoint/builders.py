"""Per-variant weights: each builder instantiates the real library modules with a seeded
initialisation, saves their ``state_dict()`` under the names ``from_local`` reads, then loads
the checkpoint back with the library's own loader to compute the built-in voice."""
from __future__ import annotations

import contextlib
import json
import logging
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from chatterbox_worker.settings import set_library_env_defaults
from chatterbox_worker.testing.random_checkpoint.key import cache_key, package_version
from chatterbox_worker.testing.random_checkpoint.layout import (
    COMPLETE_MARKER,
    ENGLISH_TEXT_VOCAB,
    FILES,
    MULTILINGUAL_TEXT_VOCAB,
    START_TEXT_TOKEN,
    STOP_TEXT_TOKEN,
    TURBO_TEXT_VOCAB,
    check_variant,
)
from chatterbox_worker.testing.random_checkpoint.reference_audio import (
    REFERENCE_SR,
    synthetic_voice,
    write_wav,
)
from chatterbox_worker.testing.random_checkpoint.resources import (
    human,
    peak_rss_bytes,
    release_memory,
    rss_bytes,
)
from chatterbox_worker.testing.random_checkpoint.tokenizers import (
    write_cangjie_hub_cache,
    write_english_tokenizer,
    write_gpt2_tokenizer,
    write_multilingual_tokenizer,
)

logger = logging.getLogger(__name__)


def build_variant(variant: str, dest: Path, seed: int = 0) -> None:
    """Write every file of ``variant`` into the existing directory ``dest``; the
    ``.complete`` marker is written last, after the checkpoint has been loaded back."""
    check_variant(variant)
    dest = Path(dest)
    set_library_env_defaults()
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
        "chatterbox-tts": package_version("chatterbox-tts"),
        "torch": package_version("torch"),
        "files": files,
    }
    (dest / COMPLETE_MARKER).write_text(json.dumps(marker, indent=2) + "\n")
    for rel, size in files.items():
        logger.info("  %-60s %10s", rel, human(size))
    release_memory()
    logger.info("%s checkpoint: %s in %d files, built in %.1f s (peak RSS so far %s, RSS now %s)",
                variant, human(sum(files.values())), len(files),
                time.perf_counter() - started, human(peak_rss_bytes()), human(rss_bytes()))


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
        release_memory()


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
    release_memory()
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
