"""The alert webhook against a real HTTP server on loopback."""
import asyncio
import json

from aiohttp import web

from stream import metrics
from stream.pipeline import post_webhook

ALERT = {"stream_id": "brand-7", "event_time": 1764000000.0, "direction": "down", "magnitude": -1.4, "z": -7.1,
         "reference": {"mean": 0.9, "n": 60}, "recent": {"mean": -0.5, "n": 20}}


async def serve_and_post(status: int):
    received = []

    async def hook(request):
        received.append(await request.json())
        return web.Response(status=status)

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    try:
        ok = await post_webhook(f"http://127.0.0.1:{port}/hook", ALERT)
    finally:
        await runner.cleanup()
    return ok, received


def test_webhook_posts_slack_compatible_json():
    ok, received = asyncio.run(serve_and_post(200))
    assert ok and len(received) == 1
    assert "brand-7" in received[0]["text"] and "down by 1.40" in received[0]["text"]
    assert json.dumps(received[0])  # plain JSON, Slack's incoming-webhook shape


def test_webhook_failure_is_counted_not_raised():
    before = metrics.WEBHOOK_FAILURES._value.get()
    ok, _ = asyncio.run(serve_and_post(500))
    assert not ok and metrics.WEBHOOK_FAILURES._value.get() == before + 1
    assert asyncio.run(post_webhook("http://127.0.0.1:1/nothing-listens", ALERT)) is False
