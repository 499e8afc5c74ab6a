"""Consumer lag of one worker: segments waiting on its partitions, summed (never per stream).

The agent reports each processed message's offset; lag = the partition's high-water mark minus
the offset after the last one processed. A partition not yet processed here counts from the
consumer's position. No Faust in here: `consumer` is anything with `assignment()` and async
`highwaters(*tps)` and `position(tp)` (Faust's consumer has them).
"""
from __future__ import annotations


class LagTracker:
    def __init__(self):
        self.next_offset: dict = {}

    def processed(self, tp, offset: int) -> None:
        self.next_offset[tp] = max(self.next_offset.get(tp, 0), offset + 1)

    async def lag(self, consumer) -> int:
        assigned = set(consumer.assignment())
        for tp in list(self.next_offset):  # partitions given to another worker are not ours
            if tp not in assigned:
                del self.next_offset[tp]
        if not assigned:
            return 0
        highwaters = await consumer.highwaters(*assigned)
        total = 0
        for tp in assigned:
            high = highwaters.get(tp)
            done = self.next_offset.get(tp)
            if done is None:
                done = await consumer.position(tp)
            if high is not None and done is not None:
                total += max(0, high - done)
        return total
