import numpy as np

from stream.config import DetectorParams
from stream.detector import initial_state, scan, two_window_test

P = DetectorParams(reference=20, recent=8, z=4.0, rearm_z=1.5, min_delta=0.5, cooldown_s=60)


def series(values, t0=1000.0, dt=1.0):
    return [(t0 + i * dt, float(v)) for i, v in enumerate(values)]


def run(values, params=P, state=None, chunks=1, dt=1.0):
    """Feed the series in `chunks` batches, as a worker would."""
    window, alerts, state = [], [], state or initial_state()
    pieces = np.array_split(np.arange(len(values)), chunks)
    all_points = series(values, dt=dt)
    for piece in pieces:
        window = all_points[: piece[-1] + 1]
        new, state = scan("s", window, len(window), state, params)
        alerts += new
    return alerts, state


def test_steady_noise_raises_nothing():
    rng = np.random.default_rng(0)
    alerts, _ = run(rng.normal(0.3, 0.4, 500))
    assert alerts == []


def test_a_step_raises_exactly_one_alert_in_its_direction():
    rng = np.random.default_rng(1)
    values = np.concatenate([rng.normal(1.0, 0.4, 60), rng.normal(-1.0, 0.4, 60)])
    alerts, state = run(values)
    assert len(alerts) == 1
    a = alerts[0]
    assert a["direction"] == "down" and a["magnitude"] < -0.5 and a["z"] <= -4
    assert 1060 <= a["event_time"] <= 1060 + P.recent  # found within a recent window of the step
    assert a["recent"]["to"] == a["event_time"] and a["reference"]["n"] == 20


def test_small_but_certain_shifts_are_not_news():
    values = np.concatenate([np.full(40, 0.5), np.full(40, 0.7)])  # z is huge, delta is 0.2
    assert run(values)[0] == []


def test_hysteresis_and_cooldown():
    rng = np.random.default_rng(2)
    up_down_up = np.concatenate([rng.normal(-1, 0.3, 40), rng.normal(1, 0.3, 40), rng.normal(-1, 0.3, 40)])
    alerts, _ = run(up_down_up, dt=2.0)  # the steps are 80 s apart, the cooldown is 60 s
    assert [a["direction"] for a in alerts] == ["up", "down"]  # re-armed in between, one alert per step
    assert [a["direction"] for a in run(up_down_up, dt=1.0)[0]] == ["up"]  # 40 s apart: cooled down


def test_batches_and_redelivery_change_nothing():
    rng = np.random.default_rng(3)
    values = np.concatenate([rng.normal(0, 0.4, 50), rng.normal(2, 0.4, 50)])
    whole, state = run(values)
    in_batches, _ = run(values, chunks=7)
    assert whole == in_batches
    again, _ = scan("s", series(values), len(values), state, P)  # the same batch redelivered
    assert again == []


def test_needs_full_windows():
    assert two_window_test([0.0] * 27, P) is None
    assert two_window_test([0.0] * 28, P) is not None
