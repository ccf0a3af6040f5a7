"""Constants and helpers for tests on the real model."""
from __future__ import annotations

import contextlib

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


@contextlib.contextmanager
def library_s3gen_methods(s3gen):
    """The library's own S3Gen methods (drawing from the global RNG) for the duration.

    ``s3gen_noise.install`` sets its methods on the instances; removing them exposes the
    classes' methods again, and they are put back after.
    """
    source = s3gen.mel2wav.m_source
    owners = [(s3gen, "flow_inference"), (s3gen.flow.decoder, "forward"), (source, "forward"),
              (source.l_sin_gen, "forward")]
    saved = [(obj, name, obj.__dict__.pop(name)) for obj, name in owners]
    try:
        yield
    finally:
        for obj, name, method in saved:
            setattr(obj, name, method)
