"""S3Gen windows of unequal length in one call: the flow decoder batched, the rest per window.

S3Gen is three parts, and only one of them can take windows of different lengths side by
side without changing any window's audio beyond float rounding:

* **The token encoder, per window.** Its pre-lookahead convolution reads the next three
  tokens. At a window's end, alone, that is zero padding; in a right-padded batch it is
  the padding's input projection (bias and positions, not zero). A padded row would not be
  its solo self, so each window runs the library's own encoder alone. It is cheap: one pass,
  against the decoder's ten CFG-pair passes.
* **The flow-matching decoder, batched.** It is most of S3Gen's time (ten Euler steps, each
  an estimator pass over a classifier-free-guidance pair). It is row-independent under
  right padding: its convolutions are causal or read masked (zeroed) frames, it normalises
  each frame alone (LayerNorm), its attention masks each row's padding out, and every block
  multiplies by the row's mask, so a padded frame stays zero and no real frame reads one.
  The windows' inputs are padded to the longest and solved in one batch.
* **The vocoder, per window.** Its STFT reflect-pads the signal's ends, so padding would
  reach the audio.

How: each window runs ``s3gen.flow_inference`` alone (its own encoder, its own noise, drawn
as alone), but its Euler solve is only recorded (:func:`deferring`); the recorded solves run
as one batch, and each window's mel is cut from its row and handed to its own vocoder,
which draws the rest of the window's noise from the same generators, in the same order as
alone. Measured in ``tests/integration/test_s3gen_ragged.py`` against each window decoded
alone; whether it is faster is measured by ``bench/s3gen_ragged.py``.
"""
from __future__ import annotations

import contextlib
import threading
import types
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from chatterbox_worker.s3gen import noise as s3gen_noise

_local = threading.local()
# The decoder's two Euler solvers (CFG for the standard models, plain for Turbo's mean flow).
SOLVERS = ("solve_euler", "basic_euler")


@dataclass
class DeferredSolve:
    """One window's Euler solve, recorded instead of run: its inputs, frames last."""

    solver: str
    x: torch.Tensor  # [1, 80, T] the starting noise
    t_span: torch.Tensor
    mu: torch.Tensor
    mask: torch.Tensor  # [1, 1, T]
    spks: torch.Tensor
    cond: torch.Tensor
    meanflow: bool

    @property
    def frames(self) -> int:
        return self.x.size(-1)


@contextlib.contextmanager
def deferring(into: list[DeferredSolve]) -> Iterator[None]:
    """The decoder's solves on this thread are recorded into ``into`` and answered with zeros."""
    previous = getattr(_local, "deferred", None)
    _local.deferred = into
    try:
        yield
    finally:
        _local.deferred = previous


def _deferrable(decoder, name: str, solve: Callable) -> Callable:
    def run(self, x, t_span, mu, mask, spks, cond, meanflow=False):
        deferred = getattr(_local, "deferred", None)
        if deferred is None:
            return solve(x, t_span=t_span, mu=mu, mask=mask, spks=spks, cond=cond,
                         **({"meanflow": meanflow} if name == "solve_euler" else {}))
        deferred.append(DeferredSolve(name, x, t_span, mu, mask, spks, cond, meanflow))
        return torch.zeros_like(x)

    return types.MethodType(run, decoder)


def install(s3gen) -> None:
    """Let one S3Gen's flow decoder record its solves (:func:`deferring`); without that, unchanged."""
    decoder = s3gen.flow.decoder
    if getattr(decoder, "_solvers", None) is not None:
        return
    decoder._solvers = {name: getattr(decoder, name) for name in SOLVERS}
    for name, solve in decoder._solvers.items():
        setattr(decoder, name, _deferrable(decoder, name, solve))


def _padded(tensors: Sequence[torch.Tensor], frames: int) -> torch.Tensor:
    return torch.cat([F.pad(t, (0, frames - t.size(-1))) for t in tensors])


def solve_together(decoder, solves: Sequence[DeferredSolve]) -> list[torch.Tensor]:
    """The recorded solves as one right-padded batch; each row's result at its own length."""
    first = solves[0]
    if any(s.solver != first.solver or s.meanflow != first.meanflow or not torch.equal(s.t_span, first.t_span)
           for s in solves):
        raise ValueError("windows with different flow steps or solvers cannot share a decoder call")
    frames = max(s.frames for s in solves)
    kwargs = {"meanflow": first.meanflow} if first.solver == "solve_euler" else {}
    x = decoder._solvers[first.solver](
        _padded([s.x for s in solves], frames), t_span=first.t_span, mu=_padded([s.mu for s in solves], frames),
        mask=_padded([s.mask for s in solves], frames), spks=torch.cat([s.spks for s in solves]),
        cond=_padded([s.cond for s in solves], frames), **kwargs)
    return [x[i:i + 1, :, :s.frames] for i, s in enumerate(solves)]


@dataclass
class RaggedWindow:
    """What the ragged decode needs of one window: its tokens [n], its voice's S3Gen
    conditionals and its noise generators (:func:`s3gen_noise.generators`)."""

    tokens: torch.Tensor
    gen: dict[str, Any]
    generators: dict[str, torch.Generator]


def decode_ragged(s3gen, windows: Sequence[RaggedWindow], n_cfm_timesteps: int | None = None) -> list[torch.Tensor]:
    """Each window's waveform [1, samples], as the library's ``S3Gen.inference`` makes it alone."""
    kwargs = {} if n_cfm_timesteps is None else {"n_cfm_timesteps": n_cfm_timesteps}
    solves: list[DeferredSolve] = []
    generated_frames = []
    with deferring(solves):
        for window in windows:
            with s3gen_noise.drawing_from(window.generators):
                placeholder = s3gen.flow_inference(window.tokens[None], ref_dict=dict(window.gen), finalize=True,
                                                   **kwargs)
            generated_frames.append(placeholder.size(-1))
    rows = solve_together(s3gen.flow.decoder, solves)
    wavs = []
    for window, row, n in zip(windows, rows, generated_frames):
        # S3Gen.inference after its flow: the generated frames (past the prompt's), the vocoder,
        # and the fade that hides the prompt's spill-over, with the window's own noise.
        mel = row[:, :, row.size(-1) - n:].to(dtype=s3gen.dtype)
        with s3gen_noise.drawing_from(window.generators):
            wav, _ = s3gen.hift_inference(mel, None)
        wav[:, :len(s3gen.trim_fade)] *= s3gen.trim_fade
        wavs.append(wav)
    return wavs
