"""The dashboard's "Candidate" view against a real Redis holding what a shadowing worker writes."""
from __future__ import annotations

import pytest

from stream.shadow import pairs, roles
from stream.store import TrendStore
from tests.test_dashboard import all_text, metrics, page, store  # noqa: F401 - store is a fixture
from tests.test_shadow_roles import an_alert


def shadowing(store: TrendStore, shift: float) -> str:
    """Version 2 shadowing version 1 on stream brand-1 with scores `shift` higher, and an alert of
    each model 40 segments apart (beyond the tolerance: both disagreements)."""
    current = roles.change(store.redis, roles.read(store.redis),
                           roles.Roles(live="1", candidate="2", candidate_since=1.0), "test")
    keyspace = current.candidate_keyspace()
    candidate = TrendStore("", client=store.redis, keyspace=keyspace)
    live_scores = [(-1.0) ** i * 0.1 * (i % 7) for i in range(100)]
    pairs.record_pairs(store.redis, keyspace, {"brand-1": [[1000.0 + i, s, s + shift, {}, {}]
                                                           for i, s in enumerate(live_scores)]}, kept=1000)
    store.record_many([("brand-1", "brand-1/0", "d", 1000.0, live_scores[0], "x")])
    candidate.record_many([("brand-1", "brand-1/0", "d", 1000.0, live_scores[0] + shift, "x")])
    store.record_alerts("brand-1", [an_alert("brand-1", 1010.0)], {})
    candidate.record_alerts("brand-1", [an_alert("brand-1", 1050.0)], {})
    return keyspace


def test_the_candidate_view_shows_the_comparison_and_opens_a_disagreement(store, redis_url, monkeypatch):  # noqa: F811
    shadowing(store, shift=0.5)
    monkeypatch.setenv("TECAFLOW_GATE_MIN_SEGMENTS", "10")
    at = page(monkeypatch, redis_url, view="Candidate")
    assert not at.exception
    shown = metrics(at)
    assert shown["Compared segments"] == "100" and shown["MAE"] == "0.500"
    assert any("The gate would refuse" in w.value and "mae 0.500" in w.value for w in at.warning)
    table = at.dataframe[0].value
    assert list(table["stream"]) == ["brand-1"] and table["MAE"][0] == pytest.approx(0.5)
    text = all_text(at)
    assert "live only: brand-1 up at segment 11" in text and "candidate only: brand-1 up at segment 51" in text
    at.button(key=next(b.key for b in at.button if b.key.startswith("open-only_candidate"))).click().run()
    assert at.session_state["view"] == "Stream" and at.session_state["stream"] == "brand-1"


def test_without_a_candidate_the_view_says_how_to_get_one(store, redis_url, monkeypatch):  # noqa: F811
    at = page(monkeypatch, redis_url, view="Candidate")
    assert not at.exception
    assert any("export --candidate" in i.value for i in at.info)


def test_the_two_distributions_are_drawn_over_each_other_not_stacked():
    from dashboard.views import distribution_chart, duration
    spec = distribution_chart({"edges": [-1.0, 0.0, 1.0], "live": [0.25, 0.75], "candidate": [0.5, 0.5]}).to_dict()
    assert spec["encoding"]["y"]["stack"] is None  # stacked, the bars would show 125 % of the segments in one bin
    assert "xOffset" not in spec["encoding"]
    assert [duration(81.37), duration(600), duration(42.04)] == ["1.4 min", "10 min", "42 s"]
