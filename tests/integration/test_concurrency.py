"""Concurrent jobs on one model object never swap voices (real classes, CPU)."""
from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from tests.real_model import N_SHORT_VOICES

pytestmark = pytest.mark.integration

# Two waves of eight threads over five voices: in the first, voices are asked for by several
# threads at once while cold; in the second, from the cache. Each job costs a real S3Gen
# decode (about 3 s of CPU), so more waves add minutes and no new interleaving.
N_THREADS = 8
N_JOBS = 2 * N_THREADS
# One speech token per job (the shortest output, which S3Gen must still decode): the point
# is which conditionals reach T3 and S3Gen, not the audio.
TOKENS_PER_JOB = 1


def test_jobs_on_eight_threads_with_five_voices_never_swap_voices(real_worker, model, monkeypatch):
    import handler

    monkeypatch.setattr(handler, "get_worker", lambda: real_worker)
    library = real_worker.library
    names = [v["speaker_name"] for v in library.list_voices()][:N_SHORT_VOICES]
    assert len(names) == N_SHORT_VOICES

    # Single-threaded reference: each voice's conditionals, computed directly.
    reference = {}
    for name in names:
        voice = library.get_voice_audio_by_name(name)
        reference[name] = model.prepare_conditionals_from_array(voice.samples, voice.sample_rate)

    # Capture what each generation actually fed T3 and S3Gen, per job thread.
    current = threading.local()
    used: list[tuple[str, torch.Tensor, torch.Tensor]] = []
    speech_tokens, synthesize = model.speech_tokens, model.synthesize

    def spy_t3(job, **kwargs):
        # What this job hands the T3 decode engine (its T3 conditionals).
        current.speaker_emb = job.t3_cond.speaker_emb.clone()
        current.prompt_tokens = job.t3_cond.cond_prompt_speech_tokens.clone()
        return speech_tokens(job, **kwargs)

    def spy_synthesize(text, **kwargs):
        current.gen_embedding = kwargs["conditionals"].gen["embedding"].clone()
        wav = synthesize(text, **kwargs)
        used.append((text, current.speaker_emb, current.prompt_tokens, current.gen_embedding))
        return wav

    monkeypatch.setattr(model, "speech_tokens", spy_t3)
    monkeypatch.setattr(model, "synthesize", spy_synthesize)

    barrier = threading.Barrier(N_THREADS)

    def job(i: int):
        name = names[i % len(names)]
        if i < N_THREADS:
            barrier.wait(timeout=30)  # the first wave starts together, all voices cold
        result = handler.handler({"input": {"text": f"Voice {name}.", "voice_name": name,
                                            "max_new_tokens": TOKENS_PER_JOB, "seed": i}})
        return name, result

    with ThreadPoolExecutor(max_workers=N_THREADS) as pool:
        results = list(pool.map(job, range(N_JOBS)))

    for name, result in results:
        assert "error" not in result, result
        assert result["parameters"]["voice_name"] == name
    assert len(used) == N_JOBS
    for text, speaker_emb, prompt_tokens, gen_embedding in used:
        name = text.removeprefix("Voice ").removesuffix(".")
        ref = reference[name]
        assert torch.equal(speaker_emb, ref.t3.speaker_emb), name
        assert torch.equal(prompt_tokens, ref.t3.cond_prompt_speech_tokens), name
        assert torch.equal(gen_embedding, ref.gen["embedding"]), name
    stats = real_worker.cache.stats()
    assert stats["misses"] == N_SHORT_VOICES  # each voice computed once, however many asked at once
