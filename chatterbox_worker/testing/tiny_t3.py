"""A T3 with a tiny random backbone and the real vocabularies, for the engine's tests and benchmarks.

With so little arithmetic per token, framework overhead dominates a decode step, as it does
on a GPU, and a test runs in seconds. Its conditionals and text ids are random, of the
shapes the library expects.
"""
from __future__ import annotations

import torch

TINY_CONFIG_NAME = "engine_tiny_{variant}_{layers}x{width}"


def build_tiny_t3(variant: str = "standard", *, layers: int = 2, width: int = 256, seed: int = 0):
    """A T3 with a tiny random backbone (``layers`` x ``width``) and the real vocabularies.

    With so little arithmetic per token, framework overhead dominates a decode step, as it
    does on a GPU. The multilingual analyzer reads layers 9, 12 and 13, so that variant
    needs at least 14 layers.
    """
    from chatterbox.models.t3 import T3
    from chatterbox.models.t3.llama_configs import LLAMA_CONFIGS
    from chatterbox.models.t3.modules.t3_config import T3Config

    gpt = variant == "turbo"
    # The multilingual analyzer reads heads up to 15: keep 16 heads, narrower ones.
    heads = 16 if variant == "multilingual" else max(1, width // 64)
    name = TINY_CONFIG_NAME.format(variant=variant, layers=layers, width=width)
    base = LLAMA_CONFIGS["GPT2_medium" if gpt else "Llama_520M"]
    if gpt:
        config = {**base, "n_embd": width, "hidden_size": width, "n_layer": layers, "n_head": heads}
    else:
        config = {**base, "hidden_size": width, "intermediate_size": 4 * width, "num_hidden_layers": layers,
                  "num_attention_heads": heads, "num_key_value_heads": heads, "head_dim": width // heads}
    LLAMA_CONFIGS[name] = config
    if variant == "multilingual":
        hp = T3Config.multilingual()
    elif gpt:
        hp = T3Config(text_tokens_dict_size=50276)
        hp.speech_tokens_dict_size = 6563
        hp.input_pos_emb = None
        hp.speech_cond_prompt_len = 375
        hp.use_perceiver_resampler = False
        hp.emotion_adv = False
    else:
        hp = T3Config.english_only()
    hp.llama_config_name = name
    # The library's perceiver resampler is built for width 1024 only.
    hp.use_perceiver_resampler = hp.use_perceiver_resampler and width == 1024
    torch.manual_seed(seed)
    return T3(hp).eval()


def tiny_conditionals(t3, seed: int = 0):
    """Random conditionals of the right shapes for :func:`build_tiny_t3`."""
    from chatterbox.models.t3.modules.cond_enc import T3Cond

    g = torch.Generator().manual_seed(seed)
    hp = t3.hp
    prompt = torch.randint(0, 6561, (1, hp.speech_cond_prompt_len), generator=g)
    return T3Cond(speaker_emb=torch.randn(1, hp.speaker_embed_size, generator=g),
                  cond_prompt_speech_tokens=prompt,
                  emotion_adv=0.5 * torch.ones(1, 1, 1))


def tiny_text_tokens(t3, n: int = 12, seed: int = 0) -> torch.Tensor:
    """Text ids framed by the start and stop tokens, one row (the engine adds the CFG row)."""
    g = torch.Generator().manual_seed(seed)
    hp = t3.hp
    body = torch.randint(1, min(hp.text_tokens_dict_size, 700), (1, n), generator=g)
    body[body == hp.start_text_token] = 1
    return torch.cat([torch.tensor([[hp.start_text_token]]), body, torch.tensor([[hp.stop_text_token]])], dim=1)


def tiny_sampling(seed: int, n: int, temperature: float = 0.8):
    """The library's usual sampling settings for a tiny-T3 job of ``n`` tokens."""
    from chatterbox_worker.engine import SamplingParams

    return SamplingParams(max_new_tokens=n, seed=seed, temperature=temperature, cfg_weight=0.5,
                          repetition_penalty=1.2, min_p=0.05, top_p=1.0)


def tiny_engine_with_jobs(count: int, n: int, max_slots: int = 4):
    """A decode engine over a 2-layer tiny T3, and ``count`` seeded jobs of ``n`` tokens
    (conditionals, text, sampling) ready to submit."""
    from chatterbox_worker.engine import EngineConfig, T3Engine

    t3 = build_tiny_t3("standard", layers=2)
    engine = T3Engine(t3, "standard", EngineConfig(max_slots=max_slots, max_context_tokens=512))
    cond = tiny_conditionals(t3)
    return engine, [(cond, tiny_text_tokens(t3, seed=i), tiny_sampling(seed=i, n=n)) for i in range(count)]
