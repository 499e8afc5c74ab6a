"""Micro-batches in flight, finished strictly in the order they were taken, with no Faust in it.

    agent:     take a batch -> prepare it (decode, tokenize) -> start its Triton call -> submit
    finisher:  the oldest batch -> wait for its scores -> record in Redis -> publish -> ack

Triton scores the next batch while the worker decodes, records and publishes others, so the
worker's CPU work and the network hop overlap inference. Everything that has an order runs in
the finisher, one batch at a time and in submission order: Redis sees each stream's segments in
the order Kafka gave them, outcomes are published before their batch is acked, and offsets are
acked in order (an ack never jumps over an earlier batch still in flight). `submit` waits while
`depth` batches are in flight, so the consumer never runs ahead by more than that, and while
`calls` Triton calls are running: a batch's call ends before its turn to be finished comes, and
the next one should start then, not after the finisher is done (with one call per model instance
and depth = calls, an instance waited for the finisher, and e2e was 0.7x Triton alone on 2 cores).
While all calls are busy the backlog grows in the consumer and the next batch leaves full.
"""
from __future__ import annotations

import asyncio
from typing import Any, Awaitable, Callable


class InFlight:
    def __init__(self, depth: int, finish: Callable[[Any, asyncio.Future], Awaitable[None]], calls: int | None = None):
        """`finish(item, work)` is awaited for each submitted item in order; `work` is the item's
        future (its Triton call), already running. `finish` must handle the work's failure.
        At most `calls` works run at once (default: depth)."""
        if calls is not None and not 1 <= calls <= depth:
            raise ValueError(f"calls must be between 1 and depth ({depth}), got {calls}")
        self.slots = asyncio.Semaphore(depth)
        self.calls = asyncio.Semaphore(calls or depth)
        self.queue: asyncio.Queue = asyncio.Queue()
        self.finish = finish
        self.finisher: asyncio.Future | None = None

    def start(self) -> asyncio.Future:
        """Start the finisher (run) as a task and return it."""
        self.finisher = asyncio.ensure_future(self.run())
        return self.finisher

    async def submit(self, item: Any, work: Awaitable) -> None:
        """Start `work` and queue `item` once a slot and a call are free. If the finisher has
        stopped (a bug: `finish` handles every failure of the work), raise what stopped it: no one
        would free a slot again, and a worker waiting for one forever would look alive while doing
        nothing."""
        self._raise_if_stopped()
        await self._acquire(self.slots)
        try:
            await self._acquire(self.calls)
        except BaseException:
            self.slots.release()
            raise
        running = asyncio.ensure_future(work)
        running.add_done_callback(lambda _: self.calls.release())
        self.queue.put_nowait((item, running))

    async def _acquire(self, semaphore: asyncio.Semaphore) -> None:
        acquired = asyncio.ensure_future(semaphore.acquire())
        waits = {acquired} if self.finisher is None else {acquired, self.finisher}
        done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        if acquired not in done:
            acquired.cancel()
            self._raise_if_stopped()

    def _raise_if_stopped(self) -> None:
        if self.finisher is not None and self.finisher.done():
            self.finisher.result()  # raises the finisher's error
            raise RuntimeError("the finisher stopped")

    async def run(self) -> None:
        """The finisher: runs until cancelled. A batch it has not finished is not acked and comes
        back from Kafka after a restart; its Triton call is cancelled with it."""
        while True:
            item, work = await self.queue.get()
            try:
                await self.finish(item, work)
            finally:
                self.slots.release()

    def cancel_pending(self) -> None:
        while not self.queue.empty():
            _, work = self.queue.get_nowait()
            work.cancel()
