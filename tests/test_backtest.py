"""`tecaflow backtest` on a CSV whose shifts are known: the counts it reports."""
import csv
import json
import subprocess
import sys

import numpy as np
import pytest

from stream import backtest
from stream.config import DetectorParams

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
            for i, v in enumerate(x):
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
    caught = [a for a in result["alert_list"] if a["stream_id"] == "caught"][0]
    assert 1 <= result["median_delay_segments"] <= 30
    assert result["median_delay_s"] == pytest.approx(caught["event_time"] - (T0 + 600))


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
