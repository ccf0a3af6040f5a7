"""Stream pacing without torch: the outbox holds a paced request and a take releases it."""
from __future__ import annotations

from chatterbox_worker.engine.requests import END_OF_STREAM, TokenOutbox


def test_an_outbox_holds_once_max_ahead_tokens_wait_and_a_take_releases_it():
    box = TokenOutbox(flush_every=4, max_ahead=4)
    for step in range(1, 4):
        box.push(step, step)
    assert box.waiting == 0 and not box.held  # buffered tokens never count: the caller cannot take them
    box.push(4, 4)
    assert box.waiting == 4 and box.held
    assert box.take(3) is True and not box.held  # taking releases it, and says so (the engine is woken)
    assert box.take(1) is False


def test_an_outbox_without_max_ahead_is_never_held():
    box = TokenOutbox(flush_every=1)
    for step in range(1, 100):
        box.push(step, step)
    assert box.waiting == 99 and not box.held


def test_a_replayed_token_is_not_handed_twice():
    box = TokenOutbox(flush_every=1, max_ahead=2)
    box.push(7, 1)
    assert box.push(7, 1) is False and box.waiting == 1
    box.end()
    assert box.queue.get() == [7] and box.queue.get() is END_OF_STREAM
