"""S3Gen's random draws from one call's own generators instead of torch's global RNG.

S3Gen draws noise in four places: the flow's starting point (``CausalConditionalCFM.forward``),
Turbo's mean-flow noise (``S3Gen.flow_inference``), and the vocoder's source (``SineGen``'s
phases and noise, ``SourceModuleHnNSF``'s noise). The library takes all of them from torch's
process-global RNG. A seeded decode could then be reproduced only under a lock, and anything
else drawing from the global RNG meanwhile (another model's decode, an unseeded job) changed
its audio. :func:`install` gives those modules methods that draw from the generators of the
decode running on the calling thread (:func:`drawing_from`), and from the global RNG as
before when none is running.

Draw for draw they are the library's own: with generators seeded like ``torch.manual_seed``
(:func:`generators`), a decode gives exactly the audio the library gives after
``torch.manual_seed(seed)``. The vocoder's phases come from the CPU generator even on a GPU,
as the library's ``Uniform`` sampler draws them on the CPU.
"""
from __future__ import annotations

import contextlib
import threading
import types
from collections.abc import Iterator

import numpy as np
import torch

_local = threading.local()


def generators(seed: int, device: torch.device | str) -> dict[str, torch.Generator]:
    """One generator per device type a decode on ``device`` draws from, all seeded ``seed``."""
    device = torch.device(device)
    out = {"cpu": torch.Generator().manual_seed(seed)}
    if device.type != "cpu":
        out[device.type] = torch.Generator(device=device).manual_seed(seed)
    return out


@contextlib.contextmanager
def drawing_from(*rows: dict[str, torch.Generator]) -> Iterator[None]:
    """S3Gen calls on this thread draw from these generators (from :func:`generators`) until
    exit: one set per row of the batch, so that each row draws what it would draw alone."""
    previous = getattr(_local, "rows", None)
    _local.rows = rows
    try:
        yield
    finally:
        _local.rows = previous


def _draw(fn, shape, dtype: torch.dtype, device) -> torch.Tensor:
    device = torch.device(device)
    rows = getattr(_local, "rows", None)
    if rows is None:
        return fn(shape, dtype=dtype, device=device)  # no decode of ours: the library's draw
    if len(rows) == 1:
        return fn(shape, generator=rows[0][device.type], dtype=dtype, device=device)
    if shape[0] != len(rows):
        raise ValueError(f"a draw of shape {tuple(shape)} for a batch of {len(rows)} rows")
    return torch.cat([fn((1, *shape[1:]), generator=row[device.type], dtype=dtype, device=device) for row in rows])


def randn(shape, *, dtype: torch.dtype, device) -> torch.Tensor:
    return _draw(torch.randn, shape, dtype, device)


def rand(shape, *, dtype: torch.dtype, device) -> torch.Tensor:
    return _draw(torch.rand, shape, dtype, device)


# -- the library's methods, with their draws taken from here ----------------------------------


@torch.inference_mode()
def _cfm_forward(self, mu, mask, n_timesteps, temperature=1.0, spks=None, cond=None, noised_mels=None,
                 meanflow=False):
    # CausalConditionalCFM.forward
    z = randn(mu.shape, dtype=mu.dtype, device=mu.device)
    if noised_mels is not None:
        prompt_len = mu.size(2) - noised_mels.size(2)
        z[..., prompt_len:] = noised_mels
    t_span = torch.linspace(0, 1, n_timesteps + 1, device=mu.device, dtype=mu.dtype)
    if (not meanflow) and (self.t_scheduler == "cosine"):
        t_span = 1 - torch.cos(t_span * 0.5 * torch.pi)
    if meanflow:
        return self.basic_euler(z, t_span=t_span, mu=mu, mask=mask, spks=spks, cond=cond), None
    return self.solve_euler(z, t_span=t_span, mu=mu, mask=mask, spks=spks, cond=cond, meanflow=meanflow), None


@torch.inference_mode()
def _flow_inference(self, speech_tokens, ref_wav=None, ref_sr=None, ref_dict=None, n_cfm_timesteps=None,
                    finalize=False, speech_token_lens=None):
    # S3Gen.flow_inference; super() there is S3Token2Mel.
    from chatterbox.models.s3gen.s3gen import S3Token2Mel

    n_cfm_timesteps = n_cfm_timesteps or (2 if self.meanflow else 10)
    noise = None
    if self.meanflow:
        # The library draws one row for the whole batch; a row each is what each decodes alone.
        rows = torch.atleast_2d(speech_tokens).size(0)
        noise = randn((rows, 80, speech_tokens.size(-1) * 2), dtype=self.dtype, device=self.device)
    return S3Token2Mel.forward(self, speech_tokens, speech_token_lens=speech_token_lens, ref_wav=ref_wav,
                               ref_sr=ref_sr, ref_dict=ref_dict, n_cfm_timesteps=n_cfm_timesteps,
                               finalize=finalize, noised_mels=noise)


@torch.no_grad()
def _sine_forward(self, f0):
    # SineGen.forward; Uniform(-pi, pi).sample() is low + rand * (high - low), on the CPU.
    F_mat = torch.zeros((f0.size(0), self.harmonic_num + 1, f0.size(-1))).to(f0.device)
    for i in range(self.harmonic_num + 1):
        F_mat[:, i: i + 1, :] = f0 * (i + 1) / self.sampling_rate
    theta_mat = 2 * np.pi * (torch.cumsum(F_mat, dim=-1) % 1)
    low, high = torch.tensor(-np.pi, dtype=torch.float32), torch.tensor(np.pi, dtype=torch.float32)
    phase = rand((f0.size(0), self.harmonic_num + 1, 1), dtype=torch.float32, device=torch.device("cpu"))
    phase_vec = (low + phase * (high - low)).to(F_mat.device)
    phase_vec[:, 0, :] = 0
    sine_waves = self.sine_amp * torch.sin(theta_mat + phase_vec)
    uv = self._f02uv(f0)
    noise_amp = uv * self.noise_std + (1 - uv) * self.sine_amp / 3
    noise = noise_amp * randn(sine_waves.shape, dtype=sine_waves.dtype, device=sine_waves.device)
    sine_waves = sine_waves * uv + noise
    return sine_waves, uv, noise


def _source_forward(self, x):
    # SourceModuleHnNSF.forward
    with torch.no_grad():
        sine_wavs, uv, _ = self.l_sin_gen(x.transpose(1, 2))
        sine_wavs = sine_wavs.transpose(1, 2)
        uv = uv.transpose(1, 2)
    sine_merge = self.l_tanh(self.l_linear(sine_wavs))
    noise = randn(uv.shape, dtype=uv.dtype, device=uv.device) * self.sine_amp / 3
    return sine_merge, noise, uv


def install(s3gen) -> None:
    """Give one S3Gen (standard, multilingual or Turbo) the methods above."""
    s3gen.flow_inference = types.MethodType(_flow_inference, s3gen)
    s3gen.flow.decoder.forward = types.MethodType(_cfm_forward, s3gen.flow.decoder)
    source = s3gen.mel2wav.m_source
    source.forward = types.MethodType(_source_forward, source)
    source.l_sin_gen.forward = types.MethodType(_sine_forward, source.l_sin_gen)
