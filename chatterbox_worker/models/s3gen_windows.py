"""Speech tokens to audio: S3Gen decodes of whole utterances and of streamed windows.

:class:`S3GenDecodingMixin` gives a model its S3Gen lane (one S3Gen call at a time; the
windows that wait meanwhile share the next call where they can, :mod:`s3gen.lane`) and its
noise from each decode's own generators (:mod:`s3gen.noise`), so no decode draws from
torch's global RNG. :func:`stream_windows` cuts a job's token stream into windows and
decodes each as soon as its tokens are drawn.
"""
from __future__ import annotations

import secrets
from collections.abc import Iterable, Iterator, Sequence

import numpy as np
import torch
from chatterbox.models.s3gen.const import S3GEN_SIL

from chatterbox_worker.s3gen import noise as s3gen_noise
from chatterbox_worker.s3gen import ragged as s3gen_ragged
from chatterbox_worker.s3gen.lane import S3GenLane, Window, same_shapes
from chatterbox_worker.settings import get_settings

# Speech-token ids at or above this are control tokens, not audio (the library's own cut).
SPEECH_VOCAB_SIZE = 6561
# Streaming decodes each window of new tokens together with this many earlier tokens, so the
# vocoder sees context across the seam; the context's own audio is cut off again.
STREAM_CONTEXT_TOKENS = 25
STREAM_FADE_SECONDS = 0.02
# S3Gen's output fade-in spans two tokens of audio (40 ms); one token alone crashes it, so a
# shorter sequence is padded with the library's own silence token, as Turbo pads its end.
MIN_DECODABLE_TOKENS = 2


def pad_to_decodable(speech_tokens: torch.Tensor) -> torch.Tensor:
    missing = MIN_DECODABLE_TOKENS - speech_tokens.numel()
    if missing <= 0:
        return speech_tokens
    silence = torch.full((missing,), S3GEN_SIL, dtype=speech_tokens.dtype, device=speech_tokens.device)
    return torch.cat([speech_tokens.reshape(-1), silence])


def speech_only(tokens) -> list[int]:
    """The library's cut of T3's output: control tokens out (start, stop, padding)."""
    return [int(t) for t in tokens if int(t) < SPEECH_VOCAB_SIZE]


def _batched_field(values: list):
    """One S3Gen conditionals field for a batch: as it is when every row has the same tensor
    (S3Gen repeats it), else the rows' tensors stacked."""
    if all(v is values[0] for v in values):
        return values[0]
    return torch.cat(values)


def decode_window(
    model,
    tokens: list[int],
    start: int,
    gen: dict,
    *,
    tail: torch.Tensor | None = None,
    n_cfm_timesteps: int | None = None,
    seed: int | None = None,
    exact_seed: bool = True,
) -> np.ndarray:
    """Audio for ``tokens[start:]`` (plus ``tail``), decoded after up to STREAM_CONTEXT_TOKENS
    earlier tokens so that the vocoder sees context across the seam; the context's own
    audio is cut off again and the seam faded in. ``start`` 0 decodes everything."""
    context_start = max(0, start - STREAM_CONTEXT_TOKENS)
    n_context = len(speech_only(tokens[context_start:start]))
    window = torch.tensor(speech_only(tokens[context_start:]), dtype=torch.long, device=model.device)
    if tail is not None:
        window = torch.cat([window, tail.to(window.device)])
    if window.numel() == 0:
        return np.zeros(0, dtype=np.float32)
    wav = model.run_s3gen(pad_to_decodable(window), gen, seed=seed, exact_seed=exact_seed,
                          n_cfm_timesteps=n_cfm_timesteps)
    if n_context:
        wav = wav[int(round(len(wav) * n_context / window.numel())):].copy()
        fade = min(len(wav), int(STREAM_FADE_SECONDS * model.sr))
        wav[:fade] *= np.linspace(0.0, 1.0, fade, dtype=np.float32)
    return wav


def stream_windows(
    model,
    tokens_in: Iterable[int],
    gen: dict,
    *,
    chunk_size: int,
    watermark: bool,
    tail: torch.Tensor | None = None,
    n_cfm_timesteps: int | None = None,
    seed: int | None = None,
    exact_seed: bool = True,
    first_chunk_size: int | None = None,
) -> Iterator[np.ndarray]:
    """Decode every ``chunk_size`` sampled tokens (the first window: ``first_chunk_size``, so
    that the first audio leaves early); the last window also carries ``tail``.

    Each window is decoded (on the caller's thread) as soon as its tokens are drawn; the
    engine keeps stepping meanwhile. A seeded job seeds each window's S3Gen noise from its
    seed and the window's index, so its audio does not depend on other jobs.
    """
    tokens: list[int] = []
    emitted = 0
    window = 0
    for token in tokens_in:
        tokens.append(token)
        if len(tokens) - emitted >= (first_chunk_size if window == 0 and first_chunk_size else chunk_size):
            wav = decode_window(model, tokens, emitted, gen, n_cfm_timesteps=n_cfm_timesteps,
                                seed=None if seed is None else seed + window, exact_seed=exact_seed)
            emitted, window = len(tokens), window + 1
            yield model._watermark(wav) if watermark else wav
    # A tail (Turbo's silence) always ends the utterance, even right after a full window.
    if tail is not None or len(tokens) > emitted or not tokens:
        wav = decode_window(model, tokens, emitted, gen, tail=tail, n_cfm_timesteps=n_cfm_timesteps,
                            seed=None if seed is None else seed + window, exact_seed=exact_seed)
        yield model._watermark(wav) if watermark else wav


class S3GenDecodingMixin:
    """A model's S3Gen decodes: its lane, its own noise generators, the watermark.

    Mixed in before a Chatterbox library class, which provides ``s3gen``, ``device``,
    ``sr`` and ``watermarker``.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # S3Gen's noise comes from each decode's own generators (s3gen.noise). One S3Gen call
        # runs at a time (two at once only contend for the same cores or GPU stream); the
        # windows that wait meanwhile share the next call where they can (s3gen.lane); the flow
        # decoder may be told to record its solves, for ragged calls (s3gen.ragged).
        s3gen_noise.install(self.s3gen)
        s3gen_ragged.install(self.s3gen)
        settings = get_settings()
        self.s3gen_lane = S3GenLane(self._decode_windows, max_batch=settings.s3gen_max_batch,
                                    ragged=settings.s3gen_ragged_batch)

    def run_s3gen(self, speech_tokens: torch.Tensor, gen: dict, *, seed: int | None = None,
                  exact_seed: bool = True, n_cfm_timesteps: int | None = None) -> np.ndarray:
        """S3Gen audio for speech tokens, with the voice's ``gen`` conditionals (float32).

        The noise is drawn as after ``torch.manual_seed(seed)``. With a seed and
        ``exact_seed``, the window is decoded alone: exactly the library's audio for that
        seed. Otherwise (no seed, or one drawn for the job rather than asked for) it may share
        an S3Gen call with other jobs' windows that wait at the same time, and its audio is
        its solo decode's to within float rounding (s3gen.lane).
        """
        window = Window(tokens=speech_tokens.reshape(-1), gen=gen, n_cfm_timesteps=n_cfm_timesteps,
                        seed=seed if seed is not None else secrets.randbits(63),
                        exact=seed is not None and exact_seed)
        return self.s3gen_lane.decode(window)

    def _decode_windows(self, windows: Sequence[Window]) -> list[np.ndarray]:
        """One S3Gen call for the lane's windows: stacked when their shapes agree, else ragged."""
        first = windows[0]
        if not all(same_shapes(first, w) for w in windows[1:]):
            ragged = [s3gen_ragged.RaggedWindow(w.tokens.to(self.device), w.gen,
                                                s3gen_noise.generators(w.seed, self.device)) for w in windows]
            with torch.inference_mode():
                wavs = s3gen_ragged.decode_ragged(self.s3gen, ragged, first.n_cfm_timesteps)
            return [wav[0].detach().cpu().numpy().astype(np.float32, copy=False) for wav in wavs]
        kwargs = {} if first.n_cfm_timesteps is None else {"n_cfm_timesteps": first.n_cfm_timesteps}
        tokens = torch.stack([w.tokens for w in windows]).to(self.device)
        ref = {key: _batched_field([w.gen[key] for w in windows]) for key in first.gen}
        rows = [s3gen_noise.generators(w.seed, self.device) for w in windows]
        with torch.inference_mode(), s3gen_noise.drawing_from(*rows):
            wavs, _ = self.s3gen.inference(speech_tokens=tokens, ref_dict=ref, **kwargs)
        return [wav.detach().cpu().numpy().astype(np.float32, copy=False) for wav in wavs]

    def _watermark(self, wav: np.ndarray) -> np.ndarray:
        if wav.size == 0:
            return wav
        marked = self.watermarker.apply_watermark(wav, sample_rate=self.sr)
        return np.asarray(marked, dtype=np.float32)
