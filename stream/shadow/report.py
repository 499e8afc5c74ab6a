"""The comparison of the candidate against the live model, as `tecaflow shadow report`, the
dashboard, the gate and the worker's metrics read it: from Redis, rolling (the pairs each stream
keeps), overall and per stream."""
from __future__ import annotations

import time

import numpy as np

from stream.schema import Alert
from stream.shadow import compare, pairs, roles
from stream.store import TrendStore

ALERTS_READ = 1000  # per stream and side: far more than a stream raises over the pairs it keeps


def marks(alerts: list[Alert], times: np.ndarray) -> list[compare.AlertMark]:
    """The alerts raised while the stream's pairs were kept, placed by the segments before them."""
    return [compare.AlertMark(a.stream_id, int(np.searchsorted(times, a.event_time, side="right")), a.direction, a.id,
                              a.event_time) for a in alerts if a.event_time >= times[0]]


def build(store: TrendStore, current: roles.Roles, tolerance: int, now: float | None = None) -> dict:
    """Everything the comparison says about the current candidate (store: the live keyspace)."""
    now = time.time() if now is None else now
    report = {"roles": {**current.fields(), "epoch": current.epoch}, "candidate": current.candidate}
    if not current.candidate:
        return report
    keyspace = current.candidate_keyspace()
    shadow = TrendStore("", store.settings, client=store.redis, keyspace=keyspace)
    kept = pairs.read_pairs(store.redis, keyspace, [s for s, _ in shadow.streams()])
    rows = [row for stream_rows in kept.values() for row in stream_rows]
    live_marks, candidate_marks = [], []
    for stream, stream_rows in kept.items():
        times = np.sort([row[0] for row in stream_rows])
        live_marks += marks(store.alerts(ALERTS_READ, stream), times)
        candidate_marks += marks(shadow.alerts(ALERTS_READ, stream), times)
    report.update(
        shadowed_s=max(0.0, now - current.candidate_since),
        overall=compare.scores([r[1] for r in rows], [r[2] for r in rows]),
        streams={stream: compare.scores([r[1] for r in rs], [r[2] for r in rs]) for stream, rs in sorted(kept.items())},
        alerts=compare.alerts(live_marks, candidate_marks, tolerance),
        contributions_moved=compare.contributions_moved([r[3] for r in rows], [r[4] for r in rows]),
        histogram=compare.histogram([r[1] for r in rows], [r[2] for r in rows]),
        calls=pairs.read_calls(store.redis, keyspace))
    return report


def text(report: dict, refusals: list[str]) -> str:
    """The report for a terminal."""
    r = report["roles"]
    lines = [f"live version {r.get('live', '(newest served)')}, candidate {report['candidate'] or '(none)'}"
             + (f", rollback to {r['previous']}" if r.get("previous") else "")]
    if not report["candidate"]:
        return lines[0]
    o, a, c = report["overall"], report["alerts"], report["calls"]
    lines.append(f"shadowed {report['shadowed_s']:.0f} s, {o['segments']} segments compared; candidate calls: "
                 f"{c['ok']} ok, {c['error']} failed, {c['timeout']} timed out, {c['skipped']} skipped, "
                 f"{c['not_ready']} before Triton had loaded it"
                 + (f", mean {c['mean_latency_s'] * 1000:.0f} ms" if c["mean_latency_s"] is not None else ""))
    if o["segments"]:
        lines.append(_measures("overall", o))
        lines += [_measures(f"  {stream}", s) for stream, s in report["streams"].items()]
    lines.append(f"alerts: live {a['live']}, candidate {a['candidate']}, matched {a['matched']} "
                 f"(Jaccard {a['jaccard']:.2f})")
    for side, label in (("only_live", "only live:     "), ("only_candidate", "only candidate:")):
        lines += [f"  {label} {m['stream']} {m['direction']} at segment {m['position']}" for m in a[side]]
    if report["contributions_moved"]:
        lines.append("contributions moved: " + ", ".join(f"{side} {v:.3f}" for side, v in
                                                         report["contributions_moved"].items()))
    lines.append("gate: passes" if not refusals else "gate: refuses\n" + "\n".join(f"  - {r}" for r in refusals))
    return "\n".join(lines)


def _measures(name: str, s: dict) -> str:
    corr = "n/a" if s["correlation"] is None else f"{s['correlation']:.3f}"
    return (f"{name}: n={s['segments']} wasserstein={s['wasserstein']:.3f} ks={s['ks']:.3f} psi={s['psi']:.3f} "
            f"mae={s['mae']:.3f} corr={corr} sign={s['sign_agreement']:.3f} 7-class={s['class7_agreement']:.3f} "
            f"mean {s['live_mean']:+.3f} -> {s['candidate_mean']:+.3f}")


def publish_metrics(store: TrendStore, current: roles.Roles, settings) -> dict:
    """The overall divergences and the gate's bounds on them, as gauges (cleared without a
    candidate, so that the rule never fires on a candidate gone)."""
    from stream import metrics
    from stream.shadow.gate import Thresholds, divergences
    metrics.SHADOW_DIVERGENCE.clear()
    report = build(store, current, settings.shadow_alert_tolerance)
    if not current.candidate or not report["overall"]["segments"]:
        return report
    for measure, value in divergences(report).items():
        metrics.SHADOW_DIVERGENCE.labels(measure).set(value)
    for measure, bound in Thresholds.of(settings).limits().items():
        metrics.SHADOW_THRESHOLD.labels(measure).set(bound)
    return report
