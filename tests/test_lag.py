"""Consumer lag bookkeeping (stream/lag.py) with a stand-in for Faust's consumer."""
import asyncio

from stream.lag import LagTracker


class Consumer:
    def __init__(self, assigned, highwaters, positions):
        self.assigned, self.highwaters_, self.positions = assigned, highwaters, positions

    def assignment(self):
        return self.assigned

    async def highwaters(self, *tps):
        return {tp: self.highwaters_[tp] for tp in tps if tp in self.highwaters_}

    async def position(self, tp):
        return self.positions.get(tp)


def test_lag_sums_what_waits_on_the_assigned_partitions():
    tracker = LagTracker()
    tracker.processed("p0", 9)
    tracker.processed("p0", 4)  # an older offset never moves the mark back
    tracker.processed("p1", 99)
    consumer = Consumer({"p0", "p1", "p2"}, {"p0": 25, "p1": 100, "p2": 7}, {"p2": 2})
    # p0: 25 - 10; p1: 100 - 100; p2 (nothing processed here yet): 7 - position 2
    assert asyncio.run(tracker.lag(consumer)) == 15 + 0 + 5


def test_partitions_taken_by_another_worker_are_forgotten():
    tracker = LagTracker()
    tracker.processed("p0", 9)
    tracker.processed("p1", 9)
    assert asyncio.run(tracker.lag(Consumer({"p1"}, {"p1": 30}, {}))) == 20
    assert set(tracker.next_offset) == {"p1"}
    assert asyncio.run(tracker.lag(Consumer(set(), {}, {}))) == 0
