"""Waiting out a dependency that is away (Triton, Redis, the broker): a call is retried with
capped exponential backoff for as long as it takes, counted in the retry and dependency metrics.
What only the user can fix (a UserError) is raised at once."""
from __future__ import annotations

import asyncio
import logging
from typing import Callable

from stream import metrics
from stream.errors import UserError

log = logging.getLogger(__name__)


class Backoff:
    def __init__(self, first: float = 0.2, cap: float = 10.0):
        self.first, self.cap, self.delay = first, cap, first

    async def wait(self) -> None:
        await asyncio.sleep(self.delay)
        self.delay = min(self.cap, self.delay * 2)


async def retry_forever(call, target: str, *args, backoff: Callable[[], Backoff] = Backoff):
    """Run `call(*args)` until it succeeds, counting retries, waiting as a fresh `backoff()` says.
    A plain function runs in a thread so that a slow or unreachable dependency never blocks the
    event loop (Kafka heartbeats)."""
    backoff = backoff()
    attempt = 0
    while True:
        try:
            if asyncio.iscoroutinefunction(call):
                result = await call(*args)
            else:
                result = await asyncio.to_thread(call, *args)
            metrics.DEPENDENCY_UP.labels(target).set(1)
            if attempt:
                log.info("%s is back after %d retries", target, attempt)
            return result
        except (asyncio.CancelledError, UserError):  # waiting does not fix what the user must
            raise
        except Exception as e:  # noqa: BLE001 - any failure of the dependency: wait and retry
            attempt += 1
            metrics.RETRIES.labels(target).inc()
            metrics.DEPENDENCY_UP.labels(target).set(0)
            log.warning("%s call failed (%s: %s); retry %d in %.1fs", target, type(e).__name__, str(e)[:200],
                        attempt, backoff.delay)
            await backoff.wait()
