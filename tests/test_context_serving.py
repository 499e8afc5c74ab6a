"""How the worker supplies a served segment's context (stream/context.py, stream/pipeline.py), with
a real Redis and a fake Triton that scores a segment by exactly what it was given (its words and
its context's words): a score depends on the batch, the worker or a redelivery only if the context
does. The exported graph's own batch invariance is tests/test_context_export.py's."""
import asyncio
import time
import zlib

import numpy as np
import pytest

from stream import context
from stream.config import ConfigError, DetectorParams, Settings
from stream.contract import ModelContract, Tokenizer
from stream.pipeline import Pipeline
from stream.retry import Backoff
from stream.schema import encode_segment
from stream.store import StoreSettings, TrendStore
from trainer.text_encoder import minilm_dir

K = 2
WITH_CONTEXT = ModelContract(widths={"audio": 5}, max_text_tokens=16, max_frames=50, max_batch=64, context=K,
                             max_context_tokens=32)
T0 = time.time() - 3600


def quick_backoff():
    return Backoff(first=0.01, cap=0.02)


class ContextEcho:
    """Scores each segment by a hash of its words and its context's words, and notes the context."""

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer, self.context_of, self.computed = tokenizer, {}, {}

    async def infer(self, inputs, outputs, version=None, model=None):
        scores = []
        for i in range(len(inputs["input_ids"])):
            words = tuple(inputs["input_ids"][i][inputs["attention_mask"][i] > 0].tolist())
            previous = tuple(inputs["context_ids"][i][inputs["context_mask"][i] > 0].tolist()) \
                if "context_ids" in inputs else ()
            text = self.tokenizer.backend.decode(list(words))
            self.context_of[text] = self.tokenizer.backend.decode(list(previous), skip_special_tokens=False)
            score = (zlib.crc32(repr((words, previous)).encode()) % 6000) / 1000 - 3
            self.computed.setdefault(text, []).append(score)
            scores.append(score)
        return {"score": np.array(scores, np.float32)}


def message(stream: str, n: int, at: float | None = None) -> bytes:
    """Segment n of a stream: its words name it ("alpha segment three"), its event time is n s."""
    words = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven"]
    return encode_segment(stream, f"{stream}-{n}", T0 + (n if at is None else at), f"{stream} segment {words[n]}",
                          np.ones((3, 5), np.float32), None)


@pytest.fixture
def store(redis_url):
    s = TrendStore(redis_url, StoreSettings(context_kept=6))
    s.redis.flushdb()
    return s


def worker(store, contract=WITH_CONTEXT) -> Pipeline:
    tokenizer = Tokenizer(minilm_dir(), contract.max_text_tokens)
    return Pipeline(ContextEcho(tokenizer), store, tokenizer, contract, DetectorParams(warmup=20),
                    backoff=quick_backoff)


def published(results) -> dict[str, float]:
    return {s.segment_id: s.score for r in results for s in r.scores}


def run_batches(pipeline: Pipeline, batches: list[list[bytes]], overlap: bool = False):
    """Each batch through the worker's stages; with `overlap`, every batch is taken and its Triton
    call made before the first is recorded, as with batches in flight (stream/in_flight.py)."""
    async def go():
        if not overlap:
            return [await pipeline.process(b) for b in batches]
        calls = [asyncio.ensure_future(pipeline.start(b)) for b in batches]
        await asyncio.wait(calls)
        return [await pipeline.finish(call) for call in calls]
    return asyncio.run(go())


STREAM = [message("alpha", n) for n in range(8)] + [message("beta", n) for n in range(5)]
INTERLEAVED = [STREAM[i] for i in (0, 8, 1, 2, 9, 3, 10, 4, 5, 11, 6, 12, 7)]  # partition order


def test_context_is_the_k_previous_transcripts_and_a_streams_first_segment_has_none(store):
    pipeline = worker(store)
    run_batches(pipeline, [INTERLEAVED])
    seen = pipeline.scorer.context_of
    assert seen["alpha segment zero"] == ""
    assert seen["alpha segment one"] == "alpha segment zero [SEP]"
    assert seen["alpha segment five"] == "alpha segment three [SEP] alpha segment four [SEP]"
    assert seen["beta segment two"] == "beta segment zero [SEP] beta segment one [SEP]"  # never another stream's


@pytest.mark.parametrize("batches, overlap", [
    ([INTERLEAVED[:5], INTERLEAVED[5:]], False),
    ([[m] for m in INTERLEAVED], False),
    ([INTERLEAVED[:3], INTERLEAVED[3:4], INTERLEAVED[4:9], INTERLEAVED[9:]], True),  # batches in flight
])
def test_a_segments_score_is_the_same_whatever_batch_scored_it(store, batches, overlap):
    whole = published(run_batches(worker(store), [INTERLEAVED]))
    store.redis.flushdb()
    got = published(run_batches(worker(store), batches, overlap))
    assert len(got) == len(INTERLEAVED) and got == whole


def test_two_workers_taking_turns_on_a_partition_score_as_one(store):
    one = published(run_batches(worker(store), [INTERLEAVED]))
    store.redis.flushdb()
    first, second = worker(store), worker(store)  # a rebalance: the partition moves to another worker
    got = published(run_batches(first, [INTERLEAVED[:6]]) + run_batches(second, [INTERLEAVED[6:]]))
    assert got == one


def test_a_later_segment_never_changes_an_earlier_score(store):
    early = published(run_batches(worker(store), [INTERLEAVED[:6]]))
    store.redis.flushdb()
    everything = published(run_batches(worker(store), [INTERLEAVED]))  # the later ones in the same batch
    assert {sid: everything[sid] for sid in early} == early


def test_redelivery_computes_the_same_score_after_later_and_late_segments(store):
    pipeline = worker(store)
    run_batches(pipeline, [STREAM[:5]])
    late = message("alpha", 11, at=2.5)  # recorded after segment four, with an event time before three
    run_batches(pipeline, [[STREAM[5], late]])
    # the late one reads the two before its event time among those there
    assert pipeline.scorer.context_of["alpha segment eleven"] == "alpha segment one [SEP] alpha segment two [SEP]"
    run_batches(pipeline, [STREAM[3:5]])  # segments three and four again (a crash before the commit)
    for text in ("alpha segment three", "alpha segment four"):
        first, again = pipeline.scorer.computed[text]
        assert again == first
    assert pipeline.scorer.context_of["alpha segment four"] == "alpha segment two [SEP] alpha segment three [SEP]"


def test_a_repeat_within_the_batches_in_flight_gets_its_first_copys_context(store):
    pipeline = worker(store)
    run_batches(pipeline, [STREAM[:3], STREAM[3:5] + [STREAM[2]]], overlap=True)
    first, again = pipeline.scorer.computed["alpha segment two"]
    assert again == first


def test_a_model_without_context_reads_nothing_for_it(store, monkeypatch):
    k0 = ModelContract(widths={"audio": 5}, max_text_tokens=16, max_frames=50, max_batch=64)
    pipeline = worker(store, k0)
    monkeypatch.setattr(store, "recorded_context", lambda streams: pytest.fail("k = 0 read the context windows"))
    run_batches(pipeline, [INTERLEAVED])
    assert set(pipeline.scorer.context_of.values()) == {""}
    assert store.redis.zcard("tf:{alpha}:context") == 6  # the window is kept for a model with context


def test_the_store_keeps_the_newest_by_event_time_with_their_record_order(store):
    run_batches(worker(store), [STREAM[:8], [message("alpha", 11, at=0.5)]])
    window = store.recorded_context(["alpha"])["alpha"]
    assert [r.segment_id for r in window] == [f"alpha-{n}" for n in range(2, 8)]  # 0, 1 and the late one: gone
    assert [r.seq for r in window] == list(range(3, 9))
    assert window[0].text == "alpha segment two"


def test_context_unit_rules():
    taken = [context.Taken("s", f"s-{n}", float(n), f"t{n}") for n in range(4)]
    recorded = [context.Recorded("s-0", 0.0, "t0", 1), context.Recorded("s-5", 5.0, "t5", 2)]
    # a segment before the recorded s-5 in event time sees only what lies below it
    assert context.transcripts(taken[1:], {}, {"s": recorded}, 2) == [["t0"], ["t0", "t1"], ["t1", "t2"]]
    assert context.transcripts(taken, {}, {"s": recorded}, 0) == [[], [], [], []]


def test_a_model_reading_more_than_the_store_keeps_stops_the_worker():
    from stream.startup import served_contract

    class Serving:
        async def contract(self, model=None):
            return WITH_CONTEXT
    with pytest.raises(ConfigError, match="TECAFLOW_CONTEXT_KEPT=1 keeps fewer"):
        asyncio.run(served_contract(Serving(), 32, context_kept=1))
    assert asyncio.run(served_contract(Serving(), 32, context_kept=Settings().context_kept)).context == K


def test_a_batch_cancelled_in_triton_is_no_longer_counted_as_taken(store):
    class Hanging(ContextEcho):
        async def infer(self, inputs, outputs, version=None, model=None):
            await asyncio.sleep(3600)
    tokenizer = Tokenizer(minilm_dir(), WITH_CONTEXT.max_text_tokens)
    pipeline = Pipeline(Hanging(tokenizer), store, tokenizer, WITH_CONTEXT, DetectorParams(warmup=20),
                        backoff=quick_backoff)

    async def go():
        call = asyncio.ensure_future(pipeline.start(STREAM[:3]))
        await asyncio.sleep(0.5)
        assert [t.segment_id for t in pipeline.unrecorded["alpha"]] == ["alpha-0", "alpha-1", "alpha-2"]
        call.cancel()
        await asyncio.gather(call, return_exceptions=True)
    asyncio.run(go())
    assert pipeline.unrecorded == {}
