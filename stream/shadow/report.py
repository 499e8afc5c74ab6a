"""The comparison of the candidate against the live model, as `tecaflow shadow report`, the
dashboard, the gate and the worker's metrics read it: from Redis, rolling (the pairs each stream
keeps), overall and per stream.

What each reads: the report, the dashboard's Candidate view and the gate (`build`) read every kept
pair, both sides' alerts of every stream the candidate scored, and the call counts. The workers'
metrics (`publish_metrics`, every 15 s) need only the overall divergences: they read the pairs and
the call counts, no alerts, and one worker's figures serve every worker until they are 15 s old
(<keyspace>:figures), so that the cost of a tick does not grow with the number of workers."""
from __future__ import annotations

import json
import time

import numpy as np

from stream.schema import Alert
from stream.shadow import compare, pairs, roles
from stream.shadow.gate import Thresholds, divergences
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
    kept = kept_pairs(shadow)
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


def kept_pairs(shadow: TrendStore) -> dict[str, list[list]]:
    return pairs.read_pairs(shadow.redis, shadow.keyspace, [s for s, _ in shadow.streams()])


def figures(store: TrendStore, current: roles.Roles) -> dict:
    """What the metrics publish (the bounded divergences and the segments compared), from the pairs
    and the call counts alone."""
    keyspace = current.candidate_keyspace()
    rows = [row for rs in kept_pairs(TrendStore("", store.settings, client=store.redis, keyspace=keyspace)).values()
            for row in rs]
    overall = compare.scores([r[1] for r in rows], [r[2] for r in rows])
    return {"segments": overall["segments"],
            "divergences": divergences({"overall": overall, "calls": pairs.read_calls(store.redis, keyspace)})}


def shared_figures(store: TrendStore, current: roles.Roles, fresh_s: float) -> dict:
    """figures(), computed by one worker and read by the others until `fresh_s` old."""
    key = pairs.figures_key(current.candidate_keyspace())
    held = store.redis.get(key)
    if held:
        return json.loads(held)
    found = figures(store, current)
    store.redis.set(key, json.dumps(found), px=max(1, int(fresh_s * 1000)))
    return found


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


def publish_metrics(store: TrendStore, current: roles.Roles, settings, fresh_s: float) -> dict:
    """The overall divergences and the gate's bounds on them, as gauges (cleared without a
    candidate, so that the rule never fires on a candidate gone); `fresh_s`: how long one worker's
    figures serve the others (the metrics' tick)."""
    from stream import metrics
    metrics.SHADOW_DIVERGENCE.clear()
    if not current.candidate:
        return {}
    found = shared_figures(store, current, fresh_s)
    if not found["segments"]:
        return found
    for measure, value in found["divergences"].items():
        metrics.SHADOW_DIVERGENCE.labels(measure).set(value)
    for measure, bound in Thresholds.of(settings).limits().items():
        metrics.SHADOW_THRESHOLD.labels(measure).set(bound)
    return found
