"""Constants and helpers for tests on the real model."""
from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

# Each generation is bounded to a handful of speech tokens: random weights rarely stop,
# and on CPU every token costs about 0.4 s of T3 plus S3Gen time.
TINY_TOKENS = 4
# S3Gen's flow decoder runs over the prompt's mel frames as well as the new ones, so its CPU
# cost grows with the prompt (about 3 s per decode at 2.5 s of prompt, 14 s at 10 s). Two
# seconds still cover the voice encoder's 1.6 s partial window.
SHORT_VOICE_SECONDS = 2.0
N_SHORT_VOICES = 5


def run_in_threads(count: int, target) -> None:
    """``target(i)`` for i in range(count), each on its own thread; returns when all are done."""
    threads = [threading.Thread(target=target, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def write_prompt(samples: np.ndarray, sr: int, path: Path, sample_rate: int,
                 subtype: str = "FLOAT") -> np.ndarray:
    """Write ``samples`` (at ``sr``) to a WAV at ``sample_rate``; return the samples written.

    The file is what the library's own path reads; the returned array is what the array
    path is given, so that both start from the same audio.
    """
    if sample_rate != sr:
        import librosa

        samples = librosa.resample(samples, orig_sr=sr, target_sr=sample_rate)
    sf.write(path, samples, sample_rate, subtype=subtype)
    return samples


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


def seed_everything(seed: int) -> None:
    """Seed torch's process-global RNGs, as the library's own seeded runs are seeded.

    Nothing in the worker draws from them (T3 jobs and S3Gen decodes have their own
    generators); the tests seed the library's loops with this to compare.
    """
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


@contextlib.contextmanager
def alignment_hooks_released(module: torch.nn.Module) -> Iterator[None]:
    """Undo what an ``AlignmentStreamAnalyzer`` leaves on the transformer once the block ends.

    For calls of the library's own multilingual ``T3.inference`` (the engine registers no
    hooks). The library builds a new analyzer on every such call. Each one registers forward
    hooks on attention layers and never removes them, so repeated library calls would pile
    up hooks (and the analyzers they keep alive) and run all of them on every forward pass.
    It also switches the attention implementation to eager with ``output_attentions``; the
    next analyzer does that again before its first forward pass, so restoring the setting
    changes no result.
    """
    before = {sub: set(sub._forward_hooks) for sub in module.modules()}
    config = getattr(module, "config", None)
    saved_config = None
    if config is not None:
        saved_config = (config._attn_implementation, config.output_attentions)
    try:
        yield
    finally:
        for sub, keys in before.items():
            for key in set(sub._forward_hooks) - keys:
                # What RemovableHandle.remove() deletes.
                del sub._forward_hooks[key]
                getattr(sub, "_forward_hooks_with_kwargs", {}).pop(key, None)
                getattr(sub, "_forward_hooks_always_called", {}).pop(key, None)
        if saved_config is not None:
            # Implementation first: output_attentions=True is refused on a non-eager one.
            config._attn_implementation, config.output_attentions = saved_config
