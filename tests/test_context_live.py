"""A model with context on the real embedded stack (Tansu, redis-server, tritonserver, a worker
process): each recorded score is the model's score of the segment with the transcripts of the two
segments before it in its stream, whatever the batches were, for a late segment too."""
from __future__ import annotations

import time

import numpy as np
import pytest

from stream.contract import Tokenizer, tokenizer_dir
from stream.schema import encode_segment
from stream.triton_client import TritonScorer
from tests.conftest import launch, shut_down
from trainer.data import load_dataset

pytestmark = [pytest.mark.integration, pytest.mark.slow]
K = 2


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    system = launch(tmp_path_factory.mktemp("context-live"), context=K)
    yield system
    shut_down(system)


def segments(stream: str, rows, t0: float) -> list[dict]:
    ds = load_dataset("synthetic", seed=0, n=600, cue_strength=1.5, max_frames=20).test
    return [dict(stream_id=stream, segment_id=f"{stream}-{i}", event_time=t0 + i, text=ds.texts[r],
                 audio=ds.audio[r, :ds.audio_lengths[r]], visual=ds.visual[r, :ds.visual_lengths[r]])
            for i, r in enumerate(rows)]


def encoded(segment: dict) -> tuple[bytes, bytes]:
    return segment["stream_id"].encode(), encode_segment(**segment)


def expected_scores(live, batch: list[dict], previous: list[list[str]]) -> np.ndarray:
    """Triton's scores for the segments with the given contexts, in one request."""
    scorer = TritonScorer(live.env["TECAFLOW_TRITON_URL"])
    try:
        contract = scorer.contract()
        tokenizer = Tokenizer(tokenizer_dir(live.root / "repo"), contract.max_text_tokens)
        inputs = contract.batch(*tokenizer([s["text"] for s in batch]),
                                {m: [s[m] for s in batch] for m in contract.widths},
                                tokenizer.context(previous, contract.max_context_tokens))
        return scorer.score(inputs)
    finally:
        scorer.close()


def held(live, batch: list[dict]) -> np.ndarray:
    return np.array(live.store.held_scores([(s["stream_id"], s["segment_id"]) for s in batch]), dtype=float)


def wait_for(live, stream: str, count: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while live.store.totals(stream).get("count", 0) < count:
        assert time.monotonic() < deadline, f"{stream}: {live.store.totals(stream)} of {count} recorded"
        time.sleep(0.3)


def test_served_scores_read_the_previous_transcripts_whatever_the_batches(live):
    t0 = time.time() - 600
    first = segments("ctx-a", range(10), t0)
    again = segments("ctx-b", range(10), t0)  # the same segments as another stream, batched otherwise
    filler = segments("ctx-c", range(10, 30), t0)
    for s in first:  # one at a time: batches of one or two
        live.produce([encoded(s)])
        time.sleep(0.05)
    live.produce([encoded(s) for pair in zip(again, filler) for s in pair] + [encoded(s) for s in filler[10:]])
    for stream, n in (("ctx-a", 10), ("ctx-b", 10), ("ctx-c", 20)):
        wait_for(live, stream, n)

    previous = [[s["text"] for s in first[max(0, i - K):i]] for i in range(len(first))]
    expected = expected_scores(live, first, previous)
    assert held(live, first) == pytest.approx(expected, abs=1e-6)
    assert np.array_equal(held(live, again), held(live, first))  # another batching, the same scores
    blind = expected_scores(live, first, [[] for _ in first])
    assert blind[0] == pytest.approx(expected[0], abs=1e-6)  # the first segment has no context
    assert np.all(np.abs(blind[1:] - expected[1:]) > 1e-5)  # the others read theirs

    late = segments("ctx-a", [40], t0 + 4.5)[0] | {"segment_id": "ctx-a-late"}
    live.produce([encoded(late)] + [encoded(s) for s in first[3:6]])  # and a redelivery of three
    wait_for(live, "ctx-a", 11)
    time.sleep(2)  # the redelivered ones pass too (they change nothing)
    assert live.store.totals("ctx-a")["count"] == 11
    # the late one reads the two before its event time (segments 3 and 4), not the newest
    assert held(live, [late]) == pytest.approx(expected_scores(live, [late], [[first[3]["text"], first[4]["text"]]]),
                                               abs=1e-6)
    assert held(live, first) == pytest.approx(expected, abs=1e-6)
