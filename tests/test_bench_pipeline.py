"""`tecaflow bench pipeline` on a tiny model and a tiny backlog: every phase runs against the real
embedded stack and reports its figures (the benchmark itself is a command, not a test)."""
import pytest

from stream.bench.pipeline import (
    STAGES,
    bench_pipeline,
    format_report,
    format_summary,
    summarize_runs,
)
from stream.bench.serve import untrained_checkpoint


def run_with(e2e_over_raw: float, p99: float) -> dict:
    return {"ratios": {"e2e/raw_fp32": e2e_over_raw, "e2e/naive": 5 * e2e_over_raw},
            "latency_ms": {"p50": p99 / 2, "p99": p99, "n": 100}}


def test_repeated_runs_are_summarised_by_median_and_range():
    runs = [run_with(0.91, 150.0), run_with(1.02, 130.0), run_with(0.96, 400.0), run_with(0.97, 140.0)]
    s = summarize_runs(runs)
    assert s["runs"] == 4
    assert s["e2e/raw_fp32"] == {"median": pytest.approx(0.965), "min": 0.91, "max": 1.02}
    assert s["e2e/naive"]["median"] == pytest.approx(4.825)
    assert s["p99_ms"] == {"median": pytest.approx(145.0), "min": 130.0, "max": 400.0}
    assert "0.96 (0.91-1.02)" in format_summary(s)


@pytest.mark.integration
@pytest.mark.slow
def test_a_tiny_bench_pipeline_runs_every_phase(tmp_path):
    checkpoint = untrained_checkpoint(tmp_path / "ckpt", text_encoder="tiny")
    r = bench_pipeline(checkpoint, total=96, streams=3, batch=8, frames=6, quantize="int8", naive_count=12,
                       seconds=2.0, progress=lambda m: None)
    for key in ("raw_fp32", "raw_int8", "served", "naive", "e2e"):
        assert r[key] > 0, key
    assert r["latency_ms"]["n"] >= 3 and r["latency_ms"]["p50"] <= r["latency_ms"]["p99"]
    assert set(r["stages_ms_per_batch"]) == set(STAGES)
    assert all(r["stages_ms_per_batch"][s] > 0 for s in ("decode", "tokenize", "triton", "redis", "publish"))
    assert r["ratios"]["e2e/raw_fp32"] == pytest.approx(r["e2e"] / r["raw_fp32"])
    # the baseline is the faster of the two session setups, never the one that flatters e2e
    assert r["raw_fp32"] == max(r["raw_fp32_options"], r["raw_fp32_ort_defaults"])
    assert "e2e/naive" in format_report(r)


@pytest.mark.integration
@pytest.mark.slow
def test_a_tiny_bench_serve_of_int8_reports_the_speedup_over_fp32_raw(tmp_path):
    from stream.bench.serve import bench_serve
    from stream.bench.serve import format_report as format_serve
    from tests.conftest import free_ports

    checkpoint = untrained_checkpoint(tmp_path / "ckpt", text_encoder="tiny")
    r = bench_serve(checkpoint, seconds=0.5, levels=(1, 4), ports=free_ports(3), quantize="int8",
                    progress=lambda m: None)
    assert r["served_model"] == "int8"
    for level in r["levels"].values():
        assert level["raw_speedup"] == pytest.approx(level["raw"]["segments_per_s"]
                                                     / level["raw_fp32"]["segments_per_s"])
        assert level["served"]["requests"] > 0
    assert "int8/fp32" in format_serve(r) and r["attribution"]["served_off"]["requests"] > 0


@pytest.mark.integration
@pytest.mark.slow
def test_bench_serve_compare_tables_options_against_the_first(tmp_path):
    """A tiny encoder's untrained model against a trained run: a row each, measured served and
    raw, the ratio to the first row, and the run's own test metrics beside its throughput."""
    import json

    from stream.bench.serve import bench_compare, format_compare
    from tests.conftest import free_ports
    from trainer.data import load_dataset
    from trainer.train import TrainOptions, train

    run = tmp_path / "run"
    train(load_dataset("synthetic", n=60, max_frames=12),
          TrainOptions(out=run, epochs=1, text_encoder="tiny", progress=False, max_frames=12,
                       model_overrides=dict(encoder_layers=1, cross_layers=1, d_model=16, n_heads=2)))
    r = bench_compare(["tiny", str(run)], ("none",), concurrency=2, seconds=0.5, ports=free_ports(3),
                      progress=lambda m: None)
    first, second = r["rows"]
    assert (first["option"], first["test"]) == ("tiny", None)
    assert first["served"]["vs_first"] == first["raw"]["vs_first"] == 1.0
    assert second["test"] == json.loads((run / "metrics.json").read_text())["test"]
    for key in ("served", "raw"):
        assert second[key]["vs_first"] == pytest.approx(second[key]["segments_per_s"] / first[key]["segments_per_s"])
    assert len(first["raw"]["rounds"]) == r["rounds"]
    assert all(row["served"]["requests"] > 0 and row["raw"]["segments_per_s"] > 0 for row in r["rows"])
    table = format_compare(r).splitlines()
    assert len(table) == 4 and f"{second['test']['mae']:.3f}" in table[3] and "1.00x" in table[2]
    assert table[3].startswith(f"{run} ")  # the run directory in full, however long


@pytest.mark.parametrize("argv, message", [
    (["bench", "serve", "--compare", "/nonexistent/run"], "--compare /nonexistent/run: neither a run directory"),
    (["bench", "serve", "--concurrency", "4"], "--concurrency is --compare's"),
    (["bench", "serve", "--compare", "tiny", "--checkpoint", "x.pt"], "leave out --checkpoint"),
])
def test_bench_serve_flags_that_do_not_fit_are_one_line(argv, message, capsys):
    from stream import cli
    assert cli.main(argv) == 2
    assert message in capsys.readouterr().err
