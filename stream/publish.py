"""Publishing a batch's outcomes: every DLQ record, score and alert reaches the broker before the
batch is acknowledged, with no Faust in here (the agent hands in a `send`).

A publish that fails (broker away, a record refused) is retried with backoff for as long as it
takes, and only the records not yet delivered are sent again; meanwhile the batch stays
unacknowledged, so a worker that is stopped or killed now has its batch delivered again after
the restart. Nothing is ever skipped. A retried or redelivered batch can publish a record twice:
the output topics are at-least-once, and their consumers dedupe by segment_id.
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

from stream.pipeline import DLQ_KEEP_BYTES, BatchResult
from stream.retry import Backoff, retry_forever


@dataclass
class Outgoing:
    topic: str  # "dlq", "scores" or "alerts": the agent maps these to its topics
    key: str | None
    value: Any
    headers: dict[str, bytes] | None = None
    delivered: bool = False


def outgoing(result: BatchResult, dlq_keep_bytes: int = DLQ_KEEP_BYTES) -> list[Outgoing]:
    return ([Outgoing("dlq", None, r.message(dlq_keep_bytes), r.headers()) for r in result.rejects]
            + [Outgoing("scores", s.stream_id, s.message()) for s in result.scores]
            + [Outgoing("alerts", a.stream_id, a.message()) for a in result.alerts])


Send = Callable[[Outgoing], Awaitable[Awaitable[Any]]]  # queues one record; its result resolves on delivery


async def deliver_once(records: list[Outgoing], send: Send) -> None:
    """Queue every undelivered record, then wait for the broker; raise the first failure after
    marking what did get through."""
    pending = [r for r in records if not r.delivered]
    acks = []
    for record in pending:
        try:
            acks.append(await send(record))
        except Exception:
            await _settle(pending[:len(acks)], acks)
            raise
    await _settle(pending, acks)


async def _settle(records: list[Outgoing], acks: list) -> None:
    results = await asyncio.gather(*acks, return_exceptions=True)
    failures = [r for r in results if isinstance(r, BaseException)]
    for record, outcome in zip(records, results):
        record.delivered = not isinstance(outcome, BaseException)
    if failures:
        raise failures[0]


async def deliver(records: list[Outgoing], send: Send, backoff: Callable[[], Backoff] = Backoff) -> None:
    """Until every record is delivered: transient or not, a failure is waited out, never skipped."""
    if records:
        await retry_forever(deliver_once, "kafka", records, send, backoff=backoff)
