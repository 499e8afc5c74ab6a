"""`tecaflow replay`: produce segments from the synthetic generator or a dataset as N concurrent
streams, with scheduled sentiment shifts, and say exactly what was sent.

Each stream has a baseline sentiment level; segment i of a stream is an utterance drawn from the
data whose label is near the stream's level at i. `--shift STREAM@T:DELTA` moves stream STREAM
(an index or a name) by DELTA label units from its segment T on; how far that moves the model's
scores depends on the model. `--score-shift STREAM@T:DELTA` moves the served model's scores by
DELTA instead (the pool is scored through Triton first), which is what testing alerts needs.
`--loop` keeps going until Ctrl-C, one shifted stream per round (what the demo runs, so the
dashboard stays live).
"""
from __future__ import annotations

import asyncio
import base64
import json
import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from stream.errors import UserError
from stream.schema import encode_segment

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Shift:
    stream: int
    at: int
    delta: float

    @classmethod
    def parse(cls, text: str, n_streams: int, n_segments: int | None = None, flag: str = "--shift") -> "Shift":
        m = re.fullmatch(r"(?:[A-Za-z0-9_.]+-)?(\d+)@(\d+):([+-]?\d+(?:\.\d+)?)", text)
        if not m:
            raise UserError(f"{flag} {text!r}: expected STREAM@T:DELTA, e.g. 2@40:-2.5")
        shift = cls(int(m.group(1)), int(m.group(2)), float(m.group(3)))
        if shift.stream >= n_streams:
            raise UserError(f"{flag} {text!r}: stream {shift.stream} does not exist (streams 0..{n_streams - 1})")
        if n_segments is not None and shift.at >= n_segments:
            raise UserError(f"{flag} {text!r}: segment {shift.at} is never sent (segments 0..{n_segments - 1})")
        return shift


def stream_name(i: int, prefix: str = "stream") -> str:
    return f"{prefix}-{i:03d}"


class UtterancePool:
    """Utterances with labels and frames to draw from, by target label."""

    def __init__(self, data: str, widths: dict[str, int], seed: int, max_frames: int = 50):
        from trainer.data import load_dataset
        ds = load_dataset(data, seed=seed, n=3000) if data == "synthetic" else load_dataset(data)
        splits = [ds.train, ds.valid, ds.test]
        self.texts = [t for s in splits for t in s.texts]
        self.labels = np.concatenate([s.labels for s in splits])
        self.frames = {}
        for m, width in widths.items():
            parts = []
            for s in splits:
                array, lengths = getattr(s, m), getattr(s, f"{m}_lengths")
                if array is None:  # the data lacks this modality: sent as absent
                    parts += [np.zeros((0, width), np.float32)] * len(s)
                elif array.shape[-1] != width:
                    raise UserError(f"{data}: {m} width {array.shape[-1]} but the model expects {width}")
                else:
                    parts += [array[i, : min(lengths[i], max_frames)] for i in range(len(s))]
            self.frames[m] = parts
        self.rng = np.random.default_rng(seed)

    def frame(self, modality: str, row: int, absent: bool = False) -> np.ndarray:
        """A row's frames of one modality; none (zero frames) when `absent` or the model lacks it."""
        frames = self.frames.get(modality)
        if frames is None:
            return np.zeros((0, 1), np.float32)
        return frames[row][:0] if absent else frames[row]

    def draw(self, target: float) -> int:
        close = np.flatnonzero(np.abs(self.labels - target) <= 0.5)
        if close.size == 0:
            close = np.argsort(np.abs(self.labels - target))[:20]
        return int(self.rng.choice(close))


def run_tag(t0: float) -> str:
    """Part of every segment id of one replay run (its start time, hex seconds): a stream replayed
    again into the same Redis gets new segments, not ids it has already recorded with other
    content (those are conflicting duplicates: a second `make demo` scored nothing)."""
    return f"{int(t0):x}"


def plan_segments(pool: UtterancePool, n_streams: int, n_segments: int, shifts: list[Shift], seed: int,
                  spacing_s: float, t0: float, prefix: str = "stream", first: int = 0,
                  missing: float = 0.0) -> list[dict]:
    """Every segment to send, interleaved across streams in send order; a segment's id is
    STREAM/RUN.INDEX (run_tag). `first` numbers the segments of a later round of a looping
    replay (indices and event times continue). With `missing`, that share of the segments is
    sent without vision, and (independently) that share without audio, as live video has them."""
    rng = np.random.default_rng(seed + 1)
    levels = rng.uniform(-1.0, 1.5, n_streams)
    dropper = np.random.default_rng(seed + 2 + first)
    out = []
    for i in range(n_segments):
        for s in range(n_streams):
            level = levels[s] + sum(sh.delta for sh in shifts if sh.stream == s and i >= sh.at)
            row = pool.draw(float(np.clip(level, -3, 3)))
            name = stream_name(s, prefix)
            n = first + i
            out.append({"stream_id": name, "segment_id": f"{name}/{run_tag(t0)}.{n:06d}", "index": n,
                        "event_time": t0 + n * spacing_s + s * 1e-3, "row": row, "level": float(level),
                        "drop": [m for m in ("audio", "visual") if dropper.random() < missing]})
    return out


def round_shift(round_no: int, n_streams: int, n_segments: int, seed: int) -> Shift:
    """The shift of one round of a looping replay: each round a different stream moves by 2.5
    label units half-way through (towards the far side of zero), and is back at its level the
    next round, so alerts keep coming in both directions."""
    levels = np.random.default_rng(seed + 1).uniform(-1.0, 1.5, n_streams)
    stream = round_no % n_streams
    return Shift(stream, n_segments // 2, -2.5 if levels[stream] > 0 else 2.5)


async def send_all(servers: str, topic: str, planned: list[dict], pool: UtterancePool, rate: float,
                   manifest: Path | None, progress: bool = True) -> dict:
    from aiokafka import AIOKafkaProducer
    from tqdm import tqdm

    producer = AIOKafkaProducer(bootstrap_servers=servers, acks="all", linger_ms=5)
    try:
        await producer.start()
    except Exception:
        await producer.stop()  # else its half-open connections are reported as unclosed at exit
        raise
    sink = manifest.open("w") if manifest else None
    started = time.monotonic()
    try:
        for k, seg in enumerate(tqdm(planned, desc="replay", unit="seg", disable=not progress)):
            if rate > 0:  # pace to `rate` segments per second overall
                delay = started + k / rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            row = seg["row"]
            audio, visual = (pool.frame(m, row, absent=m in seg.get("drop", ())) for m in ("audio", "visual"))
            value = encode_segment(seg["stream_id"], seg["segment_id"], seg["event_time"], pool.texts[row],
                                   audio, visual, {"label": float(pool.labels[row])})
            await producer.send(topic, value=value, key=seg["stream_id"].encode())
            if sink:
                sink.write(json.dumps({"stream_id": seg["stream_id"], "segment_id": seg["segment_id"],
                                       "label": float(pool.labels[row]), "level": seg["level"],
                                       "message": base64.b64encode(value).decode()}) + "\n")
        await producer.flush()
    finally:
        await producer.stop()
        if sink:
            sink.close()
    return summarise(planned, pool)


def summarise(planned: list[dict], pool: UtterancePool) -> dict:
    per_stream: dict[str, dict] = {}
    for seg in planned:
        s = per_stream.setdefault(seg["stream_id"], {"count": 0, "label_sum": 0.0})
        s["count"] += 1
        s["label_sum"] += float(pool.labels[seg["row"]])
    for s in per_stream.values():
        s["label_mean"] = round(s.pop("label_sum") / s["count"], 4)
    return {"segments": len(planned), "streams": per_stream}


def shift_scores(planned: list[dict], scores: np.ndarray, shifts: list[Shift], prefix: str = "stream") -> None:
    """`--score-shift`: redraw each segment a shift covers for an utterance the served model scores
    DELTA above (or below) the one it replaces, so the stream's scores move by DELTA (as far as the
    pool's score range allows). `scores` is the model's score of every pool row."""
    order = np.argsort(scores)
    ranked = scores[order]
    for seg in planned:
        delta = sum(sh.delta for sh in shifts
                    if stream_name(sh.stream, prefix) == seg["stream_id"] and seg["index"] >= sh.at)
        if delta:
            j = int(np.clip(np.searchsorted(ranked, scores[seg["row"]] + delta), 1, len(ranked) - 1))
            seg["row"] = int(order[j if abs(ranked[j] - scores[seg["row"]] - delta) <
                                   abs(ranked[j - 1] - scores[seg["row"]] - delta) else j - 1])


def served_scores(pool: UtterancePool, settings, batch: int = 64) -> np.ndarray:
    """The served model's score for every utterance of the pool (with no context), so that
    `--score-shift` can state shifts in score units: a label shift of 1 moves TeCaFN's scores by a
    model-dependent amount, and alerts are about scores."""
    from stream.shadow.roles import live_model
    from stream.startup import load_tokenizer
    from stream.triton_client import TritonScorer
    scorer = TritonScorer(settings.triton_url, model=live_model(settings))
    try:
        contract = scorer.contract()
        tokenizer = load_tokenizer(settings, contract.max_text_tokens, model=scorer.model)
        out = []
        for start in range(0, len(pool.texts), batch):
            rows = range(start, min(start + batch, len(pool.texts)))
            frames = {m: [pool.frames[m][i] for i in rows] for m in contract.widths}
            # a model with context scores each utterance as a stream's first segment: which segments
            # come before it is only known once it is planned
            no_context = tokenizer.context([[] for _ in rows], contract.max_context_tokens)
            inputs = contract.batch(*tokenizer([pool.texts[i] for i in rows]), frames, no_context)
            out.append(np.asarray(scorer.score(inputs), dtype=float).reshape(-1))
        return np.concatenate(out)
    finally:
        scorer.close()


def replay(servers: str, topic: str, widths: dict[str, int], max_frames: int, streams: int, segments: int, rate: float,
           data: str = "synthetic", shifts: list[str] = (), seed: int = 0, manifest: Path | None = None,
           progress: bool = True, prefix: str = "stream", score_shifts: list[str] = (), score_pool=None,
           loop: bool = False, on_round=None, missing: float = 0.0) -> dict:
    """Send `segments` per stream once, or with `loop` round after round until interrupted
    (a new shifted stream each round; `on_round(summary)` after each). Returns the (last) summary."""
    if streams < 1 or segments < 1:
        raise UserError("--streams and --segments must be >= 1")
    if not 0 <= missing < 1:
        raise UserError(f"--missing {missing}: a share in [0, 1)")
    if rate < 0:
        raise UserError("--rate must be >= 0 (0: as fast as possible)")
    if loop and (rate == 0 or manifest):
        raise UserError("--loop needs a --rate above 0 and no --manifest (it never ends)")
    parsed = [Shift.parse(s, streams, segments) for s in shifts]
    if not re.fullmatch(r"[A-Za-z0-9_.]+", prefix):
        raise UserError(f"--prefix {prefix!r}: letters, digits, '_' and '.' only")
    pool = UtterancePool(data, widths, seed, max_frames)
    spacing = streams / rate if rate > 0 else 1.0
    t0 = time.time() if rate > 0 else time.time() - segments * spacing
    by_score = [Shift.parse(s, streams, segments, "--score-shift") for s in score_shifts]
    pool_scores = score_pool(pool) if by_score else None
    round_no = 0
    while True:
        if loop:
            parsed = [round_shift(round_no, streams, segments, seed)]
        planned = plan_segments(pool, streams, segments, parsed, seed, spacing, t0, prefix, first=round_no * segments,
                                missing=missing)
        if by_score:
            shift_scores(planned, pool_scores, by_score, prefix)
        summary = asyncio.run(send_all(servers, topic, planned, pool, rate, manifest, progress))
        summary["shifts"] = [f"{stream_name(s.stream, prefix)}@{s.at + round_no * segments}:{s.delta:+g}"
                             for s in parsed]
        summary["score_shifts"] = [f"{stream_name(s.stream, prefix)}@{s.at}:{s.delta:+g}" for s in by_score]
        if not loop:
            return summary
        if on_round:
            on_round(summary)
        round_no += 1
