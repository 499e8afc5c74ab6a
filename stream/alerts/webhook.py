"""Alert delivery to a Slack-compatible webhook, off the scoring path. No Faust in here.

The agent hands each alert to `offer`, which never waits: the alert joins a bounded queue and a
background task (`run`, started by stream/app.py) posts it, retrying a failing receiver with
capped exponential backoff. A slow or dead receiver therefore costs queue space, never scoring
time. When the queue is full the oldest waiting alert is dropped (the newest say more about now);
drops and give-ups are counted, and every alert is in Redis and on the `alerts` topic anyway.
"""
from __future__ import annotations

import asyncio
import logging

from stream import metrics
from stream.alerts import drivers
from stream.config import redact_url
from stream.schema import Alert

log = logging.getLogger(__name__)


def slack_payload(alert: Alert) -> dict:
    """Slack's text and attachments, and the alert's drivers whole for a receiver that reads JSON
    (Slack ignores the key)."""
    arrow = "📈" if alert.direction == "up" else "📉"
    size = f"{abs(alert.magnitude):.2f} (95% interval {alert.interval[0]:+.2f} to {alert.interval[1]:+.2f})"
    text = (f"{arrow} Sentiment shift on *{alert.stream_id}*: {alert.direction} by {size}, "
            f"from {alert.reference['mean']:+.2f} to {alert.recent['mean']:+.2f} (z={alert.z:.1f})")
    moved = drivers.summary(alert.drivers)
    if moved:
        text += f"\nWhat moved: {moved}"
    fields = {k: v for k, v in alert.message().items() if k not in ("reference", "recent", "evidence", "drivers")}
    attachments = [{"fields": [{"title": k, "value": str(v), "short": True} for k, v in fields.items()]}]
    if alert.drivers.get("segments"):
        attachments.append({"title": "segments that moved it most", "text": "\n".join(
            f"{s['score']:+.2f}  {s['segment_id']}: {s['text']}" for s in alert.drivers["segments"])})
    return {"text": text, "attachments": attachments, "drivers": alert.drivers}


async def post_webhook(url: str, alert: Alert, session) -> None:
    """POST one alert as Slack-compatible JSON; raises on any failure (HTTP status >= 300 included)."""
    async with session.post(url, json=slack_payload(alert)) as response:
        if response.status >= 300:
            raise RuntimeError(f"HTTP {response.status}")


class AlertSender:
    def __init__(self, url: str, maxsize: int = 1000, attempts: int = 5, first_delay_s: float = 1.0,
                 max_delay_s: float = 30.0, timeout_s: float = 5.0):
        self.url, self.attempts = url, attempts
        self.first_delay_s, self.max_delay_s, self.timeout_s = first_delay_s, max_delay_s, timeout_s
        self.queue: asyncio.Queue = asyncio.Queue(maxsize)

    def offer(self, alert: Alert) -> None:
        """Queue an alert for delivery; returns at once."""
        if self.queue.full():
            dropped = self.queue.get_nowait()
            metrics.WEBHOOK_DROPPED.inc()
            log.warning("webhook queue full (%d): dropped the alert on %s at %s", self.queue.maxsize,
                        dropped.stream_id, dropped.event_time)
        self.queue.put_nowait(alert)
        metrics.WEBHOOK_QUEUE.set(self.queue.qsize())

    async def deliver(self, session, alert: Alert) -> bool:
        delay = self.first_delay_s
        for attempt in range(1, self.attempts + 1):
            try:
                await post_webhook(self.url, alert, session)
                return True
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - any receiver failure: retry, then give up
                log.warning("alert webhook to %s failed (attempt %d of %d): %s", redact_url(self.url), attempt,
                            self.attempts, str(e).replace(self.url, redact_url(self.url)))
                if attempt < self.attempts:
                    await asyncio.sleep(delay)
                    delay = min(self.max_delay_s, delay * 2)
        metrics.WEBHOOK_FAILURES.inc()
        return False

    async def run(self) -> None:
        """Deliver queued alerts one by one, for as long as the worker runs."""
        import aiohttp
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout_s)) as session:
            while True:
                alert = await self.queue.get()
                metrics.WEBHOOK_QUEUE.set(self.queue.qsize())
                await self.deliver(session, alert)
