"""The worker's side of shadow scoring with a fake Triton (unit test) and a real Redis: the
candidate's answers land in its own keyspace, paired with the live ones, and a failing or hanging
candidate changes nothing on the live path."""
from __future__ import annotations

import asyncio
import time
from dataclasses import replace

import numpy as np
import pytest

from stream.config import DetectorParams, Settings
from stream.contract import Tokenizer
from stream.pipeline import Pipeline
from stream.shadow import pairs, roles
from stream.shadow.scoring import Shadow, chosen
from stream.store import TrendStore
from tests.malformed import valid_bytes
from tests.test_pipeline import CONTRACT, FlakyScorer, quick_backoff
from trainer.text_encoder import minilm_dir


class VersionedScorer(FlakyScorer):
    """Version "1" scores as FlakyScorer; "2" half a point higher; "3" fails; "4" never answers."""

    def __init__(self):
        super().__init__()
        self.hanging = asyncio.Event()
        self.loading: set[str] = set()  # versions Triton is still loading: not ready, and a call fails
        self.called: list[str] = []
        self.models: list[tuple[str, str | None]] = []  # (version, model) of each call

    async def version_ready(self, version, model=None):
        return version not in self.loading

    async def infer(self, inputs, outputs, version=None, model=None):
        self.called.append(version)
        self.models.append((version, model or "tecafn"))  # None: the scorer's own model, as AsyncTritonScorer
        if version in self.loading:
            raise ConnectionError(f"Request for unknown model: 'tecafn' version {version} is not at ready state")
        if version == "3":
            raise ConnectionError("the candidate is broken")
        if version == "4":
            await self.hanging.wait()
        scores = await self.score(inputs)
        return {"score": scores + (0.5 if version == "2" else 0.0)}


def shadowed_pipeline(redis_url: str, candidate: str, contract=CONTRACT, scorer=None, candidate_contract=None,
                      **settings) -> Pipeline:
    store = TrendStore(redis_url)
    store.redis.flushdb()
    before = roles.read(store.redis)
    roles.change(store.redis, before, roles.Roles(live="1", candidate=candidate, candidate_since=1.0), "test")
    tokenizer = Tokenizer(minilm_dir(), contract.max_text_tokens)
    config = replace(Settings.from_env({}), roles_refresh_s=0.01, **settings)
    scorer = scorer or VersionedScorer()

    async def candidate_model(version, model=None):
        return candidate_contract or contract, tokenizer

    def candidate_pipeline(scorer_, store_, tokenizer_, contract_, version_, model_=None):
        return Pipeline(scorer_, store_, tokenizer_, contract_, DetectorParams(warmup=20), backoff=quick_backoff,
                        version=version_, role="candidate", model=model_)
    shadow = Shadow(store, scorer, config, candidate_model, candidate_pipeline)
    return Pipeline(scorer, store, tokenizer, contract, DetectorParams(warmup=20), backoff=quick_backoff,
                    version="1", shadow=shadow)


def batches(prefix: str, n: int = 3, size: int = 8) -> list[list[bytes]]:
    return [[valid_bytes(stream=f"{prefix}-{i % 2}", segment=f"{prefix}/{b}/{i}", frames=1 + i % 4)
             for i in range(size)] for b in range(n)]


async def run(pipeline: Pipeline, raws: list[list[bytes]]) -> list:
    results = [await pipeline.process(batch) for batch in raws]
    return results


async def settle(pipeline: Pipeline) -> None:
    """Until the candidate's recorder has nothing left."""
    while pipeline.shadow._pending:
        await asyncio.sleep(0.01)


def test_the_candidate_is_recorded_apart_and_paired_with_the_live_scores(redis_url):
    pipeline = shadowed_pipeline(redis_url, "2")

    async def go():
        results = await run(pipeline, batches("pair"))
        await settle(pipeline)
        return results
    results = asyncio.run(go())
    live_scores = {s.segment_id: s.score for r in results for s in r.scores}
    assert {s.version for r in results for s in r.scores} == {"1"}
    keyspace = roles.read(pipeline.store.redis).candidate_keyspace()
    found = pairs.read_pairs(pipeline.store.redis, keyspace, ["pair-0", "pair-1"])
    rows = [row for rs in found.values() for row in rs]
    assert len(rows) == 24
    assert all(row[2] == pytest.approx(row[1] + 0.5) for row in rows)
    assert sorted(row[1] for row in rows) == pytest.approx(sorted(live_scores.values()))
    candidate = TrendStore("", client=pipeline.store.redis, keyspace=keyspace)
    for stream in ("pair-0", "pair-1"):
        assert candidate.totals(stream)["count"] == pipeline.store.totals(stream)["count"] == 12
        assert candidate.totals(stream)["sum"] == pytest.approx(pipeline.store.totals(stream)["sum"] + 6.0)
        assert candidate.recent(stream, 1)[0]["version"] == "2"
    assert pairs.read_calls(pipeline.store.redis, keyspace)["ok"] == 3


class InputsByVersion(VersionedScorer):
    """Keeps each version's inputs, by segment order within each call."""

    def __init__(self):
        super().__init__()
        self.seen = {}

    async def infer(self, inputs, outputs, version=None, model=None):
        self.seen.setdefault(version, []).append({k: np.array(v) for k, v in inputs.items()})
        return await super().infer(inputs, outputs, version)


def inputs_by_version(pipeline: Pipeline, prefix: str) -> tuple[list, list]:
    """Three batches through the pipeline (and its candidate): the inputs of the live calls and of
    the candidate's."""
    async def go():
        await run(pipeline, batches(prefix))
        await settle(pipeline)
    asyncio.run(go())
    return pipeline.scorer.seen["1"], pipeline.scorer.seen["2"]


def test_a_candidate_with_context_reads_the_context_the_live_model_read(redis_url):
    contract = replace(CONTRACT, context=2, max_context_tokens=32)
    scorer = InputsByVersion()
    pipeline = shadowed_pipeline(redis_url, "2", contract=contract, scorer=scorer)
    live, candidate = inputs_by_version(pipeline, "ctx")
    assert len(live) == len(candidate) == 3
    for mine, theirs in zip(live, candidate):
        assert "context_ids" in theirs
        np.testing.assert_array_equal(mine["context_ids"], theirs["context_ids"])
        np.testing.assert_array_equal(mine["context_mask"], theirs["context_mask"])
    assert live[-1]["context_mask"].sum() > 0  # later batches did have context to compare


def test_a_candidate_with_context_beside_a_live_model_without_reads_the_streams_previous_transcripts(redis_url):
    """k = 2 against a live k = 0: the worker reads the streams' context windows for the candidate
    alone; the live calls stay without context inputs."""
    scorer = InputsByVersion()
    pipeline = shadowed_pipeline(redis_url, "2", scorer=scorer,
                                 candidate_contract=replace(CONTRACT, context=2, max_context_tokens=32))
    live, candidate = inputs_by_version(pipeline, "ctx0")
    assert len(live) == len(candidate) == 3
    assert not any("context_ids" in inputs for inputs in live)
    assert candidate[0]["context_mask"].sum() > 0  # the batch's earlier segments of its stream
    assert candidate[-1]["context_mask"].sum(1).min() > 0  # and, later, those recorded before it
    keyspace = roles.read(pipeline.store.redis).candidate_keyspace()
    assert pairs.read_calls(pipeline.store.redis, keyspace)["error"] == 0


def test_a_candidate_of_other_widths_is_not_sent_frames_of_the_live_widths(redis_url):
    """Audio 1 wide against the live 5 (frames of 5 would reshape into five times as many frames of
    1 without a word): every batch is counted as an error on the candidate's side, none is sent
    to it, and the live path is as it was."""
    scorer = VersionedScorer()
    pipeline = shadowed_pipeline(redis_url, "2", scorer=scorer,
                                 candidate_contract=replace(CONTRACT, widths={"audio": 1, "visual": 20}))

    async def go():
        results = await run(pipeline, batches("widths"))
        await settle(pipeline)
        return results
    results = asyncio.run(go())
    assert [len(r.scores) for r in results] == [8, 8, 8] and "2" not in scorer.called
    keyspace = roles.read(pipeline.store.redis).candidate_keyspace()
    assert pairs.read_calls(pipeline.store.redis, keyspace)["error"] == 3


def test_a_redelivered_batch_pairs_nothing_twice(redis_url):
    pipeline = shadowed_pipeline(redis_url, "2")
    raws = batches("again", n=1)

    async def go():
        await run(pipeline, raws + raws)
        await settle(pipeline)
    asyncio.run(go())
    keyspace = roles.read(pipeline.store.redis).candidate_keyspace()
    assert sum(map(len, pairs.read_pairs(pipeline.store.redis, keyspace, ["again-0", "again-1"]).values())) == 8


def test_a_candidate_triton_has_not_loaded_yet_is_not_called_until_it_has(redis_url):
    """The roles name a candidate before Triton has loaded it (an export, Triton's next poll):
    its batches are counted as not ready, never as failed calls, and shadowing starts once it is
    loaded."""
    scorer = VersionedScorer()
    scorer.loading.add("2")
    pipeline = shadowed_pipeline(redis_url, "2", scorer=scorer)
    raws = batches("loading", n=4)

    async def go():
        for batch in raws[:2]:
            await pipeline.process(batch)
        await settle(pipeline)
        await asyncio.sleep(0.05)  # the not-ready counts are written beside the next batch, in the background
        scorer.loading.clear()
        await asyncio.sleep(0.02)  # past TECAFLOW_ROLES_REFRESH_S: the next read of the roles asks again
        for batch in raws[2:]:
            await pipeline.process(batch)
        await settle(pipeline)
    asyncio.run(go())
    assert scorer.called.count("2") == 2  # the two batches after it was loaded, none before
    keyspace = roles.read(pipeline.store.redis).candidate_keyspace()
    calls = pairs.read_calls(pipeline.store.redis, keyspace)
    assert (calls["not_ready"], calls["ok"], calls["error"], calls["failure_rate"]) == (2, 2, 0, 0.0)
    shadowed = pairs.read_pairs(pipeline.store.redis, keyspace, ["loading-0", "loading-1"])
    assert sum(map(len, shadowed.values())) == 16  # the two batches after it was loaded


def test_batches_that_start_while_the_roles_are_read_are_shadowed_too(redis_url, monkeypatch):
    """Overlapping batches: one reads the roles (slowly: a loaded Redis), the others start meanwhile.
    They must wait for that read, not take the roles from before it (a fresh-clone CI run once
    left the first batch after an export unshadowed and uncounted: 328 of 360 pairs)."""
    pipeline = shadowed_pipeline(redis_url, "2")
    read = roles.read

    def slow_read(client):
        time.sleep(0.2)
        return read(client)
    monkeypatch.setattr(roles, "read", slow_read)

    async def go():
        await asyncio.gather(*(pipeline.process(batch) for batch in batches("overlap", n=3)))
        await settle(pipeline)
    asyncio.run(go())
    monkeypatch.setattr(roles, "read", read)
    keyspace = roles.read(pipeline.store.redis).candidate_keyspace()
    assert pairs.read_calls(pipeline.store.redis, keyspace)["ok"] == 3
    assert sum(map(len, pairs.read_pairs(pipeline.store.redis, keyspace, ["overlap-0", "overlap-1"]).values())) == 24


def test_a_candidate_whose_contract_cannot_be_read_counts_its_batches_as_failed(redis_url):
    """Triton serves it, but its contract cannot be read (a broken tecafn.json): its batches are
    not shadowed, and are counted as failures, so that the gate cannot pass a candidate that was
    never called."""
    pipeline = shadowed_pipeline(redis_url, "2")

    async def unreadable(version, model=None):
        raise ValueError(f"version {version}: tecafn.json is not JSON")
    pipeline.shadow.candidate_model = unreadable

    async def go():
        for batch in batches("unreadable", n=2):
            await pipeline.process(batch)
            await asyncio.sleep(0.02)  # past TECAFLOW_ROLES_REFRESH_S: each batch asks again
        await settle(pipeline)  # counts of calls never sent are pending until written
    asyncio.run(go())
    keyspace = roles.read(pipeline.store.redis).candidate_keyspace()
    calls = pairs.read_calls(pipeline.store.redis, keyspace)
    assert (calls["error"], calls["ok"], calls["not_ready"]) == (2, 0, 0)
    assert calls["failure_rate"] == 1.0


@pytest.mark.parametrize("candidate,outcome", [("3", "error"), ("4", "timeout")])
def test_a_failing_or_hanging_candidate_leaves_the_live_results_as_they_were(redis_url, candidate, outcome):
    raws = batches(f"bad{candidate}")
    reference = shadowed_pipeline(redis_url, "2")
    expected = asyncio.run(run(reference, raws))
    pipeline = shadowed_pipeline(redis_url, candidate, shadow_timeout_s=0.05)

    async def go():
        results = await run(pipeline, raws)
        unanswered = pipeline.shadow._pending  # candidate batches not recorded when the live path is done
        await settle(pipeline)
        return results, unanswered
    results, unanswered = asyncio.run(go())
    assert [r.scores for r in results] == [r.scores for r in expected]
    assert [len(r.rejects) for r in results] == [0, 0, 0]
    if candidate == "4":  # the live path was done while the candidate still had not answered
        assert unanswered
    keyspace = roles.read(pipeline.store.redis).candidate_keyspace()
    assert pairs.read_calls(pipeline.store.redis, keyspace)[outcome] == 3
    assert pairs.read_pairs(pipeline.store.redis, keyspace, [f"bad{candidate}-0"]) == {}


def test_the_shadowed_share_is_chosen_by_segment_id():
    ids = [f"s/{i}" for i in range(4000)]
    share = np.mean([chosen(i, 0.25) for i in ids])
    assert 0.2 < share < 0.3  # a hash, not a count: near the share, not at it
    assert [chosen(i, 0.25) for i in ids] == [chosen(i, 0.25) for i in ids]
    assert all(chosen(i, 1.0) for i in ids) and not any(chosen(i, 0.0) for i in ids)


def test_a_promotion_is_adopted_at_the_next_batch(redis_url):
    pipeline = shadowed_pipeline(redis_url, "2")
    raws = batches("switch", n=2)

    async def go():
        first = await pipeline.process(raws[0])
        before = roles.read(pipeline.store.redis)
        roles.change(pipeline.store.redis, before, roles.promoted(before), "test")
        await asyncio.sleep(0.02)  # past TECAFLOW_ROLES_REFRESH_S
        second = await pipeline.process(raws[1])
        await settle(pipeline)
        return first, second

    async def model_for(version, model=None):
        return CONTRACT, pipeline.served.tokenizer
    pipeline.model_for = model_for
    pipeline.scorer.served_versions = lambda model=None: _ready("1", "2")
    first, second = asyncio.run(go())
    assert {s.version for s in first.scores} == {"1"} and {s.version for s in second.scores} == {"2"}
    assert pipeline.shadow.candidate.served.version == "1"  # the version it replaced shadows it


async def _ready(*versions):
    return list(versions)


def test_a_candidate_in_the_other_slot_is_called_there_and_the_live_calls_follow_it_once_promoted(redis_url):
    """A candidate with another contract is served as the model's second slot: the roles name the
    slot, the worker calls each version on its own model, and a promotion moves the live calls to
    the candidate's slot (a rollback back)."""
    pipeline = shadowed_pipeline(redis_url, "2")
    before = roles.read(pipeline.store.redis)
    roles.change(pipeline.store.redis, before, replace(before, live_model="tecafn", candidate_model="tecafn_b"), "test")
    raws = batches("slots", n=3)

    async def model_for(version, model=None):
        return CONTRACT, pipeline.served.tokenizer
    pipeline.model_for = model_for
    pipeline.scorer.served_versions = lambda model=None: _ready(*{"tecafn": ["1"], "tecafn_b": ["2"]}[model])

    async def switch(change):
        current = roles.read(pipeline.store.redis)
        roles.change(pipeline.store.redis, current, change(current), "test")
        await asyncio.sleep(0.02)  # past TECAFLOW_ROLES_REFRESH_S

    async def go():
        await asyncio.sleep(0.02)
        first = await pipeline.process(raws[0])
        await settle(pipeline)
        await switch(roles.promoted)
        second = await pipeline.process(raws[1])
        await settle(pipeline)
        await switch(roles.rolled_back)
        third = await pipeline.process(raws[2])
        await settle(pipeline)
        return first, second, third
    results = asyncio.run(go())
    assert [{s.version for s in r.scores} for r in results] == [{"1"}, {"2"}, {"1"}]
    assert set(pipeline.scorer.models) == {("1", "tecafn"), ("2", "tecafn_b")}
    assert pipeline.scorer.models.count(("2", "tecafn_b")) == 3 and pipeline.scorer.models.count(("1", "tecafn")) == 3


def test_the_live_path_never_adopts_the_candidate_while_triton_lists_it_alone(redis_url):
    """While Triton reloads the model after its config changed, its metadata may list only the
    candidate. A live call that fails then makes the worker ask what is live: the answer is still
    the live version (its call retried), never the candidate, which would score the live path."""
    pipeline = shadowed_pipeline(redis_url, "2")
    scorer = pipeline.scorer
    scorer.loading.add("1")  # the live version reloading: its next call fails, then it answers

    async def model_for(version, model=None):
        return CONTRACT, pipeline.served.tokenizer
    pipeline.model_for = model_for
    scorer.served_versions = lambda model=None: _ready("2")
    live_infer = scorer.infer

    async def infer_then_loaded(inputs, outputs, version=None, model=None):
        try:
            return await live_infer(inputs, outputs, version, model)
        finally:
            scorer.loading.discard("1")
    scorer.infer = infer_then_loaded

    async def go():
        await asyncio.sleep(0.02)
        result = await pipeline.process(batches("reload", n=1)[0])
        await settle(pipeline)
        return result
    result = asyncio.run(go())
    assert {s.version for s in result.scores} == {"1"}
    assert pipeline.served.version == "1"
    assert "1" in scorer.called[1:]  # the failed call was retried on the live version
