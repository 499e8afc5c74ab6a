"""The replay producer: planned segments, the looping mode the demo runs, on a real broker."""
from __future__ import annotations

import asyncio
import json
import time

import numpy as np
import pytest

from stream.config import Settings
from stream.errors import UserError
from stream.replay import Shift, plan_segments, replay, round_shift
from stream.stack.embedded import Stack
from tests.conftest import free_ports


class Pool:
    """Labels only: plan_segments draws rows by label."""

    def __init__(self):
        self.labels = np.linspace(-3, 3, 61)
        self.rng = np.random.default_rng(0)

    def draw(self, target: float) -> int:
        return int(np.argmin(np.abs(self.labels - target)))


def test_a_later_round_continues_ids_and_event_times():
    first = plan_segments(Pool(), 2, 3, [], seed=0, spacing_s=0.5, t0=100.0, prefix="p")
    later = plan_segments(Pool(), 2, 3, [], seed=0, spacing_s=0.5, t0=100.0, prefix="p", first=3)
    assert [s["segment_id"] for s in first + later if s["stream_id"] == "p-001"] == [f"p-001/64.{i:06d}"
                                                                                      for i in range(6)]
    # another run (another start time) never reuses an id: its segments are new, not conflicting duplicates
    again = plan_segments(Pool(), 2, 3, [], seed=0, spacing_s=0.5, t0=160.0, prefix="p")
    assert not {s["segment_id"] for s in again} & {s["segment_id"] for s in first}
    times = [s["event_time"] for s in first + later if s["stream_id"] == "p-000"]
    assert times == [100.0 + 0.5 * i for i in range(6)]


def test_each_round_shifts_another_stream_away_from_its_level():
    shifts = [round_shift(r, 3, 100, seed=0) for r in range(4)]
    assert [s.stream for s in shifts] == [0, 1, 2, 0] and all(s.at == 50 for s in shifts)
    levels = np.random.default_rng(1).uniform(-1.0, 1.5, 3)
    assert all(np.sign(s.delta) == -np.sign(levels[s.stream]) and abs(s.delta) == 2.5 for s in shifts)
    planned = plan_segments(Pool(), 3, 100, [shifts[1]], seed=0, spacing_s=1, t0=0)
    stream1 = [s["level"] for s in planned if s["stream_id"] == "stream-001"]
    assert stream1[49] + shifts[1].delta == pytest.approx(stream1[50])


@pytest.mark.parametrize("kwargs, message", [
    (dict(rate=0, loop=True), "--loop needs a --rate above 0"),
    (dict(rate=5, streams=0), "--streams and --segments must be >= 1"),
    (dict(rate=-1), "--rate must be >= 0"),
    (dict(rate=5, prefix="a b"), "--prefix"),
])
def test_bad_replay_options_are_refused_before_anything_is_sent(kwargs, message):
    args = dict(servers="127.0.0.1:1", topic="t", widths={"audio": 5}, max_frames=10, streams=2, segments=2)
    args.update(kwargs)
    with pytest.raises(UserError, match=message):
        replay(**args)


def test_shift_parse_names_the_problem():
    assert Shift.parse("demo-002@40:-2.5", 3) == Shift(2, 40, -2.5)
    with pytest.raises(UserError, match="does not exist"):
        Shift.parse("7@1:1", 3)
    # a shift after the last segment never happens: the summary used to report it all the same
    with pytest.raises(UserError, match=r"--shift '0@99:-1': segment 99 is never sent \(segments 0..4\)"):
        Shift.parse("0@99:-1", 3, 5)
    with pytest.raises(UserError, match="--score-shift '0@x'"):  # named as the flag it came from
        Shift.parse("0@x", 3, 5, "--score-shift")


@pytest.mark.integration
def test_the_looping_replay_keeps_sending_on_a_real_broker(tmp_path):
    port = free_ports(1)[0]
    broker = Stack(Settings(run_dir=str(tmp_path), broker_url=f"kafka://127.0.0.1:{port}")).broker().start()
    try:
        rounds = []

        class Enough(Exception):
            pass

        def on_round(summary):
            rounds.append(summary)
            if len(rounds) == 2:
                raise Enough

        with pytest.raises(Enough):
            replay(f"127.0.0.1:{port}", "segments", {"audio": 5, "visual": 20}, 10, streams=2, segments=6,
                   rate=200, loop=True, on_round=on_round, progress=False, prefix="loop")
        expected = [round_shift(r, 2, 6, seed=0) for r in range(2)]
        assert [r["shifts"] for r in rounds] == [[f"loop-{e.stream:03d}@{3 + 6 * r}:{e.delta:+g}"]
                                                 for r, e in enumerate(expected)]
        assert [r["segments"] for r in rounds] == [12, 12]
        ids = asyncio.run(read_ids(f"127.0.0.1:{port}", 24))
        (run,) = {i.split("/")[1].split(".")[0] for i in ids}  # one run: one tag
        assert sorted(ids) == sorted(f"loop-00{s}/{run}.{i:06d}" for s in range(2) for i in range(12))
    finally:
        broker.stop()


async def read_ids(servers: str, n: int) -> list[str]:
    from aiokafka import AIOKafkaConsumer
    consumer = AIOKafkaConsumer("segments", bootstrap_servers=servers, auto_offset_reset="earliest")
    await consumer.start()
    ids = []
    try:
        deadline = time.monotonic() + 30
        while len(ids) < n and time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=500)).values():
                ids += [json.loads(r.value)["segment_id"] for r in records]
    finally:
        await consumer.stop()
    return ids


def test_missing_sends_that_share_of_segments_without_each_side():
    class Pool:
        labels = np.zeros(10)

        def draw(self, target):
            return 0
    planned = plan_segments(Pool(), 4, 500, [], seed=0, spacing_s=1, t0=0, missing=0.2)
    for side in ("audio", "visual"):
        share = np.mean([side in seg["drop"] for seg in planned])
        assert 0.17 < share < 0.23
    assert all(seg["drop"] == [] for seg in plan_segments(Pool(), 2, 50, [], seed=0, spacing_s=1, t0=0))
