"""`tecaflow bench soak --minutes N`: a steady replay with a share of malformed messages and exact
redeliveries through the embedded stack and one worker, for N minutes.

It prints, at the start and the end (and every `--every` seconds): the resident memory of the
worker, of Triton (with its Python backend stubs) and of Redis, and the consumer group's lag. At
the end, once the worker has drained: segments lost and doubled per stream (Redis against what
was sent), and DLQ records against the malformed messages sent. 0 lost and 0 doubled expected.
"""
from __future__ import annotations

import asyncio
import json
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from stream.config import Settings
from stream.schema import encode_segment
from stream.stack.embedded import Stack, worker_service
from stream.store import TrendStore

GROUP = "tecaflow"  # the Faust app id is the consumer group


def malformed(i: int, widths: dict[str, int]) -> bytes:
    """One of a rotating set of hostile messages (issue 12's kinds among them)."""
    good = json.loads(encode_segment("soak-bad", f"soak-bad/{i}", time.time(), "x", np.zeros((2, widths["audio"])),
                                     np.zeros((2, widths["visual"]))))
    kinds = [
        b"{not json",
        b'{"meta": ' + b"[" * 5000 + b"]" * 5000 + b"}",
        json.dumps({**good, "stream_id": "../../etc"}).encode(),
        json.dumps(good).replace('"text": "x"', '"text": "\\ud800"').encode(),
        json.dumps(good).replace('"text": "x"', '"text": "x", "text": "y"').encode(),
        json.dumps({**good, "event_time": 10 ** 300}).encode(),
        json.dumps({**good, "audio": {"shape": [2, widths["audio"] + 1], "f32": ""}}).encode(),
        json.dumps({**good, "text": "t" * 300_000}).encode(),  # text_too_long, and a truncated DLQ record
    ]
    return kinds[i % len(kinds)]


def tree_rss_mb(pid: int | None) -> float:
    """Resident memory of a process and its descendants (Triton's stubs hold the model), in MB."""
    if pid is None:
        return float("nan")
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            status = Path(f"/proc/{p}/status").read_text()
            total += int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:")))
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError, StopIteration):
            continue
    return total / 1024


async def consumer_lag(servers: str, topic: str) -> int:
    """Messages of `topic` past the worker group's committed offsets. (OffsetFetch through the
    group's coordinator: the admin client's version of it is one the embedded broker lacks.)"""
    from aiokafka import AIOKafkaConsumer, TopicPartition
    consumer = AIOKafkaConsumer(bootstrap_servers=servers, group_id=GROUP, enable_auto_commit=False)
    await consumer.start()
    try:
        await consumer.topics()  # fetches the metadata partitions_for_topic reads
        partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])]
        ends = await consumer.end_offsets(partitions)
        lag = 0
        for tp, end in ends.items():
            lag += end - (await consumer.committed(tp) or 0)
        return lag
    finally:
        await consumer.stop()


async def topic_size(servers: str, topic: str) -> int:
    from aiokafka import AIOKafkaConsumer
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=servers, enable_auto_commit=False)
    await consumer.start()
    try:
        parts = consumer.assignment()
        begins, ends = await consumer.beginning_offsets(parts), await consumer.end_offsets(parts)
        return sum(ends[tp] - begins[tp] for tp in parts)
    finally:
        await consumer.stop()


@dataclass
class Sent:
    valid: dict[str, int] = field(default_factory=dict)
    malformed: int = 0
    redelivered: int = 0


@dataclass
class Soak:
    settings: Settings
    stack: Stack
    minutes: float
    rate: float
    streams: int
    bad_share: float
    every_s: float
    prefix: str = field(default_factory=lambda: f"soak{int(time.time())}")
    samples: list[dict] = field(default_factory=list)

    def pids(self, worker: subprocess.Popen) -> dict[str, int | None]:
        return {"worker": worker.pid, "triton": self.service_pid("triton"), "redis": self.service_pid("redis")}

    def service_pid(self, name: str) -> int | None:
        return self.stack.stopper(name).pid()

    def sample(self, worker, elapsed: float, sent: Sent) -> dict:
        row = {"t_s": round(elapsed), **{f"{k}_rss_mb": round(tree_rss_mb(p), 1) for k, p in self.pids(worker).items()},
               "lag": asyncio.run(consumer_lag(self.settings.broker_servers(), self.settings.topic_segments)),
               "sent": sum(sent.valid.values()) + sent.malformed + sent.redelivered}
        self.samples.append(row)
        print(" ".join(f"{k}={v}" for k, v in row.items()), flush=True)
        return row

    async def produce(self, worker, widths: dict[str, int]) -> Sent:
        from aiokafka import AIOKafkaProducer
        producer = AIOKafkaProducer(bootstrap_servers=self.settings.broker_servers(), max_request_size=4 * 2**20)
        await producer.start()
        sent, rng = Sent(), np.random.default_rng(0)
        started = time.monotonic()
        next_sample = started + self.every_s
        last_valid: tuple[str, bytes] | None = None
        try:
            for i in range(int(self.minutes * 60 * self.rate)):
                await asyncio.sleep(max(0.0, started + i / self.rate - time.monotonic()))
                draw = rng.random()
                if draw < self.bad_share:
                    key, value = b"soak-bad", malformed(sent.malformed, widths)
                    sent.malformed += 1
                elif draw < self.bad_share * 1.5 and last_valid:  # an exact redelivery: counted once
                    key, value = last_valid[0].encode(), last_valid[1]
                    sent.redelivered += 1
                else:
                    stream = f"{self.prefix}-{int(rng.integers(self.streams)):03d}"
                    n = sent.valid.get(stream, 0)
                    value = encode_segment(stream, f"{stream}/{n}", time.time(), f"utterance {n} of {stream}",
                                           rng.normal(size=(8, widths["audio"])),
                                           rng.normal(size=(8, widths["visual"])))
                    sent.valid[stream] = n + 1
                    key, last_valid = stream.encode(), (stream, value)
                await producer.send(self.settings.topic_segments, value=value, key=key)
                if time.monotonic() >= next_sample:
                    await producer.flush()
                    await asyncio.to_thread(self.sample, worker, time.monotonic() - started, sent)
                    next_sample += self.every_s
            await producer.flush()
        finally:
            await producer.stop()
        return sent

    def drain(self, store: TrendStore, sent: Sent, timeout: float = 120) -> dict[str, int]:
        deadline = time.monotonic() + timeout
        while True:
            counts = {s: (store.totals(s) or {}).get("count", 0) for s in sent.valid}
            lag = asyncio.run(consumer_lag(self.settings.broker_servers(), self.settings.topic_segments))
            if (counts == sent.valid and lag == 0) or time.monotonic() > deadline:
                return counts
            time.sleep(1)


def run_soak(repo: Path, minutes: float, rate: float, streams: int, bad_share: float, every_s: float) -> dict:
    from stream.shadow.roles import live_model
    from stream.triton_client import TritonScorer
    settings = Settings.from_env()
    stack = Stack(settings, repo)
    started = stack.up()
    soak = Soak(settings, stack, minutes, rate, streams, bad_share, every_s)
    service = worker_service(stack.run_dir, "soak-worker")
    try:
        worker = service.start().process
        scorer = TritonScorer(settings.triton_url, model=live_model(settings))
        widths = scorer.contract().widths
        scorer.close()
        dlq_before = asyncio.run(topic_size(settings.broker_servers(), settings.topic_dlq))
        first = soak.sample(worker, 0, Sent())
        sent = asyncio.run(soak.produce(worker, widths))
        counts = soak.drain(TrendStore.of(settings), sent)
        last = soak.sample(worker, minutes * 60, sent)
        alive = worker.poll() is None
        dlq = asyncio.run(topic_size(settings.broker_servers(), settings.topic_dlq)) - dlq_before
    finally:
        service.stop(timeout=30)
        stack.down(services=tuple(reversed(started)))
    return {"minutes": minutes, "rate": rate, "streams": streams, "start": first, "end": last,
            "valid_sent": sum(sent.valid.values()), "recorded": sum(counts.values()),
            "lost": sum(max(0, n - counts.get(s, 0)) for s, n in sent.valid.items()),
            "doubled": sum(max(0, counts.get(s, 0) - n) for s, n in sent.valid.items()),
            "redelivered_sent": sent.redelivered, "malformed_sent": sent.malformed, "dlq_records": dlq,
            "worker_alive": alive}


def format_report(r: dict) -> str:
    s, e = r["start"], r["end"]
    return "\n".join([
        f"soak: {r['minutes']} min at {r['rate']} msg/s over {r['streams']} streams",
        f"{'':10}{'start':>10}{'end':>10}",
        *(f"{k + ' MB':10}{s[k + '_rss_mb']:>10}{e[k + '_rss_mb']:>10}" for k in ("worker", "triton", "redis")),
        f"{'lag':10}{s['lag']:>10}{e['lag']:>10}",
        f"valid sent {r['valid_sent']}, recorded {r['recorded']}: lost {r['lost']}, doubled {r['doubled']}",
        f"exact redeliveries sent {r['redelivered_sent']}; malformed sent {r['malformed_sent']}, "
        f"DLQ records {r['dlq_records']}; worker still running at the end: {r['worker_alive']}",
    ])
