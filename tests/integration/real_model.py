"""Constants and helpers for tests on the real model."""
from __future__ import annotations

import torch

# Each generation is bounded to a handful of speech tokens: random weights rarely stop,
# and on CPU every token costs about 0.4 s of T3 plus S3Gen time.
TINY_TOKENS = 4
SHORT_VOICE_SECONDS = 2.5
N_SHORT_VOICES = 5


def conditionals_tensors(conds) -> dict[str, torch.Tensor]:
    """Every tensor that defines a voice, by name (T3's derived prompt embedding excluded)."""
    fields = {f"t3.{k}": v for k, v in vars(conds.t3).items() if k != "cond_prompt_speech_emb"}
    fields.update({f"gen.{k}": v for k, v in conds.gen.items()})
    return {k: v.detach().cpu() for k, v in fields.items() if torch.is_tensor(v)}


def bitwise_equal(a, b) -> bool:
    ta, tb = conditionals_tensors(a), conditionals_tensors(b)
    return ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)
