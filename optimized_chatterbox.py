"""Chatterbox TTS conditioned straight from numpy arrays.

The library computes a voice's conditionals from a file path (``librosa.load`` on a WAV).
:class:`OptimizedChatterboxTTS` takes the samples and their rate instead, reproduces the
library's resampling and trimming step for step, and returns the conditionals rather than
storing them on the model. Generation takes the conditionals per call, so concurrent jobs
never read each other's voice, and nothing is ever written to the file system.

Speech tokens come from the model's decode engine (:mod:`t3_engine`): every call from any
thread becomes a job there, batched with the others into shared T3 steps, drawing from its
own seeded generator. ``synthesize`` decodes the tokens once at the end; ``stream`` decodes
each window on the calling thread as soon as its tokens are drawn, while the engine goes on.
S3Gen's noise comes from generators of each decode's own (:mod:`s3gen_noise`), so no part of
generation draws from torch's global RNG.
"""
from __future__ import annotations

import logging
import math
import secrets
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import librosa
import numpy as np
import torch
from chatterbox.models.s3gen import S3GEN_SR
from chatterbox.models.s3gen.const import S3GEN_SIL
from chatterbox.models.s3tokenizer import S3_SR
from chatterbox.models.t3.modules.cond_enc import T3Cond
from chatterbox.tts import ChatterboxTTS, Conditionals, punc_norm
from safetensors.torch import load_file, save_file

from chatterbox_worker.s3gen import noise as s3gen_noise
from chatterbox_worker.audio.codec import resample
from chatterbox_worker.pipeline.job_metrics import note_memory_retries
from chatterbox_worker.s3gen.lane import S3GenLane, Window
from chatterbox_worker.settings import get_settings
from chatterbox_worker.engine import EngineConfig, SamplingParams, T3Engine, TokenStream

logger = logging.getLogger(__name__)

MODEL_VARIANT = "standard"
# Speech-token ids at or above this are control tokens, not audio (the library's own cut).
SPEECH_VOCAB_SIZE = 6561
SPEECH_START_TOKEN = SPEECH_VOCAB_SIZE  # T3's start-of-speech token (hp.start_speech_token)
# Streaming decodes each window of new tokens together with this many earlier tokens, so the
# vocoder sees context across the seam; the context's own audio is cut off again.
STREAM_CONTEXT_TOKENS = 25
STREAM_FADE_SECONDS = 0.02
# S3Gen's output fade-in spans two tokens of audio (40 ms); one token alone crashes it, so a
# shorter sequence is padded with the library's own silence token, as Turbo pads its end.
MIN_DECODABLE_TOKENS = 2
CONDITIONALS_FORMAT = "chatterbox-conditionals-v1"
# Derived per call by T3 from the prompt tokens; never cached or persisted.
_T3_DERIVED_FIELDS = ("cond_prompt_speech_emb",)
# Two threads may ask for a model's engine at once; one builds it.
_ENGINE_CREATION = threading.Lock()


def engine_config(on_gpu: bool) -> EngineConfig:
    """The decode engine's settings from the worker's: as many slots as jobs it takes at once
    (more would only reserve memory), unless ENGINE_MAX_SLOTS says otherwise."""
    s = get_settings()
    return EngineConfig(max_slots=s.engine_max_slots or s.concurrent_jobs(on_gpu),
                        max_context_tokens=s.engine_max_context_tokens, dtype=s.t3_dtype,
                        cuda_graphs=s.cuda_graphs, kv_memory_fraction=s.engine_kv_memory_fraction)


def prompt_at_model_rate(samples: np.ndarray, sample_rate: int) -> np.ndarray:
    """What ``librosa.load(path, sr=24000)`` returns for a file holding these samples.

    librosa resamples with soxr_hq (:func:`audio_io.resample`); any other resampler changes
    the speech tokens.
    """
    return resample(samples, sample_rate, S3GEN_SR)


def pad_to_decodable(speech_tokens: torch.Tensor) -> torch.Tensor:
    missing = MIN_DECODABLE_TOKENS - speech_tokens.numel()
    if missing <= 0:
        return speech_tokens
    silence = torch.full((missing,), S3GEN_SIL, dtype=speech_tokens.dtype, device=speech_tokens.device)
    return torch.cat([speech_tokens.reshape(-1), silence])


def default_device() -> str:
    return get_settings().chatterbox_device or ("cuda" if torch.cuda.is_available() else "cpu")


def token_cap(max_new_tokens: int | None) -> int:
    """A job's speech-token cap, or the configured default."""
    return max_new_tokens or get_settings().chatterbox_max_new_tokens


def seed_everything(seed: int) -> None:
    """Seed torch's process-global RNGs, as the library's own seeded runs are seeded.

    Nothing in this worker draws from them (T3 jobs and S3Gen decodes have their own
    generators); the tests and benchmarks seed the library's loops with this to compare.
    """
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def _batched_field(values: list):
    """One S3Gen conditionals field for a batch: as it is when every row has the same tensor
    (S3Gen repeats it), else the rows' tensors stacked."""
    if all(v is values[0] for v in values):
        return values[0]
    return torch.cat(values)


def cfg_text_batch(tokens: torch.Tensor, hp) -> torch.Tensor:
    """Text tokens as T3 takes them: a batch of two (conditional, unconditional), framed by
    the start and stop text tokens. Always two rows: T3 inference assumes it, and the
    library's own generate crashes on cfg_weight=0 because it then passes one."""
    tokens = torch.cat([tokens, tokens], dim=0)
    tokens = torch.nn.functional.pad(tokens, (1, 0), value=hp.start_text_token)
    return torch.nn.functional.pad(tokens, (0, 1), value=hp.stop_text_token)


def speech_only(tokens) -> list[int]:
    """The library's cut of T3's output: control tokens out (start, stop, padding)."""
    return [int(t) for t in tokens if int(t) < SPEECH_VOCAB_SIZE]


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


@dataclass
class SpeechJob:
    """One generation, ready for the engine: T3's inputs, sampling settings, S3Gen's voice."""

    t3_cond: T3Cond
    text_tokens: torch.Tensor
    params: SamplingParams
    gen: dict
    # Turbo ends every utterance with a little silence and decodes with fewer flow steps.
    tail: torch.Tensor | None = None
    n_cfm_timesteps: int | None = None
    # Basic mode of the standard and multilingual models decodes what the library's
    # drop_invalid_tokens keeps: tokens after a sampled start-of-speech token.
    cut_at_start_token: bool = True
    # False when the seed was drawn for the job rather than asked for: its S3Gen windows may
    # then share calls with other jobs' (see run_s3gen).
    exact_seed: bool = True


class ArrayConditioningMixin:
    """Conditionals from arrays for any Chatterbox TTS class (standard, multilingual, turbo).

    Mixed in before the library class. All three variants compute conditionals the same
    way from a file; a variant that treats the prompt first (Turbo normalises loudness)
    overrides :meth:`prepare_prompt`.
    """

    variant: str = MODEL_VARIANT
    # The library refuses shorter prompts for some variants (Turbo: more than 5 s).
    min_prompt_seconds: float = 0.0
    # The directory the weights came from (the hub's snapshot too): the conditionals
    # cache keys its disk tier by a fingerprint of these files.
    checkpoint_dir: Path | None = None

    @classmethod
    def from_local(cls, ckpt_dir, device, *args, **kwargs):
        # from_pretrained ends in from_local on the downloaded snapshot, so both paths land here.
        model = super().from_local(ckpt_dir, device, *args, **kwargs)
        model.checkpoint_dir = Path(ckpt_dir)
        model.warm_up()  # at start-up, not in the first job: the KV cache, on a GPU the graphs
        return model

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # The built-in voice as loaded. ``self.conds`` stays for library compatibility, but
        # the library's own prepare_conditionals overwrites it, so nothing here reads it.
        self.builtin_conds: Conditionals | None = self.conds
        # S3Gen's noise comes from each decode's own generators (s3gen_noise). One S3Gen call
        # runs at a time (two at once only contend for the same cores or GPU stream); the
        # windows that wait meanwhile share the next call where they can (s3gen_batching).
        s3gen_noise.install(self.s3gen)
        self.s3gen_lane = S3GenLane(self._decode_windows, max_batch=get_settings().s3gen_max_batch)
        self._t3_engine: T3Engine | None = None

    # -- the decode engine -------------------------------------------------------------

    @property
    def engine(self) -> T3Engine:
        """This model's T3 engine, started on first use (thread-safe)."""
        if self._t3_engine is None:
            with _ENGINE_CREATION:
                if self._t3_engine is None:
                    config = engine_config(on_gpu=self.t3.device.type == "cuda")
                    engine = T3Engine(self.t3, self.variant, config)
                    engine.start()
                    self._t3_engine = engine
        return self._t3_engine

    def close(self) -> None:
        """Stop this model's T3 engine, so that the model can be freed."""
        with _ENGINE_CREATION:
            engine, self._t3_engine = self._t3_engine, None
        if engine is not None:
            engine.stop()

    def engine_stats(self) -> dict:
        """Counters of the T3 engine (jobs, tokens, steps, out-of-memory retries) and of the
        S3Gen lane (``s3gen``: calls, windows, calls shared by several windows)."""
        stats = self._t3_engine.stats().as_dict() if self._t3_engine is not None else {}
        return {**stats, "s3gen": self.s3gen_lane.stats()}

    def warm_up(self) -> None:
        """Start the engine now: allocate its KV cache and, on a GPU, capture its CUDA graphs."""
        self.engine  # noqa: B018 - the property starts it

    def run_s3gen(self, speech_tokens: torch.Tensor, gen: dict, *, seed: int | None = None,
                  exact_seed: bool = True, n_cfm_timesteps: int | None = None) -> np.ndarray:
        """S3Gen audio for speech tokens, with the voice's ``gen`` conditionals (float32).

        The noise is drawn as after ``torch.manual_seed(seed)``. With a seed and
        ``exact_seed``, the window is decoded alone: exactly the library's audio for that
        seed. Otherwise (no seed, or one drawn for the job rather than asked for) it may share
        an S3Gen call with other jobs' windows that wait at the same time, and its audio is
        its solo decode's to within float rounding (s3gen_batching).
        """
        window = Window(tokens=speech_tokens.reshape(-1), gen=gen, n_cfm_timesteps=n_cfm_timesteps,
                        seed=seed if seed is not None else secrets.randbits(63),
                        exact=seed is not None and exact_seed)
        return self.s3gen_lane.decode(window)

    def _decode_windows(self, windows: Sequence[Window]) -> list[np.ndarray]:
        """One S3Gen call for windows of equal length (the lane's ``decode``)."""
        first = windows[0]
        kwargs = {} if first.n_cfm_timesteps is None else {"n_cfm_timesteps": first.n_cfm_timesteps}
        tokens = torch.stack([w.tokens for w in windows]).to(self.device)
        ref = {key: _batched_field([w.gen[key] for w in windows]) for key in first.gen}
        rows = [s3gen_noise.generators(w.seed, self.device) for w in windows]
        with torch.inference_mode(), s3gen_noise.drawing_from(*rows):
            wavs, _ = self.s3gen.inference(speech_tokens=tokens, ref_dict=ref, **kwargs)
        return [wav.detach().cpu().numpy().astype(np.float32, copy=False) for wav in wavs]

    def speech_tokens(self, job: SpeechJob, *, forced_tokens: list[int] | None = None,
                      flush_every: int | None = 1) -> TokenStream:
        """The job's speech tokens as the engine draws them (its stop token excluded),
        handed over every ``flush_every`` tokens (None: all at the end)."""
        return self.engine.submit(job.t3_cond, job.text_tokens, job.params, forced_tokens=forced_tokens,
                                  flush_every=flush_every)

    def _synthesize(self, job: SpeechJob, watermark: bool) -> np.ndarray:
        """Basic mode: every token first, then one S3Gen decode."""
        stream = self.speech_tokens(job, flush_every=None)
        tokens = list(stream)
        note_memory_retries(stream.retries)  # the engine replayed the job after running out of memory
        if job.cut_at_start_token and SPEECH_START_TOKEN in tokens:
            tokens = tokens[tokens.index(SPEECH_START_TOKEN) + 1:]
        wav = decode_window(self, tokens, 0, job.gen, tail=job.tail, n_cfm_timesteps=job.n_cfm_timesteps,
                            seed=job.params.seed, exact_seed=job.exact_seed)
        return self._watermark(wav) if watermark else wav

    def _stream(self, job: SpeechJob, chunk_size: int, watermark: bool,
                first_chunk_size: int | None = None) -> Iterator[np.ndarray]:
        """Streaming: each window of ``chunk_size`` tokens (the first: ``first_chunk_size``) is
        decoded as soon as it is drawn."""
        # Tokens are handed over in groups that divide every window, so no window waits.
        flush_every = math.gcd(first_chunk_size, chunk_size) if first_chunk_size else chunk_size
        stream = self.speech_tokens(job, flush_every=flush_every)
        try:
            yield from stream_windows(self, stream, job.gen, chunk_size=chunk_size, watermark=watermark,
                                      tail=job.tail, n_cfm_timesteps=job.n_cfm_timesteps, seed=job.params.seed,
                                      exact_seed=job.exact_seed,
                                      first_chunk_size=first_chunk_size)
        finally:
            stream.close()  # a consumer that stops early cancels the job in the engine
            note_memory_retries(stream.retries)

    # -- conditionals ------------------------------------------------------------------

    def prepare_prompt(self, wav_24k: np.ndarray) -> np.ndarray:
        """The variant's own treatment of the 24 kHz prompt before conditioning."""
        return wav_24k

    def prepare_conditionals_from_array(
        self, samples: np.ndarray, sample_rate: int, exaggeration: float = 0.5
    ) -> Conditionals:
        """The library's ``prepare_conditionals`` on an array; returns, never stores."""
        s3gen_ref_wav = prompt_at_model_rate(samples, sample_rate)
        if len(s3gen_ref_wav) / S3GEN_SR <= self.min_prompt_seconds:
            raise ValueError(f"the {self.variant} model needs a voice prompt longer than "
                             f"{self.min_prompt_seconds:g} s")
        s3gen_ref_wav = self.prepare_prompt(s3gen_ref_wav)
        ref_16k_wav = resample(s3gen_ref_wav, S3GEN_SR, S3_SR)

        with torch.inference_mode():
            gen = self.s3gen.embed_ref(
                s3gen_ref_wav[: self.DEC_COND_LEN], S3GEN_SR, device=self.device
            )
            prompt_tokens = None
            if plen := self.t3.hp.speech_cond_prompt_len:
                prompt_tokens, _ = self.s3gen.tokenizer.forward(
                    [ref_16k_wav[: self.ENC_COND_LEN]], max_len=plen
                )
                prompt_tokens = torch.atleast_2d(prompt_tokens).to(self.device)
            ve_embed = torch.from_numpy(self.ve.embeds_from_wavs([ref_16k_wav], sample_rate=S3_SR))
            ve_embed = ve_embed.mean(axis=0, keepdim=True).to(self.device)

        t3_cond = T3Cond(
            speaker_emb=ve_embed,
            cond_prompt_speech_tokens=prompt_tokens,
            emotion_adv=exaggeration * torch.ones(1, 1, 1),
        ).to(device=self.device)
        return Conditionals(t3_cond, gen)

    def default_conditionals(self) -> Conditionals:
        if self.builtin_conds is None:
            raise ValueError("this checkpoint has no built-in voice (conds.pt); pass a voice")
        return self.builtin_conds

    def conditionals_for_call(self, conds: Conditionals, exaggeration: float) -> Conditionals:
        """A private copy for one generation.

        T3 writes ``cond_prompt_speech_emb`` into the T3Cond it is given and S3Gen casts the
        ``gen`` dict in place, so each call gets fresh containers over the shared tensors.
        Exaggeration only rebuilds the small ``emotion_adv`` tensor, as the library does.
        """
        t3 = conds.t3
        t3_call = T3Cond(
            speaker_emb=t3.speaker_emb,
            clap_emb=t3.clap_emb,
            cond_prompt_speech_tokens=t3.cond_prompt_speech_tokens,
            emotion_adv=exaggeration * torch.ones(1, 1, 1),
        ).to(device=self.device)
        return Conditionals(t3_call, dict(conds.gen))

    def _watermark(self, wav: np.ndarray) -> np.ndarray:
        if wav.size == 0:
            return wav
        marked = self.watermarker.apply_watermark(wav, sample_rate=self.sr)
        return np.asarray(marked, dtype=np.float32)

    def release_memory(self) -> None:
        """Give cached allocator blocks back after an out-of-memory error."""
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


class OptimizedChatterboxTTS(ArrayConditioningMixin, ChatterboxTTS):
    """``ChatterboxTTS`` whose voice comes from arrays and whose calls share no voice state."""

    # -- generation --------------------------------------------------------------------

    def _text_tokens(self, text: str) -> torch.Tensor:
        return cfg_text_batch(self.tokenizer.text_to_tokens(punc_norm(text)).to(self.device), self.t3.hp)

    def speech_job(self, text: str, *, conditionals: Conditionals | None, exaggeration: float, cfg_weight: float,
                   temperature: float, repetition_penalty: float, min_p: float, top_p: float,
                   max_new_tokens: int | None, seed: int | None, exact_seed: bool = True) -> SpeechJob:
        call = self.conditionals_for_call(conditionals or self.default_conditionals(), exaggeration)
        params = SamplingParams(max_new_tokens=token_cap(max_new_tokens), temperature=temperature, top_p=top_p,
                                min_p=min_p, repetition_penalty=repetition_penalty, cfg_weight=cfg_weight, seed=seed)
        return SpeechJob(call.t3, self._text_tokens(text), params, call.gen, exact_seed=exact_seed)

    def synthesize(
        self,
        text: str,
        *,
        conditionals: Conditionals | None = None,
        exaggeration: float = 0.5,
        cfg_weight: float = 0.5,
        temperature: float = 0.8,
        repetition_penalty: float = 1.2,
        min_p: float = 0.05,
        top_p: float = 1.0,
        max_new_tokens: int | None = None,
        seed: int | None = None,
        exact_seed: bool = True,
        watermark: bool = True,
    ) -> np.ndarray:
        """Text to a float32 waveform at ``self.sr``, with the given conditionals.

        ``exact_seed`` False: the seed was drawn for the job, not asked for (see run_s3gen).
        """
        job = self.speech_job(text, conditionals=conditionals, exaggeration=exaggeration, cfg_weight=cfg_weight,
                              temperature=temperature, repetition_penalty=repetition_penalty, min_p=min_p,
                              top_p=top_p, max_new_tokens=max_new_tokens, seed=seed, exact_seed=exact_seed)
        return self._synthesize(job, watermark)

    def generate(
        self,
        text,
        repetition_penalty=1.2,
        min_p=0.05,
        top_p=1.0,
        audio_prompt_path=None,
        exaggeration=0.5,
        cfg_weight=0.5,
        temperature=0.8,
        *,
        audio_prompt_array: np.ndarray | None = None,
        audio_prompt_sr: int = S3GEN_SR,
        conditionals: Conditionals | None = None,
        max_new_tokens: int | None = None,
        seed: int | None = None,
    ) -> torch.Tensor:
        """The library's ``generate`` signature, plus arrays or ready conditionals.

        Returns a ``(1, N)`` tensor like the library. Never touches ``self.conds``.
        """
        if conditionals is None:
            if audio_prompt_array is not None:
                conditionals = self.prepare_conditionals_from_array(
                    audio_prompt_array, audio_prompt_sr, exaggeration
                )
            elif audio_prompt_path:
                wav, _ = librosa.load(audio_prompt_path, sr=S3GEN_SR)
                conditionals = self.prepare_conditionals_from_array(wav, S3GEN_SR, exaggeration)
        wav = self.synthesize(
            text,
            conditionals=conditionals,
            exaggeration=exaggeration,
            cfg_weight=cfg_weight,
            temperature=temperature,
            repetition_penalty=repetition_penalty,
            min_p=min_p,
            top_p=top_p,
            max_new_tokens=max_new_tokens,
            seed=seed,
        )
        return torch.from_numpy(wav).unsqueeze(0)

    # -- token-level streaming ---------------------------------------------------------

    def stream(
        self,
        text: str,
        *,
        conditionals: Conditionals | None = None,
        chunk_size: int = 50,
        first_chunk_size: int | None = None,
        exaggeration: float = 0.5,
        cfg_weight: float = 0.5,
        temperature: float = 0.8,
        repetition_penalty: float = 1.2,
        min_p: float = 0.05,
        top_p: float = 1.0,
        max_new_tokens: int | None = None,
        seed: int | None = None,
        exact_seed: bool = True,
        watermark: bool = True,
    ) -> Iterator[np.ndarray]:
        """Yield audio every ``chunk_size`` speech tokens while T3 is still sampling."""
        job = self.speech_job(text, conditionals=conditionals, exaggeration=exaggeration, cfg_weight=cfg_weight,
                              temperature=temperature, repetition_penalty=repetition_penalty, min_p=min_p,
                              top_p=top_p, max_new_tokens=max_new_tokens, seed=seed, exact_seed=exact_seed)
        return self._stream(job, chunk_size, watermark, first_chunk_size)

    # -- voice conversion --------------------------------------------------------------

    def convert_voice(
        self,
        samples: np.ndarray,
        sample_rate: int,
        target: Conditionals,
        *,
        watermark: bool = True,
        seed: int | None = None,
        exact_seed: bool = True,
    ) -> np.ndarray:
        """``ChatterboxVC.generate`` on arrays, with the target voice's S3Gen conditionals.

        ``ChatterboxVC.set_target_voice`` computes exactly ``conds.gen`` (the first 10 s at
        24 kHz through ``embed_ref``), so a voice's cached conditionals serve both TTS and VC.
        """
        audio_16k = resample(samples, sample_rate, S3_SR)
        with torch.inference_mode():
            audio = torch.from_numpy(audio_16k).float().to(self.device)[None,]
            speech_tokens, _ = self.s3gen.tokenizer(audio)
        wav = self.run_s3gen(speech_tokens, target.gen, seed=seed, exact_seed=exact_seed)
        return self._watermark(wav) if watermark else wav

class ConditionalsCodec:
    """Sizes and stores :class:`Conditionals` without pickle (safetensors).

    Only the tensors that define a voice are kept: T3's derived prompt embedding is
    recomputed per call, and ``None`` fields are listed in the metadata.
    """

    def __init__(self, device: str):
        self.device = device

    @staticmethod
    def _tensors(conds: Conditionals) -> dict[str, torch.Tensor | None]:
        fields = {f"t3.{k}": v for k, v in vars(conds.t3).items() if k not in _T3_DERIVED_FIELDS}
        fields.update({f"gen.{k}": v for k, v in conds.gen.items()})
        return fields

    def nbytes(self, conds: Conditionals) -> int:
        return sum(
            v.numel() * v.element_size() for v in self._tensors(conds).values() if torch.is_tensor(v)
        )

    def save(self, conds: Conditionals, path: Path, metadata: dict[str, str]) -> None:
        fields = self._tensors(conds)
        tensors = {k: v.detach().cpu().contiguous() for k, v in fields.items() if torch.is_tensor(v)}
        nones = ",".join(k for k, v in fields.items() if v is None)
        save_file(tensors, str(path), metadata={**metadata, "format": CONDITIONALS_FORMAT, "none": nones})

    def load(self, path: Path, expected_metadata: dict[str, str]) -> Conditionals:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
        expected = {**expected_metadata, "format": CONDITIONALS_FORMAT}
        mismatched = {k: metadata.get(k) for k, v in expected.items() if metadata.get(k) != v}
        if mismatched:
            raise ValueError(f"metadata does not match: {mismatched}")
        tensors = load_file(str(path), device="cpu")
        fields: dict[str, torch.Tensor | None] = dict(tensors)
        fields.update({k: None for k in metadata.get("none", "").split(",") if k})
        t3 = {k[3:]: v for k, v in fields.items() if k.startswith("t3.")}
        gen = {k[4:]: v for k, v in fields.items() if k.startswith("gen.")}
        if "speaker_emb" not in t3 or "prompt_feat" not in gen:
            raise ValueError("missing tensors")
        return Conditionals(T3Cond(**t3), gen).to(self.device)


def create_optimized_tts(device: str | None = None, ckpt_dir: str | Path | None = None) -> OptimizedChatterboxTTS:
    """Load the model: from ``CHATTERBOX_CKPT_DIR`` when set, else from the hub."""
    device = device or default_device()
    ckpt_dir = ckpt_dir or get_settings().checkpoint_dir(MODEL_VARIANT)
    if ckpt_dir:
        logger.info("loading Chatterbox from %s on %s", ckpt_dir, device)
        return OptimizedChatterboxTTS.from_local(ckpt_dir, device)
    logger.info("loading Chatterbox from the model hub on %s", device)
    return OptimizedChatterboxTTS.from_pretrained(device)
