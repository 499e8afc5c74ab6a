"""`tecaflow backtest` on a CSV whose shifts are known: the counts it reports."""
import csv
import json
import subprocess
import sys

import numpy as np
import pytest

from stream.alerts import backtest
from stream import cli as stream_cli
from stream.config import DetectorParams
from stream.errors import UserError

T0 = 1764000000.0


@pytest.fixture(scope="module")
def history(tmp_path_factory):
    """caught: a known +2.0 shift at segment 300; unlisted: an unannounced -2.0 shift (a false
    alarm as far as the user's list goes); phantom: a listed shift that never happened (a miss);
    calm: nothing at all."""
    rng = np.random.default_rng(11)
    d = tmp_path_factory.mktemp("bt")
    steps = {"caught": 2.0, "unlisted": -2.0, "phantom": 0.0, "calm": 0.0}
    with (d / "scores.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["stream", "event_time", "score"])
        for name, delta in steps.items():
            x = rng.normal(0.3, 0.6, 500)
            x[300:] += delta
            for i, v in enumerate(np.clip(x, -3, 3)):  # scores are 3 * tanh(.)
                w.writerow([name, T0 + 2 * i, round(float(v), 5)])
    (d / "shifts.csv").write_text(f"stream,event_time\ncaught,{T0 + 600}\nphantom,{T0 + 600}\n")
    return d


def cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "stream.cli", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=120)


def test_counts_on_known_shifts(history):
    scores = backtest.scores_from_csv(history / "scores.csv")
    shifts = backtest.shifts_from_csv(history / "shifts.csv")
    result = backtest.backtest(scores, shifts, DetectorParams(false_alarms_per_10k=0.1))["runs"][0]
    assert (result["segments"], result["streams"], result["known_shifts"]) == (2000, 4, 2)
    assert (result["alerts"], result["caught"], result["false_alarms"]) == (2, 1, 1)
    assert result["precision"] == 0.5 and result["recall"] == 0.5
    assert result["false_alarms_per_10k"] == pytest.approx(1 / 2000 * 1e4)
    # unlisted and calm have no known shift: steady; caught and phantom, 300 segments each before theirs
    assert result["steady"] == {"false_alarms": 1, "segments": 1000, "false_alarms_per_10k": 10.0}
    assert result["before_shift"] == {"false_alarms": 0, "segments": 600, "false_alarms_per_10k": 0.0}
    caught = [a for a in result["alert_list"] if a.stream_id == "caught"][0]
    assert 1 <= result["median_delay_segments"] <= 30
    assert result["median_delay_s"] == pytest.approx(caught.event_time - (T0 + 600))


def test_cli_sweep_plot_and_json(history, tmp_path):
    png = tmp_path / "caught.png"
    out = cli("backtest", "--csv", str(history / "scores.csv"), "--shifts", str(history / "shifts.csv"),
              "--sweep", "0.1,1,10", "--plot", "caught", "--out", str(png), "--json", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    runs = json.loads(out.stdout)["runs"]
    assert [r["false_alarms_per_10k_setting"] for r in runs] == [0.1, 1.0, 10.0]
    assert all(r["caught"] == 1 for r in runs)
    assert runs[0]["alerts"] <= runs[1]["alerts"] <= runs[2]["alerts"]  # a looser setting never alerts less here
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10000


def test_bad_input_is_one_line_and_exit_2(history, tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("stream,event_time,score\na,1,2\nb,oops,3\n")
    out = cli("backtest", "--csv", str(bad), cwd=tmp_path)
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "bad.csv:3" in out.stderr
    out = cli("backtest", "--csv", str(history / "scores.csv"), "--shift", "nosuch@1", cwd=tmp_path)
    assert out.returncode == 2 and "nosuch" in out.stderr
    out = cli("backtest", "--csv", str(history / "scores.csv"), "--sweep", "1,0", cwd=tmp_path)
    assert out.returncode == 2 and "FALSE_ALARMS" in out.stderr


@pytest.mark.parametrize("content, message", [
    pytest.param("stream,event_time,score\na,1,0.5\n,2,0.1\n".encode(), "rows.csv:3: empty stream id", id="empty-id"),
    pytest.param(b"a,1,0.5\na,2,4.2\n", "rows.csv:2: score 4.2 is outside [-3, 3]", id="out-of-range"),
    pytest.param(b"a,1,0.5\na,2,nan\n", "rows.csv:2: score nan is outside [-3, 3]", id="nan"),
    pytest.param(b"a,1,0.5\na,inf,0.1\n", "rows.csv:2: event time inf is not finite", id="inf-time"),
    pytest.param("stream,event_time,score\nmarqu\u00e9,1,0.5\n".encode("latin-1"),
                 "rows.csv: not UTF-8 text (invalid byte 0xe9)", id="latin-1"),
])
def test_a_bad_scores_csv_names_its_line(content, message, tmp_path):
    (tmp_path / "rows.csv").write_bytes(content)
    with pytest.raises(UserError) as error:
        backtest.scores_from_csv(tmp_path / "rows.csv")
    assert message in str(error.value)


def test_a_known_shift_with_an_empty_stream_id_names_its_line(tmp_path):
    (tmp_path / "shifts.csv").write_text("stream,event_time\na,1\n ,2\n")
    with pytest.raises(UserError, match="shifts.csv:3: empty stream id"):
        backtest.shifts_from_csv(tmp_path / "shifts.csv")


@pytest.mark.parametrize("extra, message", [
    (["--out", "x.png"], "--out needs --plot STREAM"),
    (["--sweep", ""], "--sweep '': expected comma-separated numbers"),
    (["--sweep", "1,,3"], "--sweep '1,,3': expected comma-separated numbers"),
])
def test_flags_that_would_do_nothing_are_one_line(extra, message, history, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert stream_cli.main(["backtest", "--csv", str(history / "scores.csv"), *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"tecaflow backtest: error: {message}") and err.count("\n") == 1
    assert list(tmp_path.iterdir()) == []


def test_a_stream_shorter_than_the_warm_up_is_reported_as_not_evaluated():
    rng = np.random.default_rng(3)
    scores = {name: [(T0 + i, float(v)) for i, v in enumerate(rng.normal(0, 0.5, n))]
              for name, n in (("long", 300), ("short", 40))}
    result = backtest.backtest(scores, {"short": [T0 + 20]}, DetectorParams(warmup=100))
    assert result["not_evaluated"] == ["short"]
    assert "fewer segments than the warm-up of 100" in backtest.format_report(result).splitlines()[-1]
    assert "short" in backtest.format_report(result).splitlines()[-1]


def test_a_segment_published_again_on_the_scores_topic_counts_once():
    """The worker publishes a redelivered segment's score again: the topic's backtest counts each
    segment once, in event-time order, whatever order the partitions gave."""
    def message(stream, n, t, score):
        return {"stream_id": stream, "segment_id": f"{stream}/{n:05d}", "event_time": t, "score": score,
                "version": "1"}
    messages = [message("a", 2, T0 + 2, -0.5), message("a", 1, T0 + 1, 0.25), message("b", 1, T0, 1.0),
                message("a", 2, T0 + 2, -0.5), message("a", 1, T0 + 1, 0.25)]
    scores, repeats = backtest.scores_from_messages(messages)
    assert scores == {"a": [(T0 + 1, 0.25), (T0 + 2, -0.5)], "b": [(T0, 1.0)]}
    assert repeats == 2


def test_the_backtest_pools_its_streams_warm_ups_as_the_worker_would():
    from stream.alerts import backtest, noise
    from stream.config import DetectorParams
    params, rng = DetectorParams(warmup=50), np.random.default_rng(6)

    def distinct(x):  # no near-duplicates: the warm-up is the series' first 50 scores
        for i in range(1, len(x)):
            x[i] += 0.1 if abs(x[i] - x[i - 1]) <= 0.05 else 0.0
        return x
    scores = {f"s{j}": [(float(i), float(x)) for i, x in enumerate(distinct(rng.normal(0, 0.7, 80)))]
              for j in range(noise.POOL_MIN_STREAMS)}
    prior = backtest.warmup_prior(scores, params)
    warmups = [noise.estimate([x for _, x in series[:50]]).rho for series in scores.values()]
    assert prior.mean == pytest.approx(float(np.median(np.round(warmups, 4))))
    assert backtest.warmup_prior(dict(list(scores.items())[:3]), params) is None  # too few streams to pool
