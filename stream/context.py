"""What a served segment's context is: the transcripts a model with context k > 0 reads beside it.

A segment's context is the k segments of its stream with the greatest (event time, segment_id)
below its own, among the segments recorded before it: those the store holds (recorded earlier,
tf:{s}:context), and those taken before it that are not recorded yet (earlier in its batch, or in
earlier batches still in flight). Record order follows the partition's order, so on its first
delivery a segment sees every earlier segment of its stream, wherever it was batched; which
batch, or which worker, scores it does not change its context, and so not its score. Late and
out-of-order segments take the k before them in event time among those already there: never one
recorded after them, so a later segment never changes an earlier score.

A redelivered segment (already recorded: the store says when, its `seq`, the stream's count
at that moment) gets the segments recorded before it, the same answer as the first time, whatever
has been recorded since; a repeat of a segment still in flight gets what its first copy had
before it. (The worker publishes a repeat with the score recorded for it anyway; the same
context makes the score it computes the same too.) The store keeps a window, the newest
TECAFLOW_CONTEXT_KEPT segments of each stream by event time: a segment older than all of them
gets only those below it (none, usually), and a redelivery long after its first delivery, once
the window has moved past its predecessors, gets fewer (its published score is the recorded one).

Nothing here does I/O: the pipeline reads the store and calls `transcripts`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence


@dataclass(frozen=True)
class Recorded:
    """A segment of a stream as the store keeps it for context."""
    segment_id: str
    event_time: float
    text: str
    seq: int  # its place in the stream's record order (1 = recorded first)

    @property
    def order(self) -> tuple[float, str]:
        return (self.event_time, self.segment_id)


@dataclass(frozen=True)
class Taken:
    """A segment taken from the partition and not recorded yet (or being scored now)."""
    stream_id: str
    segment_id: str
    event_time: float
    text: str

    @property
    def order(self) -> tuple[float, str]:
        return (self.event_time, self.segment_id)


def transcripts(segments: Sequence[Taken], earlier: dict[str, list[Taken]], recorded: dict[str, list[Recorded]],
                k: int) -> list[list[str]]:
    """Each segment's context, oldest first. `segments`: a batch in partition order; `earlier`:
    per stream, the segments taken before the batch and not recorded when it was taken, in order;
    `recorded`: per stream, what the store held when read (after the batch was taken)."""
    if k <= 0:
        return [[] for _ in segments]
    taken: dict[str, list[Taken]] = {s: list(v) for s, v in earlier.items()}
    out = []
    for segment in segments:
        before = taken.setdefault(segment.stream_id, [])
        out.append(context_of(segment, before, recorded.get(segment.stream_id, []), k))
        before.append(segment)
    return out


def context_of(segment: Taken, taken_before: list[Taken], recorded: list[Recorded], k: int) -> list[str]:
    """One segment's context (see the module's docstring)."""
    own = next((r for r in recorded if r.segment_id == segment.segment_id), None)
    if own is not None:  # redelivered: what was recorded before it, as the first time
        candidates = {r.segment_id: (r.order, r.text) for r in recorded if r.seq < own.seq}
    else:
        copies = [i for i, t in enumerate(taken_before) if t.segment_id == segment.segment_id]
        if copies:  # a repeat of a segment in flight: what its first copy had before it
            taken_before = taken_before[:copies[0]]
        candidates = {t.segment_id: (t.order, t.text) for t in taken_before}
        candidates |= {r.segment_id: (r.order, r.text) for r in recorded}  # the store's copy wins
    before = sorted((c for c in candidates.values() if c[0] < segment.order), key=lambda c: c[0])
    return [text for _, text in before[-k:]]
