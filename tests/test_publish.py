"""Publishing a batch's outcomes: DLQ records that always fit, and failed publishes retried
rather than skipped (unit tests with a fake send; tests/test_reliability_live.py does it on the
real broker)."""
import asyncio
import base64
import hashlib
import json

import pytest

from stream.pipeline import BatchResult, Reject
from stream.publish import deliver, outgoing
from stream.retry import Backoff
from stream.schema import Score
from tests.conftest import an_alert

PRODUCER_LIMIT = 1_000_000  # Faust's default producer_max_request_size


def test_a_small_original_travels_whole():
    body = json.loads(Reject("bad_id", "why", b"small message").message())
    assert base64.b64decode(body["original"]) == b"small message" and "truncated" not in body


def test_an_oversized_original_keeps_a_prefix_its_length_and_sha256():
    raw = bytes(range(256)) * 6000  # 1.5 MB: whole, its record would be 2 MB of base64
    record = Reject("too_large", "d" * 5000, raw).message()
    assert len(record) < PRODUCER_LIMIT / 4
    body = json.loads(record)
    assert body["truncated"] is True and body["original_length"] == len(raw)
    assert body["original_sha256"] == hashlib.sha256(raw).hexdigest()
    assert raw.startswith(base64.b64decode(body["original"])) and len(body["detail"]) == 1000


class FlakyBroker:
    """Refuses the record whose value is `refused` `failures` times, at send or on delivery."""

    def __init__(self, refused, failures, at_send):
        self.refused, self.failures, self.at_send = refused, failures, at_send
        self.delivered = []

    async def send(self, record):
        ack = asyncio.get_running_loop().create_future()
        if record.value == self.refused and self.failures:
            self.failures -= 1
            if self.at_send:
                raise ValueError("MessageSizeTooLargeError")
            ack.set_exception(ConnectionError("broker went away"))
            return ack
        self.delivered.append(record.value)
        ack.set_result(None)
        return ack


@pytest.mark.parametrize("at_send", [True, False])
def test_a_failed_publish_is_retried_until_delivered_and_nothing_is_sent_twice(at_send):
    result = BatchResult(rejects=[Reject("bad_id", "x", b"one")],
                         scores=[Score("s", f"s/{i}", 1.0, i) for i in range(3)],
                         alerts=[an_alert("s", "up", 1.0, id="1-0")])
    records = outgoing(result)
    broker = FlakyBroker(refused=result.scores[1].message(), failures=3, at_send=at_send)
    asyncio.run(deliver(records, broker.send, backoff=lambda: Backoff(first=0.001, cap=0.001)))
    assert all(r.delivered for r in records)
    assert sorted(map(str, broker.delivered)) == sorted(str(r.value) for r in records)
