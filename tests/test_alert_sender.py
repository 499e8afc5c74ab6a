"""Alert delivery off the hot path: a bounded queue and a background sender with retry, against a
real HTTP server on loopback."""
import asyncio
from dataclasses import replace

from aiohttp import web

from stream import metrics
from stream.alerts.webhook import AlertSender, slack_payload
from stream.schema import Alert

ALERT = Alert("brand-7", 1764000000.0, "down", -1.4, (-1.8, -1.0), -7.1,
              change_point={"event_time": 1763999990.0, "segments_since": 12}, evidence={},
              reference={"mean": 0.9, "n": 60}, recent={"mean": -0.5, "n": 12})


async def with_receiver(statuses, body):
    """Run `body(url, received)` against a receiver answering with `statuses` in turn (then 200)."""
    received, answers = [], list(statuses)

    async def hook(request):
        received.append(await request.json())
        return web.Response(status=answers.pop(0) if answers else 200)

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    try:
        return await body(f"http://127.0.0.1:{port}/hook", received)
    finally:
        await runner.cleanup()


async def drain(sender, n_expected, received):
    task = asyncio.create_task(sender.run())
    for _ in range(1000):  # a guard against hanging, not a timing requirement
        if len(received) >= n_expected and not sender.queue.qsize():
            break
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.05)
    task.cancel()


def test_a_failing_receiver_is_retried_until_it_takes_the_alert():
    async def body(url, received):
        sender = AlertSender(url, first_delay_s=0.01)
        sender.offer(ALERT)
        await drain(sender, 3, received)
        return received
    received = asyncio.run(with_receiver([500, 503], body))
    assert len(received) == 3 and all("brand-7" in r["text"] for r in received)  # two failures, then delivered
    assert "down by 1.40 (95% interval -1.80 to -1.00)" in received[0]["text"]


def test_a_receiver_that_never_recovers_is_given_up_on_and_counted():
    before = metrics.WEBHOOK_FAILURES._value.get()

    async def body(url, received):
        sender = AlertSender(url, attempts=3, first_delay_s=0.01)
        sender.offer(ALERT)
        await drain(sender, 3, received)
        return received
    assert len(asyncio.run(with_receiver([500] * 10, body))) == 3
    assert metrics.WEBHOOK_FAILURES._value.get() == before + 1


def test_offer_never_waits_and_a_full_queue_drops_the_oldest():
    """With no sender running (a receiver that never answers), offers still return and the queue
    keeps the newest alerts."""
    async def go():
        sender = AlertSender("http://127.0.0.1:1/none", maxsize=2)
        before = metrics.WEBHOOK_DROPPED._value.get()
        for i in range(5):
            sender.offer(replace(ALERT, event_time=float(i)))
        kept = [sender.queue.get_nowait().event_time for _ in range(sender.queue.qsize())]
        return kept, metrics.WEBHOOK_DROPPED._value.get() - before
    assert asyncio.run(go()) == ([3.0, 4.0], 3)


def test_slack_payload_reads_well():
    text = slack_payload(ALERT)["text"]
    assert "brand-7" in text and "down by 1.40" in text and "+0.90 to -0.50" in text
