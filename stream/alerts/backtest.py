"""`tecaflow backtest`: the shift detector with chosen settings over recorded scores, scored
against shift times the user knows. This is how alerts are tuned on one's own history.

Scores come from a CSV (`stream,event_time,score`, header optional), from Redis (each stream's
detector window: its last segments only) or from the `scores` topic (read from the beginning).
Known shifts: `stream,event_time` rows, the time the shift began.

Matching: each known shift is caught by the first alert of its stream at or after its time, before
the stream's next known shift and within `horizon` segments of it; every other alert is a false
alarm. precision = caught shifts' alerts / all alerts; recall = caught / known shifts; delay =
segments from the shift's first segment to the alert, inclusive (and seconds of event time);
false alarms per 10k = false alarms per 10,000 scored segments.

Replay's `--shift` moves *labels*: how far the model's scores move in response depends on the model,
so use known score-unit shifts (replay's `--score-shift`) to judge the detector itself.
"""
from __future__ import annotations

import csv
import logging
import math
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

import numpy as np

from stream.alerts import detector, noise
from stream.config import DetectorParams
from stream.errors import UserError
from stream.schema import Alert, Score

Scores = dict[str, list[tuple[float, float]]]  # stream -> (event_time, score), oldest first
# The model's scores are 3 * tanh(.): a value outside is not a score (another scale, a column
# mix-up), and the detector's thresholds would mean nothing on it.
SCORE_RANGE = 3.0

log = logging.getLogger(__name__)


def _rows(path: Path, columns: int, what: str):
    """(line number, stream, *numbers) for each row; a UserError naming the line for a bad one."""
    number = 0
    try:
        with Path(path).open(newline="", encoding="utf-8") as f:
            for number, row in enumerate(csv.reader(f), 1):
                if not row or (number == 1 and not _is_number(row[1] if len(row) > 1 else "")):
                    continue  # blank line or header
                if len(row) != columns:
                    raise UserError(f"{path}:{number}: expected {what}, got {len(row)} fields")
                if not row[0].strip():
                    raise UserError(f"{path}:{number}: empty stream id")
                try:
                    yield number, row[0], *(float(v) for v in row[1:])
                except ValueError:
                    raise UserError(f"{path}:{number}: expected {what}, got {row!r}") from None
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 text (invalid byte {e.object[e.start]:#04x}); "
                        f"expected CSV rows {what}") from None
    except csv.Error as e:
        raise UserError(f"{path}:{number + 1}: not CSV ({e}); expected rows {what}") from None


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def _sorted(scores: dict) -> Scores:
    return {s: sorted(v) for s, v in scores.items()}


def scores_from_csv(path: Path) -> Scores:
    out = defaultdict(list)
    for number, stream, t, score in _rows(path, 3, "stream,event_time,score"):
        if not math.isfinite(t):
            raise UserError(f"{path}:{number}: event time {t} is not finite")
        if not -SCORE_RANGE <= score <= SCORE_RANGE:
            raise UserError(f"{path}:{number}: score {score} is outside [-{SCORE_RANGE:g}, {SCORE_RANGE:g}]")
        out[stream].append((t, score))
    if not out:
        raise UserError(f"{path}: no scores")
    return _sorted(out)


def scores_from_redis(store) -> Scores:
    return _sorted({s: store.window(s) for s, _ in store.streams()})


def scores_from_messages(messages) -> tuple[Scores, int]:
    """The scores of `scores` topic messages, each segment once (its first message: the worker
    publishes a redelivered segment's score again, the same score), and how many repeats were left
    out. Counted twice, a repeat would add a segment that the detector skips as a near-duplicate
    and that no stream had, and inflate the segments false alarms are counted over."""
    out, seen, repeats = defaultdict(list), set(), 0
    for message in messages:
        score = Score.from_message(message)
        if score.segment_id in seen:
            repeats += 1
            continue
        seen.add(score.segment_id)
        out[score.stream_id].append((score.event_time, score.score))
    return _sorted(out), repeats


def scores_from_topic(servers: str, topic: str, timeout_s: float = 10.0) -> Scores:
    """Every segment's score on the scores topic (scores_from_messages), from the beginning to the
    end offsets seen at start."""
    import asyncio
    import json

    from aiokafka import AIOKafkaConsumer, TopicPartition

    async def read() -> Scores:
        consumer = AIOKafkaConsumer(bootstrap_servers=servers, enable_auto_commit=False, auto_offset_reset="earliest")
        messages = []
        try:
            await consumer.start()  # in the try: a consumer that failed to start is closed too
            if topic not in await consumer.topics():  # also fetches the partition metadata
                raise UserError(f"topic {topic!r} does not exist on {servers}")
            parts = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
            if not parts:
                raise UserError(f"topic {topic!r} does not exist on {servers}")
            consumer.assign(parts)
            await consumer.seek_to_beginning(*parts)
            ends = await consumer.end_offsets(parts)
            async def behind() -> bool:
                return any([await consumer.position(tp) < ends[tp] for tp in parts])

            while await behind():
                batch = await asyncio.wait_for(consumer.getmany(timeout_ms=1000), timeout_s)
                messages += [json.loads(r.value) for records in batch.values() for r in records]
        finally:
            await consumer.stop()
        return messages

    scores, repeats = scores_from_messages(asyncio.run(read()))
    if repeats:
        log.info("%s: %d repeated segments (redeliveries published again) counted once", topic, repeats)
    return scores


def shifts_from_csv(path: Path) -> dict[str, list[float]]:
    out = defaultdict(list)
    for number, stream, t in _rows(path, 2, "stream,event_time"):
        if not math.isfinite(t):
            raise UserError(f"{path}:{number}: event time {t} is not finite")
        out[stream].append(t)
    return {s: sorted(v) for s, v in out.items()}


def parse_shift(text: str) -> tuple[str, float]:
    stream, _, t = text.rpartition("@")
    if not stream or not _is_number(t):
        raise UserError(f"--shift {text!r}: expected STREAM@EVENT_TIME, e.g. brand-7@1764000000")
    return stream, float(t)


def warmup_prior(scores: Scores, params: DetectorParams) -> noise.RhoPrior | None:
    """The autocorrelation prior the worker pools from its streams' warm-ups
    (noise.pooled_rho_prior), as it stands once every stream here has warmed up: the worker's
    steady state, where a young stream meets the warm-ups of many before it."""
    warmups = []
    for stream, series in scores.items():
        state = detector.initial_state()
        for t, x in series:
            detector.step(state, t, x, params, stream)
            if state["warmup_rho"]:
                warmups.append(state["warmup_rho"])
                break
    return noise.pooled_rho_prior(warmups)


def detect(scores: Scores, params: DetectorParams) -> tuple[dict[str, list[Alert]], list[str]]:
    """Each stream's alerts, and the streams the detector never armed on (fewer segments than
    the warm-up, repeats not counted): it could not have alerted there, so they are not evaluated."""
    alerts, unarmed = {}, []
    prior = warmup_prior(scores, params)
    for stream, series in scores.items():
        state, found = detector.initial_state(), []
        for t, x in series:
            alert = detector.step(state, t, x, params, stream, prior=prior)
            if alert:
                found.append(alert)
        alerts[stream] = found
        if state["fit"] is None:
            unarmed.append(stream)
    return alerts, unarmed


def evaluate(scores: Scores, shifts: dict[str, list[float]], alerts: dict[str, list[Alert]], horizon: int) -> dict:
    caught, false_alarms, delays, delays_s = 0, 0, [], []
    # false alarms (count, segments) on streams with no known shift, and before a stream's first one:
    # a detector whose promise holds on steady streams may still lean on a shift before it starts
    steady, before_shift = [0, 0], [0, 0]
    unknown = sorted(set(shifts) - set(scores))
    if unknown:
        raise UserError(f"known shifts name streams with no scores: {', '.join(unknown)}")
    for stream, series in scores.items():
        times = np.array([t for t, _ in series])
        known = shifts.get(stream, [])
        used = set()
        for i, start in enumerate(known):
            end = known[i + 1] if i + 1 < len(known) else math.inf
            first = int(np.searchsorted(times, start))  # the shift's first segment
            for j, a in enumerate(alerts[stream]):
                if j in used or not start <= a.event_time < end:
                    continue
                at = int(np.searchsorted(times, a.event_time))
                if at - first + 1 <= horizon:
                    used.add(j)
                    caught += 1
                    delays.append(at - first + 1)
                    delays_s.append(a.event_time - start)
                break
        false_alarms += len(alerts[stream]) - len(used)
        if not known:
            steady[0], steady[1] = steady[0] + len(alerts[stream]), steady[1] + len(series)
        else:
            early = [a for a in alerts[stream] if a.event_time < known[0]]
            before_shift[0] += len(early)
            before_shift[1] += int(np.searchsorted(times, known[0]))
    n_alerts = sum(len(a) for a in alerts.values())
    n_shifts = sum(len(v) for v in shifts.values())
    segments = sum(len(v) for v in scores.values())
    return {"segments": segments, "streams": len(scores), "known_shifts": n_shifts, "alerts": n_alerts,
            "caught": caught, "false_alarms": false_alarms,
            "precision": caught / n_alerts if n_alerts else None, "recall": caught / n_shifts if n_shifts else None,
            "median_delay_segments": float(np.median(delays)) if delays else None,
            "median_delay_s": float(np.median(delays_s)) if delays_s else None,
            "false_alarms_per_10k": false_alarms / segments * 1e4,
            "steady": _false_alarm_rate(*steady), "before_shift": _false_alarm_rate(*before_shift)}


def _false_alarm_rate(false_alarms: int, segments: int) -> dict:
    return {"false_alarms": false_alarms, "segments": segments,
            "false_alarms_per_10k": false_alarms / segments * 1e4 if segments else None}


def backtest(scores: Scores, shifts: dict[str, list[float]], params: DetectorParams, horizon: int = 200,
             sweep: list[float] = ()) -> dict:
    runs = []
    for rate in sweep or [params.false_alarms_per_10k]:
        p = replace(params, false_alarms_per_10k=rate)
        alerts, unarmed = detect(scores, p)  # the warm-up is the same for every rate
        runs.append({"false_alarms_per_10k_setting": rate, **evaluate(scores, shifts, alerts, horizon),
                     "alert_list": [a for s in alerts.values() for a in s]})
    return {"min_shift": params.min_shift, "warmup": params.warmup, "horizon": horizon, "runs": runs,
            "not_evaluated": sorted(unarmed)}


def _rate_cell(rate: dict) -> str:
    if rate["false_alarms_per_10k"] is None:
        return "-"
    return f"{rate['false_alarms_per_10k']:.2f} ({rate['false_alarms']} in {rate['segments']})"


def format_report(result: dict) -> str:
    lines = [f"min shift {result['min_shift']}, warm-up {result['warmup']} segments, a shift counts as caught "
             f"within {result['horizon']} segments",
             "", "| FA/10k setting | alerts | caught / shifts | precision | recall | median delay (segments, s) "
             "| false alarms | FA per 10k | on steady streams | before a shift |", "|---|---|---|---|---|---|---|---|---|---|"]
    fmt = lambda v, spec: "-" if v is None else format(v, spec)  # noqa: E731
    for r in result["runs"]:
        lines.append(f"| {r['false_alarms_per_10k_setting']:g} | {r['alerts']} | {r['caught']} / {r['known_shifts']} "
                     f"| {fmt(r['precision'], '.0%')} | {fmt(r['recall'], '.0%')} | "
                     f"{fmt(r['median_delay_segments'], 'g')}, {fmt(r['median_delay_s'], '.0f')} | "
                     f"{r['false_alarms']} | {r['false_alarms_per_10k']:.2f} | {_rate_cell(r['steady'])} | "
                     f"{_rate_cell(r['before_shift'])} |")
    lines.append(f"\n{result['runs'][0]['segments']} segments on {result['runs'][0]['streams']} streams")
    if result["not_evaluated"]:
        lines.append(f"not evaluated, fewer segments than the warm-up of {result['warmup']} (repeats not counted; "
                     f"a known shift there counts as missed): {', '.join(result['not_evaluated'])}")
    return "\n".join(lines)


def plot(scores: Scores, shifts: dict[str, list[float]], alerts: list[Alert], stream: str, out: Path) -> Path:
    """A PNG of one stream's scores with its alerts (solid: alert; shaded: from the estimated
    change point to the alert) and the known shifts (dashed)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    if stream not in scores:
        raise UserError(f"--plot {stream!r}: no scores for that stream")
    t0 = scores[stream][0][0]
    t = np.array([p[0] for p in scores[stream]]) - t0
    fig, ax = plt.subplots(figsize=(11, 4))
    ax.plot(t, [p[1] for p in scores[stream]], ".", ms=3, color="0.45", label="score")
    for i, s in enumerate(shifts.get(stream, [])):
        ax.axvline(s - t0, color="tab:blue", ls="--", lw=1.2, label="known shift" if i == 0 else None)
    for i, a in enumerate(x for x in alerts if x.stream_id == stream):
        colour = "tab:green" if a.direction == "up" else "tab:red"
        ax.axvspan(a.change_point["event_time"] - t0, a.event_time - t0, color=colour, alpha=0.15)
        ax.axvline(a.event_time - t0, color=colour, lw=1.5, label="alert" if i == 0 else None)
        start, end = a.change_point["event_time"] - t0, a.event_time - t0
        # reference mean just before the change point, recent mean from it to the alert
        ax.hlines([a.reference["mean"], a.recent["mean"]], [start - max(60.0, end - start), start],
                  [start, end], colors=["0.2", colour], lw=2)
    ax.set_xlabel(f"event time, seconds after {t0:.0f}")
    ax.set_ylabel("score")
    ax.set_title(f"{stream}: scores, alerts (shaded from the estimated change point) and known shifts")
    ax.legend(loc="upper right")
    fig.tight_layout()
    out = Path(out)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
