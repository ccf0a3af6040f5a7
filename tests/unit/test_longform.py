"""A job's chunks side by side: the slot bound, text order, per-chunk seeds, progress, and
the chunk bounds each model variant takes from the registry."""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from chatterbox_worker.audio.codec import join_audio_chunks
from chatterbox_worker.models.options import GenerationOptions
from chatterbox_worker.models.registry import TURBO_CHUNK_CHARS, TURBO_CHUNK_TOKENS, VARIANTS
from chatterbox_worker.pipeline.chunk_plan import Chunk, chunk_chars, chunk_seed, chunk_token_cap, plan_text
from chatterbox_worker.pipeline.parallel_chunks import chunk_audio
from chatterbox_worker.pipeline.speech import SpeechJob, speak, speak_blocks, speak_stream
from chatterbox_worker.testing.stub_model import StubModel

# Each sentence is over half the 300-character bound, so each is a chunk of its own.
EIGHT_SENTENCES = " ".join(f"Sentence number {i} is long enough to stand as a chunk of its own, since two of "
                           "them together would run past the longest chunk the standard model takes." for i in range(8))
# Long enough per chunk that chunks of one job overlap in time, whatever the machine.
SYNTH_HOLD_S = 0.05


class CountingModel(StubModel):
    """The stub model, holding each call briefly and counting how many run at once."""

    def __init__(self):
        super().__init__()
        self.in_flight = 0
        self.max_in_flight = 0
        self.seeds: dict[str, int | None] = {}
        self._lock = threading.Lock()

    def synthesize(self, text, *, conditionals, options=None):
        with self._lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            self.seeds[text] = options.seed if options else None
        try:
            time.sleep(SYNTH_HOLD_S)
            return super().synthesize(text, conditionals=conditionals, options=options)
        finally:
            with self._lock:
                self.in_flight -= 1


def job_for(model, seed=7) -> SpeechJob:
    return SpeechJob(model, None, model.default_conditionals(), None, seed, GenerationOptions(seed=seed))


def chunk_texts(text: str, variant: str = "standard") -> list[str]:
    return [item.text for item in plan_text(text, chunk_chars(variant)) if isinstance(item, Chunk)]


@pytest.mark.parametrize("slots", [1, 2, 3, 8])
def test_a_job_runs_at_most_its_slot_bound_of_chunks_at_once(worker, monkeypatch, slots):
    monkeypatch.setenv("JOB_CHUNK_SLOTS", str(slots))
    model = CountingModel()
    speak(worker, job_for(model), EIGHT_SENTENCES)
    assert model.max_in_flight == slots
    assert len(model.generations) == len(chunk_texts(EIGHT_SENTENCES)) == 8


def test_chunks_side_by_side_give_the_sequential_audio_in_text_order(worker, monkeypatch):
    model = StubModel()
    monkeypatch.setenv("JOB_CHUNK_SLOTS", "1")
    sequential = speak(worker, job_for(model), EIGHT_SENTENCES)
    monkeypatch.setenv("JOB_CHUNK_SLOTS", "4")
    parallel = speak(worker, job_for(model), EIGHT_SENTENCES)
    assert np.array_equal(parallel, sequential)
    # The same joins as before: each chunk's audio, faded and paused by join_audio_chunks.
    texts = chunk_texts(EIGHT_SENTENCES)
    parts = [model.synthesize(t, conditionals=model.default_conditionals(),
                              options=GenerationOptions(seed=chunk_seed(7, i))) for i, t in enumerate(texts)]
    assert np.array_equal(parallel, join_audio_chunks(parts, model.sr))


def test_each_chunk_draws_from_a_seed_derived_from_the_job_seed_and_its_index(worker):
    model = CountingModel()
    speak(worker, job_for(model, seed=1234), EIGHT_SENTENCES)
    texts = chunk_texts(EIGHT_SENTENCES)
    assert [model.seeds[t] for t in texts] == [chunk_seed(1234, i) for i in range(len(texts))]
    assert chunk_seed(1234, 0) == 1234  # a one-chunk job keeps its own seed
    assert len(set(model.seeds.values())) == len(texts)


def test_a_seeded_job_gives_the_same_audio_alone_and_beside_three_others(worker, monkeypatch):
    monkeypatch.setenv("JOB_CHUNK_SLOTS", "4")
    model = CountingModel()
    alone = speak(worker, job_for(model, seed=99), EIGHT_SENTENCES)
    results: dict[int, np.ndarray] = {}

    def run(seed: int) -> None:
        results[seed] = speak(worker, job_for(model, seed=seed), EIGHT_SENTENCES)

    threads = [threading.Thread(target=run, args=(seed,)) for seed in (99, 1, 2, 3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert model.max_in_flight > 4  # the jobs really ran side by side
    assert np.array_equal(results[99], alone)
    assert not np.array_equal(results[1], alone)


def test_progress_reports_chunks_done_out_of_chunks_in_total(worker, monkeypatch):
    monkeypatch.setenv("JOB_CHUNK_SLOTS", "3")
    seen: list[tuple[int, int]] = []
    speak(worker, job_for(CountingModel()), EIGHT_SENTENCES, progress=lambda d, t: seen.append((d, t)))
    total = len(chunk_texts(EIGHT_SENTENCES))
    assert sorted(seen) == [(done, total) for done in range(1, total + 1)]


def test_a_failing_chunk_fails_the_job_and_unstarted_chunks_never_start(worker, monkeypatch):
    monkeypatch.setenv("JOB_CHUNK_SLOTS", "2")
    calls: list[int] = []

    def synthesize(chunk: Chunk) -> np.ndarray:
        calls.append(chunk.index)
        if chunk.index == 1:
            raise RuntimeError("chunk 1 failed")
        time.sleep(SYNTH_HOLD_S)
        return np.ones(10, dtype=np.float32)

    chunks = [Chunk(f"c{i}", i) for i in range(40)]
    with pytest.raises(RuntimeError, match="chunk 1 failed"):
        list(chunk_audio(chunks, synthesize, slots=2))
    assert len(calls) < len(chunks)


def test_finished_chunks_are_yielded_while_later_ones_still_run(worker, monkeypatch):
    monkeypatch.setenv("JOB_CHUNK_SLOTS", "2")
    model = CountingModel()
    blocks = speak_blocks(worker, job_for(model), EIGHT_SENTENCES * 4)
    next(blocks)
    started = len(model.generations)
    blocks.close()  # a consumer that stops: no chunk past the window is started
    assert started < len(chunk_texts(EIGHT_SENTENCES * 4))


# -- chunk bounds from the registry ------------------------------------------------------

def test_chunk_bounds_come_from_the_variant_and_turbo_takes_less():
    assert chunk_chars("standard") == VARIANTS["standard"].max_chunk_chars == 300
    assert chunk_chars("turbo") == TURBO_CHUNK_CHARS < chunk_chars("standard")
    assert chunk_token_cap("turbo", None) == TURBO_CHUNK_TOKENS < chunk_token_cap("standard", None) == 1000
    assert chunk_token_cap("turbo", 900) == TURBO_CHUNK_TOKENS and chunk_token_cap("turbo", 40) == 40


def test_the_worker_setting_can_only_lower_the_variant_bound(monkeypatch):
    monkeypatch.setenv("TTS_CHUNK_MAX_CHARS", "120")
    assert chunk_chars("standard") == chunk_chars("turbo") == 120
    monkeypatch.setenv("TTS_CHUNK_MAX_CHARS", "1000")
    assert chunk_chars("standard") == 300


def test_a_sentence_over_the_bound_splits_at_a_clause_then_at_a_word():
    clause = "word " * 30
    sentence = f"{clause.strip()}, {clause.strip()}, and then {'longer ' * 40}end."
    pieces = chunk_texts(sentence, "turbo")
    assert all(len(p) <= TURBO_CHUNK_CHARS for p in pieces)
    assert pieces[0].endswith(",")  # the clause break came first
    assert " ".join(pieces).split() == sentence.split()  # then words: none cut, none lost


def test_turbo_jobs_speak_in_turbo_sized_chunks(worker):
    model = StubModel()
    model.variant = "turbo"
    text = " ".join(["This sentence has a good many words in it, enough to fill a chunk."] * 12)
    speak(worker, job_for(model), text)
    assert all(len(t) <= TURBO_CHUNK_CHARS for t, _ in model.generations)
    assert max(len(t) for t, _ in model.generations) > TURBO_CHUNK_CHARS * 0.6


# -- long streams: the next sentence opened early ------------------------------------------

class OpeningModel(StubModel):
    """Records when each sentence's stream is opened (the real model submits its tokens
    then) and when each of its windows is taken."""

    def __init__(self):
        super().__init__()
        self.events: list[str] = []
        self.closed: list[str] = []

    def stream(self, text, *, conditionals, options=None, chunk_size=50, first_chunk_size=None):
        self.events.append(f"open {text.split()[0]}")
        windows = super().stream(text, conditionals=conditionals, options=options, chunk_size=chunk_size,
                                 first_chunk_size=first_chunk_size)
        return self._recorded(text.split()[0], windows)

    def _recorded(self, name, windows):
        try:
            for wav in windows:
                self.events.append(f"window {name}")
                yield wav
        finally:
            self.closed.append(name)


# Three sentences of about 150 characters: under a 200-character bound, one chunk each.
THREE = " ".join(f"{name} sentence goes on and on, {'with more words, ' * 7}until it ends." for name in
                 ("Alpha", "Bravo", "Delta"))


def test_a_stream_opens_the_next_sentence_after_the_first_window_and_before_the_last(worker, monkeypatch):
    monkeypatch.setenv("TTS_CHUNK_MAX_CHARS", "200")
    model = OpeningModel()
    list(speak_stream(worker, job_for(model), THREE, chunk_size=10))
    alpha = [i for i, e in enumerate(model.events) if e == "window Alpha"]
    assert len(alpha) >= 3
    # Sentence 2 is opened after sentence 1's first window (its prefill never delays the
    # first audio) and before sentence 1's last window is taken ...
    assert alpha[0] < model.events.index("open Bravo") < alpha[-1]
    assert model.events.index("open Delta") > model.events.index("window Bravo")
    # ... but never decoded ahead: its windows come only after all of sentence 1's.
    assert min(i for i, e in enumerate(model.events) if e == "window Bravo") > alpha[-1]


def test_without_lookahead_each_sentence_opens_when_its_turn_comes(worker, monkeypatch):
    monkeypatch.setenv("TTS_CHUNK_MAX_CHARS", "200")
    monkeypatch.setenv("STREAM_LOOKAHEAD_CHUNKS", "0")
    model = OpeningModel()
    list(speak_stream(worker, job_for(model), THREE, chunk_size=10))
    second_open = model.events.index("open Bravo")
    assert second_open > max(i for i, e in enumerate(model.events) if e == "window Alpha")


def test_a_consumer_that_stops_early_closes_the_sentences_opened_ahead(worker, monkeypatch):
    monkeypatch.setenv("TTS_CHUNK_MAX_CHARS", "200")
    model = OpeningModel()
    windows = speak_stream(worker, job_for(model), THREE, chunk_size=10)
    next(windows)
    next(windows)  # sentence 2 is open now
    windows.close()
    opened = [e.removeprefix("open ") for e in model.events if e.startswith("open")]
    assert opened == ["Alpha", "Bravo"] and model.closed == ["Alpha"]  # the started one ran its finally
