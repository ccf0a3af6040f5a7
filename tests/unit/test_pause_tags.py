"""Pause tags: placement, exact lengths, Turbo's own tags untouched, and bad tags refused."""
from __future__ import annotations

import pytest

from chatterbox_worker.contract.errors import JobError
from chatterbox_worker.pipeline.pause_tags import (
    MAX_PAUSE_SECONDS,
    Silence,
    Speech,
    has_pause_tags,
    parse_segments,
    require_speech,
    spoken_text,
)


def test_text_without_tags_is_one_run_of_speech():
    assert parse_segments("Hello there.  How are you?") == [Speech("Hello there. How are you?")]
    assert not has_pause_tags("Hello there.")


@pytest.mark.parametrize("tag, seconds", [
    ("[pause:1.5s]", 1.5), ("[pause:300ms]", 0.3), ("[PAUSE: 2 s]", 2.0), ("[pause:.25s]", 0.25),
    ("[pause:10s]", 10.0), ("[pause:10000ms]", 10.0),
])
def test_a_tag_becomes_silence_of_its_length_where_it_stands(tag, seconds):
    assert parse_segments(f"Before. {tag} After.") == [Speech("Before."), Silence(seconds), Speech("After.")]
    assert has_pause_tags(tag)


def test_pauses_side_by_side_add_up_and_a_zero_pause_adds_nothing():
    assert parse_segments("A [pause:300ms][pause:200ms] B") == [Speech("A"), Silence(0.5), Speech("B")]
    assert parse_segments("A [pause:0s] B") == [Speech("A"), Speech("B")]


def test_tags_at_the_edges_keep_their_silence():
    assert parse_segments("[pause:1s]Hi[pause:2s]") == [Silence(1.0), Speech("Hi"), Silence(2.0)]


@pytest.mark.parametrize("tag", ["[laugh]", "[cough]", "[chuckle]", "[sigh]", "[gasp]"])
def test_turbo_tags_pass_through_unchanged(tag):
    text = f"That was funny {tag} really."
    assert parse_segments(text) == [Speech(text)]
    assert spoken_text(parse_segments(f"Oh {tag} [pause:1s] well")) == f"Oh {tag} well"


@pytest.mark.parametrize("tag", ["[pause]", "[pause:]", "[pause:abc]", "[pause:2]", "[pause:1.5h]",
                                 "[pause:-1s]", "[pause:1s", "[pause 1s]", "[pause:1,5s]"])
def test_a_malformed_tag_names_text(tag):
    with pytest.raises(JobError) as info:
        parse_segments(f"Hello {tag} world")
    assert info.value.field == "text" and "pause" in info.value.message


@pytest.mark.parametrize("tag", ["[pause:10.5s]", "[pause:11000ms]", "[pause:60s]"])
def test_a_pause_past_the_bound_names_text_and_the_bound(tag):
    with pytest.raises(JobError) as info:
        parse_segments(tag)
    assert info.value.field == "text" and f"{MAX_PAUSE_SECONDS:g} s" in info.value.message


@pytest.mark.parametrize("text", ["[pause:1s]", "  [pause:1s] [pause:2s]  ", ""])
def test_tags_alone_have_nothing_to_speak(text):
    with pytest.raises(JobError) as info:
        require_speech(parse_segments(text))
    assert info.value.field == "text" and "nothing to speak" in info.value.message
