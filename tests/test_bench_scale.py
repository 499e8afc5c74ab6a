"""`tecaflow bench scale` (stream/bench/scale.py): the KEDA replay (the Kafka scaler's rule and the
drain it implies) on hand-computed cases, and every phase of the measurement on a tiny model and
backlog on the real embedded stack (the figures themselves come from the command:
docs/kubernetes.md)."""
import pytest

from stream.bench.scale import (
    bench_scale,
    format_report,
    keda_on_curve,
    keda_replicas,
    rate_at,
    replay_backlog,
    summarize,
)
from stream.bench.serve import untrained_checkpoint
from stream.cli import main

RULE = dict(threshold=1000, activation=200, min_replicas=1, max_replicas=8, partitions=4)


@pytest.mark.parametrize("lag, workers", [
    (0, 1), (200, 1),  # at or below the activation lag: the minimum
    (201, 1), (1000, 1), (1001, 2), (2500, 3), (4000, 4),
    (4001, 4), (1_000_000, 4),  # never above the partitions, whatever maxReplicas says
])
def test_keda_asks_for_one_worker_per_threshold_of_lag_up_to_the_partitions(lag, workers):
    assert keda_replicas(lag, **RULE) == workers


def test_max_replicas_caps_below_the_partitions():
    assert keda_replicas(10_000, **{**RULE, "max_replicas": 2}) == 2


def test_rate_at_uses_the_nearest_measured_count_below():
    rates = {1: 100.0, 2: 180.0, 4: 300.0}
    assert [rate_at(n, rates) for n in (1, 2, 3, 4, 8)] == [100.0, 180.0, 180.0, 300.0, 300.0]


def test_one_worker_drains_a_backlog_at_its_rate():
    result = replay_backlog(1000, {1: 100.0}, start_s=30, polling_s=15,
                            **{**RULE, "threshold": 10_000})  # never asks for a second worker
    assert result == {"backlog": 1000, "drain_s": 10.0, "workers": 1}


def test_more_workers_arrive_after_their_start_up_time():
    """4,000 waiting, 1,000 per worker: KEDA asks for 4 at once; they drain after 10 s. In those
    10 s one worker drains 1,000 (100/s); the other 3,000 go at 400/s: 7.5 s more, 18 s in steps of 1."""
    result = replay_backlog(4000, {1: 100.0, 4: 400.0}, start_s=10, polling_s=15, **RULE)
    assert result == {"backlog": 4000, "drain_s": 18.0, "workers": 4}


def test_a_backlog_that_grows_faster_than_the_workers_drain_never_drains():
    result = replay_backlog(1000, {1: 100.0}, start_s=0, polling_s=15, incoming=150.0, limit_s=600,
                            **{**RULE, "max_replicas": 1})
    assert result["drain_s"] is None


def test_keda_on_a_measured_curve():
    assert keda_on_curve([(0.0, 3500), (5.0, 900), (9.0, 0)], **RULE) == [(0.0, 3500, 4), (5.0, 900, 1), (9.0, 0, 1)]


@pytest.mark.parametrize("argv, message", [
    (["--workers", "1,x"], "comma-separated worker counts"),
    (["--workers", "0,2"], "counts must be >= 1"),
    (["--streams", "2"], "--streams 2 is below the most workers (4)"),
])
def test_bad_options_are_one_line_before_anything_starts(argv, message, capsys):
    assert main(["bench", "scale", *argv]) == 2
    assert message in capsys.readouterr().err


def test_the_suggested_threshold_and_activation_follow_the_documented_rules():
    """Threshold: 5 s of one worker's drain, at least 3x the steady lag; activation: what a worker
    holds in flight plus the steady lag, rounded up to a hundred."""
    run = {"workers": 1, "drain_rate": 470.0, "start_s": 6.0, "lag_curve": [(0.0, 4000), (9.0, 0)]}
    r = summarize([run], {"max": 28}, partitions=4, quantize="int8", threshold=None, activation=None,
                  polling_s=15, in_flight=128)
    assert r["suggested_lag_threshold"] == 2350
    assert (r["keda"]["threshold"], r["keda"]["activation"]) == (2400, 200)
    assert r["keda_on_measured"][1] == [(0.0, 4000, 2), (9.0, 0, 1)]
    noisy = summarize([run], {"max": 1000}, partitions=4, quantize="int8", threshold=None, activation=None,
                      polling_s=15, in_flight=128)
    assert noisy["suggested_lag_threshold"] == 3000  # 3x a steady lag of 1000 beats 5 s of drain


def test_the_own_cores_replay_scales_the_one_worker_rate():
    run = {"workers": 1, "drain_rate": 100.0, "start_s": 0.0, "lag_curve": []}
    r = summarize([run], {"max": 0}, partitions=4, quantize="int8", threshold=500, activation=0, polling_s=1,
                  in_flight=128)
    alone, spread = r["replay"][0], r["replay_own_cores"][0]  # 10,000 waiting
    assert alone["drain_s"] == 100.0
    assert spread["workers"] == 4 and spread["drain_s"] < alone["drain_s"] / 3


@pytest.mark.integration
@pytest.mark.slow
def test_a_tiny_bench_scale_runs_every_phase(tmp_path):
    checkpoint = untrained_checkpoint(tmp_path / "ckpt", text_encoder="tiny")
    r = bench_scale(checkpoint, counts=(1, 2), total=480, streams=4, frames=6, sample_s=0.5, steady_s=3.0,
                    progress=lambda m: None)
    assert [run["workers"] for run in r["runs"]] == [1, 2] and r["partitions"] == 2
    for run in r["runs"]:
        # 480, or 4 or 16 times that where the first worker to join recorded most of it alone
        assert run["segments"] in (480, 1920, 7680) and run["drain_rate"] > 0
        lags = [lag for _, lag in run["lag_curve"]]
        # The backlog waited, then nothing did. (The embedded broker reports a partition's end
        # offset as its last record batch's first offset, so its lag reads short by up to a batch.)
        assert max(lags) > 48 and lags[-1] == 0
        assert len(run["worker_peak_rss_mb"]) == run["workers"] and min(run["worker_peak_rss_mb"]) > 0
        assert run["triton_cpu_ms_per_segment"] > 0 and run["worker_cpu_ms_per_segment"] > 0
    assert r["steady_lag"]["max"] is not None
    assert [b["backlog"] for b in r["replay"]] == [10_000, 100_000, 1_000_000]
    assert "KEDA replayed on a backlog" in format_report(r)


def test_a_backlog_drained_before_every_worker_joined_is_produced_again_larger(monkeypatch):
    from stream.bench import scale
    calls, messages = [], []

    def drain_with(n, *args, total, prefix, **kwargs):
        calls.append((total, prefix))
        if len(calls) < 3:
            raise scale.BacklogTooSmall(f"{n} worker(s) recorded {total} of {total} segments while joining")
        return {"workers": n, "segments": total}
    monkeypatch.setattr(scale, "drain_with", drain_with)
    assert scale.drain_growing(2, total=480, progress=messages.append) == {"workers": 2, "segments": 7680}
    assert calls == [(480, "scale2-0"), (1920, "scale2-1"), (7680, "scale2-2")]  # fresh streams each time
    assert messages[0].endswith("again with 1920")
    calls.clear()
    monkeypatch.setattr(scale, "BACKLOG_ATTEMPTS", 2)
    with pytest.raises(scale.BacklogTooSmall):
        scale.drain_growing(2, total=480, progress=messages.append)
