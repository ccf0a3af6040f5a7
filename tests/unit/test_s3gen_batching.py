"""The S3Gen lane: one call at a time; waiting windows share the next, exact-seed ones never."""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from chatterbox_worker.s3gen.lane import RAGGED_MAX_STRETCH, S3GenLane, Window, can_share, frames

VOICE = {"prompt_token": np.zeros((1, 75)), "prompt_feat": np.zeros((1, 150, 80)), "prompt_feat_len": None,
         "embedding": np.zeros((1, 192))}
OTHER_VOICE = {k: (None if v is None else v + 1) for k, v in VOICE.items()}


def window(n_tokens: int = 16, *, value: int = 0, exact: bool = False, gen=VOICE, steps=None) -> Window:
    return Window(tokens=np.full(n_tokens, value), gen=gen, seed=value, exact=exact, n_cfm_timesteps=steps)


class GatedDecoder:
    """Decodes each window to its tokens times 2; the first call waits for ``release``."""

    def __init__(self):
        self.calls: list[list[Window]] = []
        self.first_started = threading.Event()
        self.release = threading.Event()

    def __call__(self, windows):
        self.calls.append(list(windows))
        if len(self.calls) == 1:
            self.first_started.set()
            assert self.release.wait(10)
        return [w.tokens * 2 for w in windows]


def decode_in_threads(lane: S3GenLane, decoder: GatedDecoder, first: Window, waiting: list[Window]) -> dict:
    """``first`` occupies the lane; ``waiting`` queue up behind it; then the lane is released."""
    results: dict[int, np.ndarray] = {}
    errors: list[BaseException] = []

    def run(w: Window):
        try:
            results[id(w)] = lane.decode(w)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(first,))]
    threads[0].start()
    assert decoder.first_started.wait(10)
    for w in waiting:
        threads.append(threading.Thread(target=run, args=(w,)))
        threads[-1].start()
    deadline = time.monotonic() + 10
    while len(lane._waiting) < len(waiting) and time.monotonic() < deadline:
        time.sleep(0.01)
    decoder.release.set()
    for t in threads:
        t.join(10)
    return {"results": results, "errors": errors}


def test_windows_share_only_with_equal_shapes_steps_and_no_seed():
    assert can_share(window(), window(value=3))
    assert can_share(window(), window(gen=OTHER_VOICE))  # another voice of the same prompt shapes
    assert not can_share(window(), window(exact=True))
    assert not can_share(window(exact=True), window(exact=True))
    assert not can_share(window(16), window(17))
    assert not can_share(window(steps=2), window(steps=None))
    shorter = {**VOICE, "prompt_feat": np.zeros((1, 120, 80))}
    assert not can_share(window(), window(gen=shorter))
    assert not can_share(window(), window(gen={**VOICE, "prompt_feat_len": np.zeros(1)}))


def test_ragged_lanes_also_share_unequal_lengths_within_the_stretch():
    shorter = {**VOICE, "prompt_token": np.zeros((1, 60)), "prompt_feat": np.zeros((1, 120, 80))}
    assert can_share(window(16), window(17), ragged=True)
    assert can_share(window(), window(gen=shorter), ragged=True)  # another voice, another prompt length
    assert frames(window(16)) == 16 + 75
    longest = int(RAGGED_MAX_STRETCH * frames(window(1))) - 75
    assert can_share(window(1), window(longest), ragged=True)
    assert not can_share(window(1), window(longest + 1), ragged=True)
    # What never shares stays apart in a ragged lane too.
    assert not can_share(window(16), window(17, exact=True), ragged=True)
    assert not can_share(window(16, steps=2), window(17), ragged=True)
    assert not can_share(window(), window(gen={**VOICE, "extra": np.zeros(1)}), ragged=True)


def test_a_ragged_lane_takes_unequal_waiting_windows_into_one_call():
    decoder = GatedDecoder()
    lane = S3GenLane(decoder, max_batch=8, ragged=True)
    waiting = [window(14, value=2), window(18, value=3), window(16, value=4, exact=True)]
    out = decode_in_threads(lane, decoder, window(value=1), waiting)
    assert not out["errors"]
    # Whichever waiting thread wakes first makes the next call; the exact window is alone either way.
    assert sorted(sorted(len(w.tokens) for w in call) for call in decoder.calls) == [[14, 18], [16], [16]]
    for w in [*waiting]:
        assert np.array_equal(out["results"][id(w)], w.tokens * 2)


def test_waiting_windows_share_the_next_call_and_each_gets_its_own_audio():
    decoder = GatedDecoder()
    lane = S3GenLane(decoder, max_batch=8)
    first, waiting = window(value=1), [window(value=v) for v in (2, 3, 4)]
    out = decode_in_threads(lane, decoder, first, waiting)
    assert not out["errors"]
    assert [len(c) for c in decoder.calls] == [1, 3]
    for w in [first, *waiting]:
        assert np.array_equal(out["results"][id(w)], w.tokens * 2)
    assert lane.stats() == {"calls": 2, "windows": 4, "shared_calls": 1, "max_batch_windows": 3, "max_batch": 8}


def test_a_call_takes_at_most_max_batch_windows():
    decoder = GatedDecoder()
    lane = S3GenLane(decoder, max_batch=2)
    out = decode_in_threads(lane, decoder, window(value=1), [window(value=v) for v in range(2, 7)])
    assert not out["errors"] and len(out["results"]) == 6
    assert max(len(c) for c in decoder.calls) == 2
    assert sum(len(c) for c in decoder.calls) == 6


def test_exact_seed_and_unshareable_windows_are_decoded_alone():
    decoder = GatedDecoder()
    lane = S3GenLane(decoder, max_batch=8)
    waiting = [window(value=2, exact=True), window(value=3, exact=True), window(12, value=4), window(value=5)]
    out = decode_in_threads(lane, decoder, window(value=1), waiting)
    assert not out["errors"] and len(out["results"]) == 5
    for call in decoder.calls:
        assert len(call) == 1 or all(not w.exact and w.tokens.shape == (16,) for w in call)
    assert all(len(call) == 1 for call in decoder.calls if any(w.exact for w in call))


def test_max_batch_one_decodes_every_window_alone():
    decoder = GatedDecoder()
    lane = S3GenLane(decoder, max_batch=1)
    out = decode_in_threads(lane, decoder, window(value=1), [window(value=v) for v in (2, 3)])
    assert not out["errors"]
    assert [len(c) for c in decoder.calls] == [1, 1, 1]


def test_a_failed_call_fails_each_of_its_windows_and_the_lane_keeps_serving():
    calls = []

    def decode(windows):
        calls.append(len(windows))
        if len(calls) == 1:
            raise MemoryError("out of memory")
        return [w.tokens for w in windows]

    lane = S3GenLane(decode, max_batch=4)
    with pytest.raises(MemoryError):
        lane.decode(window(value=1))
    assert np.array_equal(lane.decode(window(value=2)), np.full(16, 2))
    assert lane.stats()["calls"] == 2


def test_a_failure_in_a_shared_call_reaches_every_window_in_it():
    class FailingSecondCall(GatedDecoder):
        def __call__(self, windows):
            result = super().__call__(windows)
            if len(self.calls) == 2:
                raise RuntimeError("S3Gen failed")
            return result

    decoder = FailingSecondCall()
    lane = S3GenLane(decoder, max_batch=8)
    out = decode_in_threads(lane, decoder, window(value=1), [window(value=2), window(value=3)])
    assert len(out["results"]) == 1 and len(out["errors"]) == 2
    assert all(isinstance(e, RuntimeError) for e in out["errors"])


def test_a_shared_call_out_of_memory_halves_the_batch_bound():
    class OutOfMemoryError(RuntimeError):  # torch's is matched by name
        pass

    class OomOnSharedCall(GatedDecoder):
        def __call__(self, windows):
            result = super().__call__(windows)
            if len(windows) > 1:
                raise OutOfMemoryError("CUDA out of memory")
            return result

    decoder = OomOnSharedCall()
    lane = S3GenLane(decoder, max_batch=8)
    out = decode_in_threads(lane, decoder, window(value=1), [window(value=v) for v in range(2, 6)])
    assert len(out["errors"]) == 4 and all(isinstance(e, OutOfMemoryError) for e in out["errors"])
    assert lane.max_batch == 2 and lane.stats()["max_batch"] == 2
    assert np.array_equal(lane.decode(window(value=9)), np.full(16, 18))  # and it keeps serving
