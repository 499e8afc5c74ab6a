"""The Faust agent itself, with Faust's own test context (no broker): what leaves it for the
dead-letter, scores and alerts topics."""
import asyncio
import json
from unittest import mock

from stream import app as app_module, metrics
from stream.pipeline import BatchResult, Pipeline, Reject
from stream.schema import Score
from tests.conftest import an_alert


class Exploding(Pipeline):
    """The pipeline's own order of stages (start, finish) over stages that fail or answer at once."""
    def __init__(self):
        pass

    def prepare(self, raws):  # a bug while preparing, before the batch waits for a Triton call
        raise RuntimeError("tokenizer fell over")

    async def published(self, result):
        self.acknowledged = result

class Fixed(Pipeline):
    def __init__(self, result):
        self.result = result

    def prepare(self, raws):
        return None

    async def score_prepared(self, batch):
        return batch, {}

    async def record(self, batch, outputs):
        return self.result

    async def published(self, result):
        self.acknowledged = result

def run_agent(pipeline, values):
    sent = {"dlq": [], "scores": [], "alerts": []}

    def recorder(name):
        async def send(**kw):
            sent[name].append(kw)
            delivered = asyncio.get_running_loop().create_future()
            delivered.set_result(None)
            return delivered
        return send

    async def go():
        app_module.scoring.use(pipeline)
        with mock.patch.object(app_module.scoring, "pipeline", mock.AsyncMock(return_value=pipeline)), \
                mock.patch.object(app_module.dlq_topic, "send", recorder("dlq")), \
                mock.patch.object(app_module.scores_topic, "send", recorder("scores")), \
                mock.patch.object(app_module.alerts_topic, "send", recorder("alerts")):
            async with app_module.score_segments.test_context() as agent:
                for v in values:
                    await agent.put(v)
                for _ in range(100):  # until the batch is published, or 5 s
                    if any(sent.values()):
                        break
                    await asyncio.sleep(0.05)
                await asyncio.sleep(0.1)  # what else it publishes (the other topics)
    asyncio.run(go())
    return sent

def test_an_unexpected_failure_parks_the_batch_in_the_dlq():
    counted = metrics.REJECTED.labels("internal_error")
    before = counted._value.get()
    sent = run_agent(Exploding(), [b"one", b"two"])
    assert counted._value.get() - before == 2  # operators see it on the rejected-segments counter
    bodies = [json.loads(kw["value"]) for kw in sent["dlq"]]
    assert [b["reason"] for b in bodies] == ["internal_error", "internal_error"]
    assert "tokenizer fell over" in bodies[0]["detail"]
    assert sent["scores"] == []

def test_results_go_to_their_topics_keyed_by_stream():
    result = BatchResult(scores=[Score("s1", "s1/1", 1.0, 0.5)],
                         rejects=[Reject("wrong_width", "audio width 6", b"raw")],
                         alerts=[an_alert("s1", "down", -1.0, id="1-0")])
    sent = run_agent(Fixed(result), [b"x"])
    assert sent["scores"] == [{"key": "s1", "value": result.scores[0].message(), "headers": None}]
    assert sent["alerts"] == [{"key": "s1", "value": result.alerts[0].message(), "headers": None}]
    assert sent["dlq"][0]["headers"]["tecaflow-reason"] == b"wrong_width"
