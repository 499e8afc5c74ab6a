"""Batches in flight: finished in the order they were submitted, however long each one's Triton
call takes, and never more than `depth` at once."""
import asyncio

import aiokafka
import pytest
from faust.transport import by_url

from stream.in_flight import InFlight
from stream.kafka_transport import SCHEME, Transport, set_fetch_wait


def test_a_slow_batch_holds_back_the_ones_behind_it_and_order_is_kept():
    finished, running, most = [], 0, 0

    async def call(name, seconds):
        nonlocal running, most
        running += 1
        most = max(most, running)
        await asyncio.sleep(seconds)
        running -= 1
        return name

    async def finish(item, work):
        finished.append((item, await work))

    async def go():
        in_flight = InFlight(2, finish)
        finisher = asyncio.ensure_future(in_flight.run())
        for i, seconds in enumerate([0.2, 0.0, 0.0, 0.05, 0.0]):  # the first call is the slow one
            await in_flight.submit(i, call(i, seconds))
        while len(finished) < 5:
            await asyncio.sleep(0.01)
        finisher.cancel()

    asyncio.run(go())
    assert finished == [(i, i) for i in range(5)]
    assert most == 2  # two calls overlapped, and no more than the depth


def test_calls_start_while_the_finisher_is_busy_but_never_more_than_calls_at_once():
    events, running, most = [], 0, 0

    async def call(i):
        nonlocal running, most
        running += 1
        most = max(most, running)
        events.append(("start", i))
        await asyncio.sleep(0.02)
        running -= 1
        return i

    async def finish(item, work):
        await work
        await asyncio.sleep(0.1)  # recording and publishing take longer than a call here
        events.append(("finish", item))

    async def go():
        in_flight = InFlight(4, finish, calls=2)
        finisher = in_flight.start()
        for i in range(6):
            await in_flight.submit(i, call(i))
        while sum(e[0] == "finish" for e in events) < 6:
            await asyncio.sleep(0.01)
        finisher.cancel()

    asyncio.run(go())
    assert [e[1] for e in events if e[0] == "finish"] == list(range(6))
    assert most == 2
    # while the first batch was being finished, the next calls ran: up to the depth of 4 taken
    assert events.index(("finish", 0)) >= 4 and ("start", 3) in events[:events.index(("finish", 0))]
    with pytest.raises(ValueError, match="calls"):
        InFlight(2, finish, calls=3)


def test_one_batch_at_a_time_when_the_depth_is_one():
    order = []

    async def finish(item, work):
        order.append(("finish", item, await work))

    async def work(i):
        order.append(("start", i))
        return i

    async def go():
        in_flight = InFlight(1, finish)
        finisher = asyncio.ensure_future(in_flight.run())
        for i in range(3):
            await in_flight.submit(i, work(i))
        while len(order) < 6:
            await asyncio.sleep(0.01)
        finisher.cancel()

    asyncio.run(go())
    assert order == [("start", 0), ("finish", 0, 0), ("start", 1), ("finish", 1, 1), ("start", 2), ("finish", 2, 2)]


def test_the_worker_broker_scheme_resolves_to_the_transport_with_a_fetch_wait():
    assert by_url(f"{SCHEME}://127.0.0.1:9092") is Transport  # the faust.transports entry point


def test_the_fetch_wait_reaches_the_consumer():
    async def go():
        consumer = aiokafka.AIOKafkaConsumer(bootstrap_servers="127.0.0.1:1")
        return set_fetch_wait(consumer, 0.02)._fetch_max_wait_ms

    assert asyncio.run(go()) == 20


def test_a_finisher_that_stops_makes_submit_fail_instead_of_hanging():
    async def finish(item, work):
        await work
        raise RuntimeError("a bug in finish")

    async def go():
        in_flight = InFlight(1, finish)
        in_flight.start()
        with pytest.raises(RuntimeError, match="a bug in finish"):
            for item in "abc":  # the finisher fails on "a": a later submit says so, none waits forever
                await asyncio.wait_for(in_flight.submit(item, asyncio.sleep(0)), 5)
    asyncio.run(go())
