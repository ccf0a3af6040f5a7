"""The T3 decode engine: the library's logits and draws, batched jobs, per-job generators.

Two tiers. The tiny tests build a T3 with a 2-layer (14 for multilingual, whose analyzer
reads layers 9, 12 and 13) random backbone and the real vocabularies, so they run in
seconds and check the engine's logic: the library's exact draws for a seed, concurrent
jobs equal to their solo runs, no use of the global RNG, out-of-memory retry, cancel. The
real-model tests check the same claims on each variant's 30-layer (GPT-2 for Turbo)
checkpoint with a few tokens, and measure how far the engine's logits are from the
library's when both are fed the same tokens (teacher forcing).

Measured on the random-weights checkpoints (fp32, CPU, 2 threads; printed by
``test_teacher_forced_logits_match_the_library``): the largest absolute logit difference
from the library over 7 teacher-forced steps was 1.6e-6 (standard), 2.8e-6 (multilingual)
and 0 (Turbo, whose GPT-2 blocks the engine calls as they are), on logits of magnitude
~2.5-3: the engine's own Llama step (fused projections, its attention call) reorders a
few float sums. LOGIT_TOLERANCE (1e-3) leaves a wide margin and is still far below
anything that moves a sample noticeably. A job's logits alone and beside four others
differed by at most 2.9e-6 (BATCH_LOGIT_TOLERANCE 1e-4; from WIDE_ROWS rows up a CPU step
multiplies as weight @ x.T). Seeded jobs drew the same tokens alone, batched and in the
library's own loop in every case measured (4-5 jobs x 3 variants, tiny and real), which the
tests assert exactly.
"""
from __future__ import annotations

import gc
import os
import threading
import time

import numpy as np
import pytest
import torch

from chatterbox_worker.engine import EngineConfig, SamplingParams, T3Engine
from chatterbox_worker.engine.cuda_graphs import DecodeGraph
from chatterbox_worker.testing.tiny_t3 import build_tiny_t3, tiny_conditionals, tiny_text_tokens
from tests.real_model import SHORT_VOICE_SECONDS, alignment_hooks_released, run_in_threads, seed_everything

pytestmark = pytest.mark.integration

LOGIT_TOLERANCE = 1e-3
BATCH_LOGIT_TOLERANCE = 1e-4
TINY_LAYERS = {"standard": 2, "multilingual": 14, "turbo": 2}
TINY_TOKENS = 20
REAL_TOKENS = 6


def library_kwargs(variant: str) -> dict:
    if variant == "turbo":
        return dict(temperature=0.8, top_k=1000, top_p=0.95, repetition_penalty=1.2)
    return dict(temperature=0.8, cfg_weight=0.5, repetition_penalty=2.0 if variant == "multilingual" else 1.2,
                min_p=0.05, top_p=1.0)


def library_tokens(t3, variant: str, t3_cond, text_tokens: torch.Tensor, n: int, seed: int) -> list[int]:
    """The library's own loop, seeded the library's way (the global RNG), stop token cut."""
    with torch.inference_mode(), alignment_hooks_released(t3.tfmr):
        seed_everything(seed)
        if variant == "turbo":
            out = t3.inference_turbo(t3_cond, text_tokens, max_gen_len=n - 1, **library_kwargs(variant))[0]
        else:
            rows = text_tokens if text_tokens.size(0) == 2 else torch.cat([text_tokens, text_tokens])
            out = t3.inference(t3_cond=t3_cond, text_tokens=rows, max_new_tokens=n, **library_kwargs(variant))[0]
    tokens = out.tolist()
    stop = t3.hp.stop_speech_token
    if variant != "turbo" and stop in tokens:
        tokens = tokens[: tokens.index(stop)]
    return tokens


def engine_params(variant: str, n: int, seed: int, **overrides) -> SamplingParams:
    return SamplingParams(max_new_tokens=n, seed=seed, **{**library_kwargs(variant), **overrides})


def library_teacher_forced_logits(t3, variant: str, t3_cond, text_tokens, tokens: list[int], cfg_weight: float):
    """The logits (after CFG, before processors) of the library's forward calls, fed ``tokens``.

    Standard and multilingual: T3.inference's calls of T3HuggingfaceBackend (multilingual
    with its analyzer installed, so eager attention as the library runs it). Turbo:
    inference_turbo's calls of the GPT-2 backbone.
    """
    from chatterbox.models.t3.inference.alignment_stream_analyzer import AlignmentStreamAnalyzer
    from chatterbox.models.t3.inference.t3_hf_backend import T3HuggingfaceBackend

    hp = t3.hp
    out = []
    with torch.inference_mode(), alignment_hooks_released(t3.tfmr):
        if variant == "turbo":
            start = hp.start_speech_token * torch.ones_like(text_tokens[:, :1])
            embeds, _ = t3.prepare_input_embeds(t3_cond=t3_cond, text_tokens=text_tokens, speech_tokens=start)
            o = t3.tfmr(inputs_embeds=embeds, use_cache=True)
            out.append(t3.speech_head(o[0][:, -1])[0])
            for tok in tokens:
                o = t3.tfmr(inputs_embeds=t3.speech_emb(torch.tensor([[tok]])), past_key_values=o.past_key_values,
                            use_cache=True)
                out.append(t3.speech_head(o[0][:, -1])[0])
            return torch.stack(out)
        rows = text_tokens if text_tokens.size(0) == 2 else torch.cat([text_tokens, text_tokens])
        embeds, len_cond = t3.prepare_input_embeds(t3_cond=t3_cond, text_tokens=rows,
                                                   speech_tokens=hp.start_speech_token * torch.ones_like(rows[:, :1]),
                                                   cfg_weight=cfg_weight)
        analyzer = None
        if variant == "multilingual":
            analyzer = AlignmentStreamAnalyzer(t3.tfmr, None, text_tokens_slice=(len_cond, len_cond + rows.size(-1)),
                                               alignment_layer_idx=9, eos_idx=hp.stop_speech_token)
        backend = T3HuggingfaceBackend(config=t3.cfg, llama=t3.tfmr, speech_enc=t3.speech_emb,
                                       speech_head=t3.speech_head, alignment_stream_analyzer=analyzer)
        bos = torch.tensor([[hp.start_speech_token]])
        bos_embed = t3.speech_emb(bos) + t3.speech_pos_emb.get_fixed_embedding(0)
        kwargs = dict(output_attentions=True, output_hidden_states=True, return_dict=True)
        o = backend(inputs_embeds=torch.cat([embeds, torch.cat([bos_embed, bos_embed])], dim=1), past_key_values=None,
                    use_cache=True, **kwargs)
        cfg = torch.as_tensor(cfg_weight)
        for i in range(len(tokens) + 1):
            lg = o.logits[:, -1, :]
            out.append(lg[0] + cfg * (lg[0] - lg[1]))
            if i == len(tokens):
                break
            e = t3.speech_emb(torch.tensor([[tokens[i]]])) + t3.speech_pos_emb.get_fixed_embedding(i + 1)
            o = backend(inputs_embeds=torch.cat([e, e]), past_key_values=o.past_key_values, **kwargs)
    return torch.stack(out)


def run_concurrently(engine: T3Engine, jobs: list[tuple], stagger_s: float = 0.0) -> list[list[int]]:
    """Submit each (t3_cond, text_tokens, params) from its own thread; tokens per job."""
    results: list[list[int] | None] = [None] * len(jobs)

    def run(i):
        time.sleep(i * stagger_s)
        results[i] = list(engine.submit(*jobs[i]))

    run_in_threads(len(jobs), run)
    return results


# -- the tiny tier ---------------------------------------------------------------------------


@pytest.fixture(scope="module", params=["standard", "multilingual", "turbo"])
def tiny(request):
    variant = request.param
    t3 = build_tiny_t3(variant, layers=TINY_LAYERS[variant])
    engine = T3Engine(t3, variant, EngineConfig(max_slots=4, max_context_tokens=512))
    return variant, t3, engine


def test_tiny_engine_draws_the_library_tokens(tiny):
    """Seeded like torch.manual_seed, the job's own generator replays the library's draws."""
    variant, t3, engine = tiny
    cond, text = tiny_conditionals(t3), tiny_text_tokens(t3)
    expected = library_tokens(t3, variant, tiny_conditionals(t3), text, TINY_TOKENS, seed=3)
    got = list(engine.submit(cond, text, engine_params(variant, TINY_TOKENS, seed=3)))
    assert got == expected and len(got) > 1


def test_tiny_concurrent_jobs_match_their_solo_runs(tiny):
    """Five jobs with different seeds, texts, lengths and settings (one without CFG, which
    takes one row instead of two) join the batch at different steps and match solo runs.
    With CFG they fill 9 rows, past WIDE_ROWS, so the batched step multiplies differently."""
    variant, t3, engine = tiny
    cond = tiny_conditionals(t3)
    jobs = [
        (cond, tiny_text_tokens(t3, n=12, seed=0), engine_params(variant, TINY_TOKENS, seed=1)),
        (cond, tiny_text_tokens(t3, n=5, seed=1), engine_params(variant, 9, seed=2, temperature=1.1)),
        (cond, tiny_text_tokens(t3, n=20, seed=2), engine_params(variant, TINY_TOKENS, seed=3)),
        (cond, tiny_text_tokens(t3, n=8, seed=3), engine_params(variant, 14, seed=4, cfg_weight=0.0)),
        (cond, tiny_text_tokens(t3, n=9, seed=4), engine_params(variant, TINY_TOKENS, seed=5)),
    ]
    solo = [list(engine.submit(*job)) for job in jobs]
    batched = run_concurrently(engine, jobs, stagger_s=0.01)
    assert batched == solo
    assert engine.stats().max_batch_jobs >= 3


def test_tiny_batched_logits_agree_with_solo(tiny):
    """Teacher-forced, one job's logits alone and beside four others: the largest difference
    (measured 0 to ~2e-6: the batched CPU step multiplies as weight @ x.T from WIDE_ROWS
    rows up) stays within BATCH_LOGIT_TOLERANCE."""
    variant, t3, engine = tiny
    cond = tiny_conditionals(t3)
    jobs = [(cond, tiny_text_tokens(t3, n=6 + i, seed=i), engine_params(variant, 12, seed=i)) for i in range(5)]
    forced = [list(engine.submit(*job)) for job in jobs]
    solo = []
    for job, tokens in zip(jobs, forced):
        stream = engine.submit(*job, forced_tokens=tokens)
        list(stream)
        solo.append(torch.stack(stream.logits))
    streams = [engine.submit(*job, forced_tokens=tokens) for job, tokens in zip(jobs, forced)]
    run_concurrently_streams(streams)
    diff = max(float((torch.stack(s.logits) - ref).abs().max()) for s, ref in zip(streams, solo))
    print(f"{variant}: max |batched - solo| logit = {diff:.3g}")
    assert diff <= BATCH_LOGIT_TOLERANCE


def run_concurrently_streams(streams) -> None:
    threads = [threading.Thread(target=list, args=(s,)) for s in streams]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def test_tiny_engine_never_touches_the_global_rng(tiny):
    variant, t3, engine = tiny
    torch.manual_seed(1234)
    before = torch.get_rng_state()
    list(engine.submit(tiny_conditionals(t3), tiny_text_tokens(t3), engine_params(variant, 5, seed=9)))
    list(engine.submit(tiny_conditionals(t3), tiny_text_tokens(t3), engine_params(variant, 5, seed=None)))
    assert torch.equal(torch.get_rng_state(), before)


def test_tiny_teacher_forced_logits_match_the_library(tiny):
    variant, t3, engine = tiny
    text = tiny_text_tokens(t3)
    params = engine_params(variant, TINY_TOKENS, seed=5)
    tokens = library_tokens(t3, variant, tiny_conditionals(t3), text, 8, seed=5)
    stream = engine.submit(tiny_conditionals(t3), text, params, forced_tokens=tokens)
    assert list(stream) == tokens
    ours = torch.stack(stream.logits)
    theirs = library_teacher_forced_logits(t3, variant, tiny_conditionals(t3), text, tokens, params.cfg_weight)
    assert ours.shape == theirs.shape
    assert float((ours - theirs).abs().max()) <= LOGIT_TOLERANCE


def test_out_of_memory_lowers_the_slots_and_retries_once(monkeypatch):
    t3 = build_tiny_t3("standard", layers=2)
    engine = T3Engine(t3, "standard", EngineConfig(max_slots=4, max_context_tokens=512))
    cond = tiny_conditionals(t3)
    jobs = [(cond, tiny_text_tokens(t3, seed=i), engine_params("standard", 12, seed=i)) for i in range(3)]
    solo = [list(engine.submit(*job)) for job in jobs]

    forward = engine.backbone.forward
    state = {"failed": False}

    def failing_once(*args, **kwargs):
        if not kwargs.get("prefill") and not state["failed"] and engine.stats().active_jobs >= 2:
            state["failed"] = True
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return forward(*args, **kwargs)

    monkeypatch.setattr(engine.backbone, "forward", failing_once)
    batched = run_concurrently(engine, jobs)
    stats = engine.stats()
    assert state["failed"] and stats.oom_retries == 1 and stats.oom_failures == 0
    assert stats.max_jobs < 4
    assert batched == solo  # the replay redraws the same tokens and delivers none twice


def test_a_replay_counts_in_the_job_s_metrics_and_the_audio_is_unchanged(model, voice, monkeypatch):
    """The real model notes its engine's replays for the job's ``metrics.memory_retries``."""
    from chatterbox_worker.pipeline.job_metrics import count_memory_retries, memory_retries

    engine = model.engine
    monkeypatch.setattr(engine, "max_jobs", engine.max_jobs)  # the OOM halves it; restored after
    replay = model.options(max_new_tokens=4, seed=8, watermark=False)
    conds = model.prepare_conditionals_from_array(*short_prompt(voice))
    solo = model.synthesize("Replay.", conditionals=conds, options=replay)
    forward = engine.backbone.forward
    state = {"failed": False}

    def failing_once(*args, **kwargs):
        if not kwargs.get("prefill") and not state["failed"]:
            state["failed"] = True
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return forward(*args, **kwargs)

    monkeypatch.setattr(engine.backbone, "forward", failing_once)
    count_memory_retries()
    replayed = model.synthesize("Replay.", conditionals=conds, options=replay)
    assert state["failed"] and memory_retries() == 1
    assert np.array_equal(replayed, solo)


def test_closing_a_stream_cancels_its_job():
    t3 = build_tiny_t3("standard", layers=2)
    engine = T3Engine(t3, "standard", EngineConfig(max_slots=2, max_context_tokens=512))
    stream = engine.submit(tiny_conditionals(t3), tiny_text_tokens(t3), engine_params("standard", 400, seed=1))
    first = next(iter(stream))
    stream.close()
    deadline = time.time() + 10
    while engine.stats().active_jobs and time.time() < deadline:
        time.sleep(0.01)
    assert isinstance(first, int) and engine.stats().active_jobs == 0
    # The engine goes on serving.
    assert len(list(engine.submit(tiny_conditionals(t3), tiny_text_tokens(t3), engine_params("standard", 3, 1)))) == 3


def test_gpu_only_settings_fall_back_on_cpu():
    """bf16 and CUDA graphs are for a GPU; on CPU they are off and the graph refuses to build."""
    t3 = build_tiny_t3("standard", layers=2)
    engine = T3Engine(t3, "standard", EngineConfig(max_slots=2, max_context_tokens=256, dtype="bfloat16",
                                                   cuda_graphs="auto"))
    engine.start()
    assert engine.dtype == torch.float32 and engine.graphs == {}
    assert next(iter(t3.tfmr.parameters())).dtype == torch.float32
    with pytest.raises(RuntimeError, match="CUDA"):
        DecodeGraph(engine.backbone, engine.runner.kv_cache, 2)


def test_full_length_padded_step_equals_the_sliced_step():
    """What a CUDA graph replays (attention over the whole cache length, rows padded up to the
    bucket at position 0) gives the eager step's hidden states, here checked on CPU."""
    t3 = build_tiny_t3("standard", layers=2)
    engine = T3Engine(t3, "standard", EngineConfig(max_slots=4, max_context_tokens=256))
    engine.runner.allocate()
    engine.runner.kv_cache.ensure_clean(engine.max_len)  # a GPU cache starts zeroed over its whole length
    engine._thread = "driven by this test"  # no loop thread: the test steps the engine itself
    cond = tiny_conditionals(t3)
    for i in range(2):
        engine.submit(cond, tiny_text_tokens(t3, n=5 + 3 * i, seed=i), engine_params("standard", 50, seed=i))
    with torch.inference_mode():
        for _ in range(4):
            engine.step()
        jobs = engine.scheduler.running
        n = sum(j.num_rows for j in jobs)
        positions = torch.tensor([j.num_cached for j in jobs for _ in range(j.num_rows)])[:, None]
        x = torch.randn(n, 1, engine.backbone.hidden, generator=torch.Generator().manual_seed(0))
        sliced, _ = engine.backbone.forward(x, positions, engine.cache, slice(0, n), int(positions.max()) + 1,
                                            prefill=False)
        bucket = 8
        padded_x = torch.cat([x, torch.zeros(bucket - n, 1, x.size(-1))])
        padded_pos = torch.cat([positions, torch.zeros(bucket - n, 1, dtype=torch.long)])
        full, _ = engine.backbone.forward(padded_x, padded_pos, engine.cache, slice(0, bucket), engine.max_len,
                                          prefill=False)
    assert torch.allclose(full[:n], sliced, atol=1e-5, rtol=0)


# -- the real checkpoints ----------------------------------------------------------------------


@pytest.fixture(scope="module", params=["standard", "multilingual", "turbo"])
def real(request, model):
    """(variant, model): the session's standard model, or a variant loaded for this module."""
    variant = request.param
    if variant == "standard":
        yield variant, model
        return
    from chatterbox_worker.models.registry import VARIANTS, load_model
    from chatterbox_worker.testing.random_checkpoint import ensure_checkpoint

    ckpt = os.environ.get(VARIANTS[variant].checkpoint_env) or ensure_checkpoint(variant)
    loaded = load_model(variant, "cpu", ckpt)
    yield variant, loaded
    loaded.close()  # its engine's thread holds the weights
    del loaded
    gc.collect()


@pytest.fixture(scope="module")
def voice():
    from chatterbox_worker.testing.demo_library import REPO_ROOT as REPO
    from optimized_voice_library import OptimizedVoiceLibrary

    v = OptimizedVoiceLibrary(REPO).get_voice_audio_by_name("Bella")
    return v.samples[: int(6.0 * v.sample_rate)].copy(), v.sample_rate  # Turbo needs more than 5 s


def short_prompt(voice: tuple[np.ndarray, int]) -> tuple[np.ndarray, int]:
    """The first SHORT_VOICE_SECONDS of the voice: S3Gen's cost grows with the prompt."""
    samples, sr = voice
    return samples[: int(SHORT_VOICE_SECONDS * sr)], sr


def real_job(variant, model, conds, text, seed, n=REAL_TOKENS, **overrides):
    kwargs = {**library_kwargs(variant), **overrides}
    extra = {"language_id": "fr"} if variant == "multilingual" else {}
    if variant == "turbo":
        extra = {"language_id": None, "cfg_weight": 0.0, "min_p": 0.0}
    return model.decode_job(text, conds, model.options(exaggeration=0.5 if variant != "turbo" else 0.0,
                                                       max_new_tokens=n, seed=seed, **{**kwargs, **extra}))


def test_teacher_forced_logits_match_the_library(real, voice):
    """Fed the same tokens, the engine's logits equal the library's within LOGIT_TOLERANCE."""
    variant, model = real
    conds = model.prepare_conditionals_from_array(*voice)
    # A cap past the forced tokens, so the step after the last one is compared too.
    job = real_job(variant, model, conds, "Bonjour tout le monde.", seed=11, n=REAL_TOKENS + 4)
    t3_cond = lambda: model.conditionals_for_call(conds, 0.5 if variant != "turbo" else 0.0).t3  # noqa: E731
    tokens = library_tokens(model.t3, variant, t3_cond(), job.text_tokens, REAL_TOKENS, seed=11)
    stream = model.speech_tokens(job, forced_tokens=tokens)
    assert list(stream) == tokens
    ours = torch.stack(stream.logits)
    theirs = library_teacher_forced_logits(model.t3, variant, t3_cond(), job.text_tokens, tokens,
                                           job.params.cfg_weight)
    diff = float((ours - theirs).abs().max())
    print(f"{variant}: max |engine - library| logit over {len(tokens) + 1} steps = {diff:.3g} "
          f"(logit scale {float(theirs.abs().max()):.3g})")
    assert ours.shape == theirs.shape and diff <= LOGIT_TOLERANCE


def test_three_concurrent_seeded_jobs_match_their_solo_runs(real, voice):
    variant, model = real
    conds = model.prepare_conditionals_from_array(*voice)
    texts = ["Bonjour tout le monde.", "Une phrase un peu plus longue que la premiere.", "Salut."]
    jobs = [real_job(variant, model, conds, text, seed=20 + i) for i, text in enumerate(texts)]
    solo = [list(model.speech_tokens(job)) for job in jobs]
    batched = run_concurrently(model.engine, [(j.t3_cond, j.text_tokens, j.params) for j in jobs])
    assert batched == solo and all(solo)
    # And the first one is the library's own draw for its seed.
    t3_cond = model.conditionals_for_call(conds, 0.5 if variant != "turbo" else 0.0).t3
    assert solo[0] == library_tokens(model.t3, variant, t3_cond, jobs[0].text_tokens, REAL_TOKENS, seed=20)


def test_seeded_synthesis_from_threads_equals_solo_audio(model, voice):
    """Through the public API: three seeded synthesize calls from three threads give the
    same audio as the same calls one at a time (T3 per-job generators, S3Gen seeded per
    call under its lock)."""
    conds = model.prepare_conditionals_from_array(*short_prompt(voice))
    calls = [dict(text=t, seed=s) for t, s in (("One.", 1), ("Two words.", 2), ("Three more words.", 3))]
    solo = [model.synthesize(c["text"], conditionals=conds, options=model.options(seed=c["seed"], max_new_tokens=4))
            for c in calls]
    results: list[np.ndarray | None] = [None] * len(calls)

    def run(i):
        c = calls[i]
        results[i] = model.synthesize(c["text"], conditionals=conds,
                                      options=model.options(seed=c["seed"], max_new_tokens=4))

    run_in_threads(len(calls), run)
    assert all(np.array_equal(a, b) for a, b in zip(results, solo))


def test_a_stopped_engine_ends_its_thread_and_lets_the_model_go():
    import weakref

    t3 = build_tiny_t3("standard", layers=TINY_LAYERS["standard"])
    engine = T3Engine(t3, "standard", EngineConfig(max_slots=2, max_context_tokens=256))
    engine.start()
    thread = engine._thread
    engine.stop()
    assert not thread.is_alive() and engine.cache is None
    ref = weakref.ref(t3)
    del t3, engine, thread
    gc.collect()
    assert ref() is None
