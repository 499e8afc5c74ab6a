"""The worker's batch logic with a fake Triton (unit test) and a real Redis."""
import asyncio
import json
import math

import numpy as np
import pytest

from stream import metrics
from stream.config import DetectorParams
from stream.contract import ModelContract, Tokenizer
from stream.pipeline import Pipeline
from stream.retry import Backoff
from stream.schema import encode_segment
from stream.store import TrendStore
from tests.conftest import an_alert
from tests.malformed import MAX_FRAMES, catalogue, conflicting_pair, valid_bytes
from tests.malformed import hostile as hostile_cases
from trainer.text_encoder import minilm_dir

CONTRACT = ModelContract(widths={"audio": 5, "visual": 20}, max_text_tokens=16, max_frames=MAX_FRAMES, max_batch=64)


def quick_backoff():
    return Backoff(first=0.01, cap=0.02)


class FlakyScorer:
    """Fails `failures` times, then scores each segment as the mean of its audio channel 0."""

    def __init__(self, failures=0):
        self.failures, self.calls, self.batches = failures, 0, []

    async def score(self, inputs):
        self.calls += 1
        if self.failures:
            self.failures -= 1
            raise ConnectionError("triton is down")
        self.batches.append(inputs)
        lengths = inputs["audio_lengths"].reshape(-1)
        return np.array([inputs["audio"][i, : lengths[i], 0].mean() for i in range(len(lengths))], np.float32)

    async def infer(self, inputs, outputs, version=None, model=None):
        return {"score": await self.score(inputs)}


@pytest.fixture
def pipeline(redis_url):
    store = TrendStore(redis_url)
    store.redis.flushdb()
    return Pipeline(FlakyScorer(), store, Tokenizer(minilm_dir(), CONTRACT.max_text_tokens), CONTRACT,
                    DetectorParams(warmup=20), backoff=quick_backoff)


def test_good_bad_and_duplicate_messages_in_one_batch(pipeline):
    good = [valid_bytes(stream="p", segment=f"p/{i}", frames=1 + i % 4) for i in range(5)]
    bad = [raw for _, raw, _ in catalogue()[:6]]
    result = asyncio.run(pipeline.process(good + bad + [good[0]]))
    # the repeat of good[0] is published again (its first publication may be one a crash lost)
    assert len(result.scores) == 6 and len(result.rejects) == 6 and result.duplicates == 1
    assert pipeline.store.totals("p")["count"] == 5
    assert [r.raw for r in result.rejects] == bad  # the original bytes travel to the DLQ
    # one Triton call for the batch's 6 valid messages; the store, not the decoder, spots the repeat
    assert len(pipeline.scorer.batches) == 1 and pipeline.scorer.batches[0]["input_ids"].shape[0] == 6
    # a redelivery of the whole batch records nothing twice
    again = asyncio.run(pipeline.process(good))
    assert again.duplicates == 5 and pipeline.store.totals("p")["count"] == 5
    assert [s.segment_id for s in again.scores] == [f"p/{i}" for i in range(5)]


def test_a_repeat_republishes_the_score_redis_holds_not_a_new_inference(pipeline, monkeypatch):
    """Whatever the model says the second time (a new version, a batch that scores a hair apart),
    every record of one segment carries the score its stream's trend counted."""
    good = [valid_bytes(stream="p", segment=f"p/{i}", frames=2) for i in range(3)]
    first = {s.segment_id: s.score for s in asyncio.run(pipeline.process(good)).scores}
    honest = pipeline.scorer.score

    async def drifted(inputs):
        return await honest(inputs) + np.float32(0.25)
    monkeypatch.setattr(pipeline.scorer, "score", drifted)
    new = valid_bytes(stream="p", segment="p/new", frames=2)
    again = {s.segment_id: s.score for s in asyncio.run(pipeline.process(good + [new])).scores}
    assert {k: again[k] for k in first} == first
    assert pipeline.store.held_scores([("p", "p/new")]) == [pytest.approx(again["p/new"])]
    # a key written before it kept the score (or by another tool) republishes the fresh score
    pipeline.store.redis.set("tf:{p}:seen:p/0", pipeline.store.redis.get("tf:{p}:seen:p/0").split()[0])
    assert asyncio.run(pipeline.process(good[:1])).scores[0].score == pytest.approx(first["p/0"] + 0.25)


def test_conflicting_duplicate_goes_to_the_dlq(pipeline):
    first, second = conflicting_pair()
    assert len(asyncio.run(pipeline.process([first])).scores) == 1
    result = asyncio.run(pipeline.process([second]))
    assert [r.reason for r in result.rejects] == ["conflicting_duplicate"]
    assert pipeline.store.totals("bad")["count"] == 1


def test_triton_outage_is_retried_not_lost(pipeline, monkeypatch):
    pipeline.scorer.failures = 2
    before = metrics.RETRIES.labels("triton")._value.get()
    result = asyncio.run(pipeline.process([valid_bytes(stream="q", segment="q/1")]))
    assert len(result.scores) == 1 and pipeline.scorer.calls == 3
    assert metrics.RETRIES.labels("triton")._value.get() == before + 2


def test_a_conflict_inside_one_batch_is_caught_by_the_store(pipeline):
    first, second = conflicting_pair(stream="c", segment="c/1")
    result = asyncio.run(pipeline.process([first, second]))
    assert len(result.scores) == 1 and [r.reason for r in result.rejects] == ["conflicting_duplicate"]
    assert pipeline.store.totals("c")["count"] == 1


def scored(stream, i, score, t0=1764000000.0):
    """A segment FlakyScorer scores as `score` (the mean of its audio channel 0)."""
    audio = np.full((2, 5), score, np.float32)
    return encode_segment(stream, f"{stream}/{i:05d}", t0 + i, "words", audio, np.zeros((2, 20), np.float32))


def test_a_redelivered_batch_raises_no_duplicate_alert(pipeline):
    """A step in a stream's scores gives one alert. Redelivering the batch that raised it changes
    nothing; and if the worker died after recording the batch but before the detector saw it
    (state and alerts not yet written), the redelivery raises the alert exactly once."""
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.normal(0, 0.5, 200), rng.normal(2.0, 0.5, 60)])
    batches = [[scored("r", i, v) for i, v in enumerate(values)][k:k + 20] for k in range(0, len(values), 20)]
    store = pipeline.store

    def run(batch):  # as the agent does: process, publish the outcomes, ack
        result = asyncio.run(pipeline.process(batch))
        asyncio.run(pipeline.published(result))
        return result.alerts
    alerts, snapshots = [], []
    for batch in batches:
        snapshots.append((store.detector_state("r"), store.redis.xlen("tf:{r}:alerts")))
        new = run(batch)
        alerts += [(len(snapshots) - 1, a) for a in new]
    assert [a.direction for _, a in alerts] == ["up"] and store.redis.xlen("tf:{r}:alerts") == 1
    k, alert = alerts[0]
    assert alert.change_point["event_time"] >= 1764000000.0 + 190

    assert run(batches[k]) == []  # plain redelivery
    assert store.redis.xlen("tf:{r}:alerts") == 1

    # roll back to just before the detector saw batch k, as a crash there would leave Redis
    state, _ = snapshots[k]
    store.redis.delete("tf:{r}:detector", "tf:{r}:alerts", "tf:{r}:outbox")
    store.save_detector_state("r", state)
    again = run(batches[k])
    def content(a):  # the Redis entry id is new: the alert was recorded anew
        return a.fields()
    assert [content(a) for a in again] == [content(alert)] and store.redis.xlen("tf:{r}:alerts") == 1
    assert run(batches[k]) == [] and store.redis.xlen("tf:{r}:alerts") == 1
def test_an_alert_says_what_moved_and_says_it_again_after_a_worker_restart(pipeline, redis_url):
    """Planted words in the shifted segments rank first among the alert's terms; a worker that
    died after recording the alert's batch and before detecting on it is replaced by a new one,
    which raises the same alert with the same drivers from what Redis holds."""
    rng = np.random.default_rng(2)
    words = "the show was fine today and we talked about music games food weather travel".split()
    values = np.concatenate([rng.normal(0, 0.5, 150), rng.normal(-2.0, 0.5, 40)])

    def segment(i, v):
        text = list(rng.choice(words, 6)) + (["refund", "broken"] if i >= 150 else [])
        return encode_segment("w", f"w/{i:05d}", 1764000000.0 + i, " ".join(text), np.full((2, 5), v, np.float32),
                              np.zeros((2, 20), np.float32))
    messages = [segment(i, v) for i, v in enumerate(values)]
    batches = [messages[k:k + 20] for k in range(0, len(messages), 20)]
    store = pipeline.store
    snapshots, alerts = [], []
    for batch in batches:
        snapshots.append(store.detector_state("w"))
        result = asyncio.run(pipeline.process(batch))
        asyncio.run(pipeline.published(result))
        alerts += [(len(snapshots) - 1, a) for a in result.alerts]
    (k, alert), = alerts
    assert {t["term"] for t in alert.drivers["terms"][:2]} == {"refund", "broken"}
    assert all(s["segment_id"] >= "w/00150" for s in alert.drivers["segments"])
    assert store.alerts(1, "w")[0].drivers == alert.drivers

    store.redis.delete("tf:{w}:detector", "tf:{w}:alerts", "tf:{w}:outbox")
    store.save_detector_state("w", snapshots[k])
    restarted = Pipeline(FlakyScorer(), TrendStore(redis_url), Tokenizer(minilm_dir(), CONTRACT.max_text_tokens),
                         CONTRACT, pipeline.detector_params, backoff=quick_backoff)
    again = asyncio.run(restarted.process(batches[k])).alerts
    assert [a.fields() for a in again] == [alert.fields()]


def test_hostile_messages_reject_only_themselves(pipeline):
    """Issue 12, failure 2: each of these once failed its whole batch as internal_error."""
    good = [valid_bytes(stream="h", segment=f"h/{i}", frames=2) for i in range(6)]
    hostile = hostile_cases()
    batch = [m for pair in zip(good, [raw for _, raw, _ in hostile]) for m in pair]
    result = asyncio.run(pipeline.process(batch))
    assert sorted(s.segment_id for s in result.scores) == [f"h/{i}" for i in range(6)]
    assert [r.reason for r in result.rejects] == [reason for _, _, reason in hostile[:6]]
    assert metrics.IN_FLIGHT._value.get() == 0


def test_the_in_flight_gauge_is_reset_when_a_batch_fails(pipeline, monkeypatch):
    monkeypatch.setattr(pipeline, "model_inputs", lambda segments, served=None: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        asyncio.run(pipeline.process([valid_bytes(stream="f", segment="f/1")]))
    assert metrics.IN_FLIGHT._value.get() == 0


def test_an_alert_recorded_before_a_crash_is_published_by_the_next_batch(pipeline):
    """The detector state and the alert were saved, the worker died before publishing: the
    redelivered batch finds no new alert, but publishes the one in the outbox."""
    pipeline.store.record_alert("o", an_alert("o", "down", -2.0), {"evaluated": 1})
    result = asyncio.run(pipeline.process([valid_bytes(stream="o", segment="o/1")]))
    assert [a.direction for a in result.alerts] == ["down"]
    asyncio.run(pipeline.published(result))
    again = asyncio.run(pipeline.process([valid_bytes(stream="o", segment="o/1")]))
    assert again.alerts == []


def test_a_segment_without_a_face_or_a_voice_is_scored_and_flagged(pipeline):
    from tests.malformed import valid
    no_face = valid(stream="mm", segment="mm/1")
    no_face.pop("visual")
    silent = valid(stream="mm", segment="mm/2")
    silent["audio"] = {"shape": [0, 5], "f32": ""}
    before = {side: metrics.MISSING_MODALITY.labels(side)._value.get() for side in ("audio", "visual")}
    result = asyncio.run(pipeline.process([json.dumps(m).encode() for m in (no_face, silent)]))
    assert result.rejects == [] and len(result.scores) == 2
    assert [s["modalities"] for s in pipeline.store.recent("mm", 2)] == [["text", "visual"], ["text", "audio"]]
    assert pipeline.store.totals("mm")["missing"] == {"audio": 1, "visual": 1}
    after = {side: metrics.MISSING_MODALITY.labels(side)._value.get() for side in ("audio", "visual")}
    assert after == {"audio": before["audio"] + 1, "visual": before["visual"] + 1}


def test_a_detector_failure_on_one_stream_neither_stalls_scoring_nor_loses_its_segments(pipeline, monkeypatch):
    """Detection runs inside the Redis retry loop: an exception from the detector itself used to be
    retried forever, stalling every partition of the worker. Now the stream's detection is skipped
    for that batch (counted, logged), its state is kept, and the next batch catches up."""
    from stream.alerts import detector
    real_scan = detector.scan

    def scan_failing_on_bad(stream, *args):
        if stream == "bad":
            raise OverflowError("math range error")
        return real_scan(stream, *args)
    monkeypatch.setattr(detector, "scan", scan_failing_on_bad)
    failures = metrics.DETECTION_FAILURES._value.get()
    batch = [scored(s, i, 0.1 * (i % 3)) for i in range(30) for s in ("bad", "good")]
    result = asyncio.run(pipeline.process(batch))
    assert len(result.scores) == 60 and metrics.DETECTION_FAILURES._value.get() == failures + 1
    assert pipeline.store.detector_state("bad").get("evaluated", 0) == 0
    assert pipeline.store.detector_state("good")["evaluated"] == 30
    monkeypatch.setattr(detector, "scan", real_scan)
    asyncio.run(pipeline.process([scored("bad", 30, 0.2)]))
    assert pipeline.store.detector_state("bad")["evaluated"] == 31


def test_a_segment_the_model_scores_nan_goes_to_the_dlq_and_its_stream_stays_clean(pipeline):
    """A NaN score used to fail the store's script half-way (the segment marked seen, its sums not
    added), then come back as a duplicate: lost, with the stream's totals left broken."""
    class NanOnSevens(FlakyScorer):
        async def score(self, inputs):
            scores = await super().score(inputs)
            return np.where(np.isclose(scores, 0.7), np.nan, scores).astype(np.float32)
    pipeline.scorer = NanOnSevens()
    batch = [scored("n", i, v) for i, v in enumerate([0.1, 0.7, 0.3])]
    result = asyncio.run(pipeline.process(batch))
    assert [s.segment_id for s in result.scores] == ["n/00000", "n/00002"]
    assert [(r.reason, r.raw) for r in result.rejects] == [("non_finite_score", batch[1])]
    totals = pipeline.store.totals("n")
    assert totals["count"] == 2 and totals["mean"] == pytest.approx(0.2)


def test_a_new_model_version_is_followed_with_its_own_contract_and_tokenizer(pipeline):
    """A new export loaded while the worker runs: the call to the version the batch was prepared
    for fails; the worker takes the new version's contract and tokenizer, prepares the batch
    again (a segment the new contract refuses goes to the DLQ) and calls the new version."""
    from dataclasses import replace

    class Swapping(FlakyScorer):
        serving, versions_called = "1", []

        async def served_version(self):
            return self.serving

        async def infer(self, inputs, outputs, version=None, model=None):
            self.versions_called.append(version)
            if version != self.serving:
                raise RuntimeError(f"Request for unknown model: 'tecafn' version {version} is not found")
            return await super().infer(inputs, outputs, version)
    smaller = replace(CONTRACT, max_frames=3)

    async def model_for(version, model=None):
        assert version == "2"
        return smaller, pipeline.served.tokenizer
    scorer = Swapping()
    pipeline.scorer, pipeline.model_for = scorer, model_for
    pipeline.served = pipeline.serving("1", CONTRACT, pipeline.served.tokenizer)
    short = [valid_bytes(stream="v", segment=f"v/{i}", frames=2) for i in range(3)]
    long = valid_bytes(stream="v", segment="v/long", frames=5)
    batch = pipeline.prepare(short + [long])
    assert len(batch.good) == 4 and batch.served.version == "1"
    scorer.serving = "2"  # Triton loads version 2 and unloads 1
    result = asyncio.run(pipeline.record(batch, asyncio.run(pipeline.infer(batch))))
    assert scorer.versions_called == ["1", "2"]
    assert pipeline.served.version == "2" and pipeline.contract == smaller
    assert sorted(s.segment_id for s in result.scores) == ["v/0", "v/1", "v/2"]
    assert [(r.reason, r.raw) for r in result.rejects] == [("too_many_frames", long)]


def test_young_streams_are_pulled_towards_the_autocorrelation_the_other_streams_warmed_up_with(pipeline):
    """Every stream's warm-up autocorrelation goes to Redis; once there are enough of them the
    worker pools them into a prior, and a stream whose warm-up ends afterwards takes it."""
    from stream.alerts import noise
    rng = np.random.default_rng(12)
    streams = [f"w{j:02d}" for j in range(noise.POOL_MIN_STREAMS)]
    batch = [scored(s, i, float(x)) for s in streams for i, x in enumerate(rng.normal(0, 0.7, 25))]
    asyncio.run(pipeline.process(batch))
    warmups = pipeline.store.warmup_rhos(60)
    assert sorted(warmups) == sorted(tuple(pipeline.store.detector_state(s)["warmup_rho"]) for s in streams)
    assert all(pipeline.store.detector_state(s)["rho_prior"] is None for s in streams)  # nothing to pool yet
    pipeline._rho_prior_read_at = -math.inf  # the minute between reads has passed
    asyncio.run(pipeline.process([scored("late", i, float(x)) for i, x in enumerate(rng.normal(0, 0.7, 25))]))
    prior = noise.pooled_rho_prior(warmups)
    assert pipeline.store.detector_state("late")["rho_prior"] == [prior.mean, prior.sd]
