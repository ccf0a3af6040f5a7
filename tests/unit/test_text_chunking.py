"""text_chunking: sentence splitting and bounded chunks for long-text synthesis.

The model speaks each chunk on its own, so the two things that matter are:

* a chunk never goes over the bound (the model degrades past ~30 s of speech per call);
* no text is lost, reordered or cut inside a word (a half word is spoken as nonsense).

Joining the chunks with single spaces must give back the words of the input in order.
The one documented exception is a single word longer than the bound, which has no
space to split at and is cut hard; its characters must still all come back.
"""
from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chatterbox_worker.contract.request_schema import MAX_TEXT_CHARS
from chatterbox_worker.pipeline.text_chunking import split_sentences, split_text
from chatterbox_worker.settings import Settings, get_settings, reload_settings

DEFAULT_MAX_CHARS = Settings.model_fields["tts_chunk_max_chars"].default
SMALL_BOUND = 20
ENV_BOUND = 40
LONG_TEXT_CHARS = MAX_TEXT_CHARS  # the longest text a job may send
CJK_SENTENCE_ENDS = "。！？"
# Property tests run on every commit; enough examples to find edge cases, few enough to be quick.
PROPERTY_EXAMPLES = 300


def words(text: str) -> list[str]:
    return text.split()


def rejoined_words(chunks: list[str]) -> list[str]:
    return " ".join(chunks).split()


def non_space_chars(text: str) -> str:
    return "".join(text.split())


def assert_bounded(chunks: list[str], bound: int) -> None:
    for chunk in chunks:
        # A chunk over the bound is tolerated only when it is one word with nowhere to split.
        assert len(chunk) <= bound or " " not in chunk, (len(chunk), chunk)


def assert_words_preserved(text: str, chunks: list[str]) -> None:
    assert rejoined_words(chunks) == words(text)


# -- empty and trivial input -------------------------------------------------------------


@pytest.mark.parametrize("text", ["", " ", "   \n\t  ", "\r\n\r\n"], ids=["empty", "space", "mixed-ws", "newlines"])
def test_blank_text_gives_no_chunks(text):
    assert split_text(text) == []
    assert split_sentences(text) == []


def test_short_text_is_one_chunk():
    assert split_text("Hello world.") == ["Hello world."]


def test_short_sentences_are_packed_into_one_chunk():
    # Several short sentences fit one call; splitting them would only add pauses.
    assert split_text("Hi there. How are you? Fine!") == ["Hi there. How are you? Fine!"]


def test_sentence_boundaries_are_preferred_over_filling_the_bound():
    text = "First sentence here. Second one follows."
    assert split_text(text, 25) == ["First sentence here.", "Second one follows."]


# -- sentence detection ------------------------------------------------------------------


@pytest.mark.parametrize("text, expected", [
    ("Dr. Smith went home. He was tired.", ["Dr. Smith went home.", "He was tired."]),
    ("Mr. and Mrs. Jones left. Bye.", ["Mr. and Mrs. Jones left.", "Bye."]),
    ("Fruit, e.g. apples, is good. Yes.", ["Fruit, e.g. apples, is good.", "Yes."]),
    ("That is, i.e. the rest, fine. Ok.", ["That is, i.e. the rest, fine.", "Ok."]),
    ("The U.S. economy grew. Then it fell.", ["The U.S. economy grew.", "Then it fell."]),
    ("J. R. R. Tolkien wrote books. Many.", ["J. R. R. Tolkien wrote books.", "Many."]),
], ids=["dr", "mr-mrs", "e.g", "i.e", "u.s", "initials"])
def test_abbreviations_do_not_end_sentences(text, expected):
    assert split_sentences(text) == expected


@pytest.mark.parametrize("text", ["I live in the U.S.A. It is big.", "The U.S.A. team won the cup today."])
def test_dotted_acronym_is_never_cut_inside(text):
    # Whether "U.S.A." followed by a space ends a sentence is ambiguous (the module says
    # it does); either way the acronym itself stays whole, in sentences and in chunks.
    assert any("U.S.A." in sentence for sentence in split_sentences(text))
    assert "U.S.A." in words(" ".join(split_text(text, 12)))


@pytest.mark.parametrize("text, expected", [
    ("Pi is 3.14 today. Ok.", ["Pi is 3.14 today.", "Ok."]),
    ("We sold 1,000 units. Great!", ["We sold 1,000 units.", "Great!"]),
    ("It costs $1,000.50 now. Wow.", ["It costs $1,000.50 now.", "Wow."]),
    ("Visit example.com today. Ok.", ["Visit example.com today.", "Ok."]),
], ids=["decimal", "thousands", "money", "domain"])
def test_numbers_and_dotted_words_do_not_end_sentences(text, expected):
    assert split_sentences(text) == expected


@pytest.mark.parametrize("text, expected", [
    ('"Stop!" she said. Then left.', ['"Stop!"', "she said.", "Then left."]),
    ('He said "Hi." Then left.', ['He said "Hi."', "Then left."]),
    ("(Really?) Yes.", ["(Really?)", "Yes."]),
    ("It ended [finally.] Good.", ["It ended [finally.]", "Good."]),
    ("She said “done.” Ok.", ["She said “done.”", "Ok."]),
], ids=["quote-exclaim", "quote-period", "parens", "brackets", "curly-quotes"])
def test_closing_quotes_and_brackets_stay_with_their_sentence(text, expected):
    assert split_sentences(text) == expected


@pytest.mark.parametrize("text, expected", [
    ("Wait... what? Ok.", ["Wait...", "what?", "Ok."]),
    ("Hmm… fine. Ok.", ["Hmm…", "fine.", "Ok."]),
    ("Really?! Yes.", ["Really?!", "Yes."]),
], ids=["three-dots", "unicode-ellipsis", "mixed-marks"])
def test_ellipses_and_runs_of_marks_end_one_sentence(text, expected):
    assert split_sentences(text) == expected


def test_ellipsis_inside_a_word_does_not_split():
    assert split_sentences("So...what now? Ok.") == ["So...what now?", "Ok."]


def test_cjk_punctuation_ends_sentences_without_spaces():
    # CJK text has no spaces after its full stops; the marks alone end a sentence.
    assert split_sentences("你好。世界！真的吗？好") == ["你好。", "世界！", "真的吗？", "好"]


def test_cjk_sentences_become_separate_chunks_under_a_small_bound():
    chunks = split_text("你好。世界！真的吗？", 5)
    assert chunks == ["你好。", "世界！", "真的吗？"]
    assert all(chunk[-1] in CJK_SENTENCE_ENDS for chunk in chunks)


def test_long_cjk_run_without_punctuation_is_bounded_and_complete():
    text = "一二三四五六七八九十" * 5
    chunks = split_text(text, SMALL_BOUND)
    assert all(len(chunk) <= SMALL_BOUND for chunk in chunks)
    assert "".join(chunks) == text


def test_cjk_clause_marks_are_split_points():
    chunks = split_text("一二三四五，六七八九十，一二三。", 6)
    assert chunks[:2] == ["一二三四五，", "六七八九十，"]
    assert non_space_chars("".join(chunks)) == "一二三四五，六七八九十，一二三。"


@pytest.mark.parametrize("text", [
    "line one.\nline two.",
    "line one.\r\nline two.",
    "line one.\n\n\nline two.",
    "line\tone.  \n  line two.",
])
def test_newlines_and_tabs_are_whitespace(text):
    chunks = split_text(text)
    assert chunks == ["line one. line two."]
    assert split_sentences(text) == ["line one.", "line two."]


def test_newline_without_punctuation_does_not_split_words():
    chunks = split_text("a heading\nthen the body text goes on", SMALL_BOUND)
    assert_bounded(chunks, SMALL_BOUND)
    assert_words_preserved("a heading\nthen the body text goes on", chunks)
    assert not any("\n" in chunk for chunk in chunks)


# -- over-long sentences -----------------------------------------------------------------


def test_long_sentence_splits_at_commas_first():
    text = "one two three, four five six, seven eight nine."
    assert split_text(text, SMALL_BOUND) == ["one two three,", "four five six,", "seven eight nine."]


def test_long_clause_falls_back_to_spaces():
    text = "alpha beta gamma delta epsilon zeta, eta."
    chunks = split_text(text, 12)
    assert_bounded(chunks, 12)
    assert_words_preserved(text, chunks)
    # The first clause alone is over the bound, so it had to be split at its spaces.
    assert chunks[:3] == ["alpha beta", "gamma delta", "epsilon"]


@pytest.mark.parametrize("separator", [";", ":"])
def test_semicolons_and_colons_are_clause_breaks(separator):
    text = f"one two three{separator} four five six{separator} seven eight."
    chunks = split_text(text, SMALL_BOUND)
    assert chunks[0] == f"one two three{separator}"
    assert_words_preserved(text, chunks)


def test_text_without_any_punctuation_splits_only_at_spaces():
    text = " ".join(f"word{i}" for i in range(60))
    chunks = split_text(text, SMALL_BOUND)
    assert len(chunks) > 1
    assert all(len(chunk) <= SMALL_BOUND for chunk in chunks)
    assert_words_preserved(text, chunks)  # so no word was cut: all of them fit the bound


@pytest.mark.parametrize("token", ["1,000", "10:30", "a;b"])
def test_clause_split_keeps_numbers_and_times_whole(token):
    text = f"We met {token} times and then we met again many more times after that, which was plenty."
    chunks = split_text(text, 40)
    assert len(text) > 40  # the sentence must go through the clause splitter
    assert_words_preserved(text, chunks)


# -- over-long words ---------------------------------------------------------------------


def test_single_word_over_the_bound_is_returned_whole_or_cut_not_dropped():
    word = "x" * (3 * SMALL_BOUND + 7)
    chunks = split_text(word, SMALL_BOUND)  # must terminate: no infinite loop on no split point
    assert chunks, "an over-long word must not be dropped"
    assert "".join(chunks) == word
    assert_bounded(chunks, SMALL_BOUND)


def test_over_long_word_among_others_keeps_its_neighbours():
    long_word = "supercalifragilistic" * 3
    text = f"Before it. Then {long_word} and after."
    chunks = split_text(text, SMALL_BOUND)
    assert_bounded(chunks, SMALL_BOUND)
    assert non_space_chars(" ".join(chunks)) == non_space_chars(text)
    # The words around the long one are intact, and the long one is cut only at the bound.
    assert chunks[0] == "Before it. Then" and chunks[-1] == "and after."
    assert chunks[1:-1] == ["supercalifragilistic"] * 3


@pytest.mark.parametrize("bound", [1, 2, 3])
def test_tiny_bounds_terminate_and_keep_every_character(bound):
    text = "Tiny bounds, still fine. Ok!"
    chunks = split_text(text, bound)
    assert non_space_chars("".join(chunks)) == non_space_chars(text)
    assert all(len(chunk) <= bound for chunk in chunks)


# -- long text ---------------------------------------------------------------------------


def long_text(target_chars: int) -> str:
    """A realistic long job: short and long sentences, abbreviations, numbers, quotes."""
    pool = [
        "Dr. Smith arrived at 3.14 p.m. sharp.",
        '"Is it ready?" she asked.',
        "The report (see Fig. 2) covers 1000 cases.",
        "Wait... are you sure?",
        # Over the default bound: exercises the clause and space fallbacks.
        "This sentence keeps going, and going, through clause after clause; it lists apples, "
        "pears, plums and cherries, then it talks about the weather in the mountains and the "
        "valleys, the rivers and the lakes, the long roads that wind between the small towns, "
        "and it only stops when it has said far more than any one sentence should hold at once.",
        "Short one.",
    ]
    sentences, length, i = [], 0, 0
    while length < target_chars:
        sentence = pool[i % len(pool)]
        sentences.append(sentence)
        length += len(sentence) + 1
        i += 1
    return " ".join(sentences)[:target_chars].rsplit(" ", 1)[0]


def test_five_thousand_characters_bounded_and_word_for_word():
    text = long_text(LONG_TEXT_CHARS)
    assert len(text) > LONG_TEXT_CHARS - 50
    chunks = split_text(text)
    assert len(chunks) >= len(text) // DEFAULT_MAX_CHARS
    assert all(0 < len(chunk) <= DEFAULT_MAX_CHARS for chunk in chunks)
    assert_words_preserved(text, chunks)


# -- the bound is configurable -----------------------------------------------------------


@pytest.mark.parametrize("bound", [15, 50, 120])
def test_explicit_bound_is_respected(bound):
    text = long_text(1500)
    chunks = split_text(text, bound)
    assert_bounded(chunks, bound)
    assert_words_preserved(text, chunks)


def test_larger_bound_gives_fewer_chunks():
    text = long_text(1500)
    assert len(split_text(text, 300)) < len(split_text(text, 100)) < len(split_text(text, 30))


def test_env_variable_sets_the_default_bound(monkeypatch):
    monkeypatch.setenv("TTS_CHUNK_MAX_CHARS", str(ENV_BOUND))
    reload_settings()
    assert get_settings().tts_chunk_max_chars == ENV_BOUND
    chunks = split_text(long_text(500))
    assert len(chunks) > 1
    assert all(len(chunk) <= ENV_BOUND for chunk in chunks)


# -- properties --------------------------------------------------------------------------

# Words as a client writes them: letters, numbers with a decimal point, abbreviations,
# and trailing punctuation.
_plain_words = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCXYZ0123456789'-", min_size=1, max_size=12)
_fixed_words = st.sampled_from(["Dr.", "e.g.", "U.S.A.", "3.14", "1,000", "10:30", "Mr.", "etc.", "(aside)",
                                '"quoted"', "…"])
_trailing = st.sampled_from(["", "", "", ".", ",", "!", "?", ";", ":", "...", ".\"", "?)", "。"])
_word = st.one_of(st.tuples(_plain_words, _trailing).map("".join), _fixed_words)
_space = st.sampled_from([" ", " ", " ", "  ", "\n", "\t", " \n\n "])


@st.composite
def texts(draw, word=_word):
    tokens = draw(st.lists(word, min_size=0, max_size=80))
    out = ""
    for token in tokens:
        out += token + draw(_space)
    return out


@settings(max_examples=PROPERTY_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=texts(), bound=st.integers(min_value=1, max_value=120))
def test_property_chunks_are_bounded_and_lose_nothing(text, bound):
    chunks = split_text(text, bound)
    assert_bounded(chunks, bound)
    assert all(chunk and chunk == chunk.strip() for chunk in chunks)
    # Every character (bar whitespace) comes back once, in order, even from cut words.
    assert non_space_chars("".join(chunks)) == non_space_chars(text)


@settings(max_examples=PROPERTY_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=texts(), bound=st.integers(min_value=1, max_value=120))
def test_property_word_sequence_is_preserved_when_words_fit(text, bound):
    # Words that fit the bound are never cut: the word sequence comes back exactly.
    longest = max((len(w) for w in words(text)), default=0)
    bound = max(bound, longest)
    chunks = split_text(text, bound)
    assert all(len(chunk) <= bound for chunk in chunks)
    assert_words_preserved(text, chunks)


@settings(max_examples=PROPERTY_EXAMPLES, deadline=None)
@given(text=texts())
def test_property_sentences_cover_the_text(text):
    sentences = split_sentences(text)
    assert " ".join(sentences).split() == words(text)
    assert all(sentence == sentence.strip() and sentence for sentence in sentences)
