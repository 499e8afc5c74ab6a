"""The dashboard's parts: each takes data (from dashboard.data) and draws it. They never read
Redis themselves, so each can be rendered and checked alone (tests use AppTest on them).

Everything that comes from a stream (ids, transcripts, alert fields) is drawn as plain text:
`st.text`, `st.code` or data frame cells; never markdown labels, never unsafe_allow_html.
"""
from __future__ import annotations

import math
import re
import time
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import altair as alt
import pandas as pd
import streamlit as st

from dashboard.data import WINDOW_S, Overview, ShadowView, StreamDetail, StreamRow, chart_span
from stream.schema import Alert

CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def printable(text: str) -> str:
    """Control and bidi characters shown as escapes, so a hostile id cannot hide or reorder text."""
    return CONTROL.sub(lambda m: f"\\u{ord(m.group()):04x}", str(text))


def clock(t: float, tz: ZoneInfo, with_date: bool = True) -> str:
    return datetime.fromtimestamp(t, tz).strftime("%Y-%m-%d %H:%M:%S %Z" if with_date else "%H:%M:%S %Z")


def age(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 90:
        return f"{seconds:.0f} s ago"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min ago"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h ago"
    return f"{seconds / 86400:.0f} d ago"


def signed(x: float | None, digits: int = 2) -> str:
    return "—" if x is None else f"{x:+.{digits}f}"


def duration(seconds: float) -> str:
    """30 -> '30 s', 600 -> '10 min', 90 -> '1.5 min', 81.37 -> '1.4 min' (a measured time, to a tenth)."""
    return f"{round(seconds, 1):g} s" if seconds < 60 else f"{round(seconds / 60, 1):g} min"


# ---- states of the page ----------------------------------------------------------------------
def redis_down(url: str, error: Exception, retry_s: float | None) -> None:
    again = f"retrying every {retry_s:g} s" if retry_s else "live updates are paused: resume them to retry"
    st.error(f"Redis is not reachable at {url} ({type(error).__name__}: {printable(str(error))[:300]}); {again}. "
             "The page stays up and shows data again as soon as Redis answers.", icon="🔌")


def empty_store() -> None:
    st.info("No streams recorded yet. To see data here, run `make demo` (everything, with a replay), or: "
            "`tecaflow stack up`, `tecaflow worker`, then `tecaflow replay --streams 4 --segments 200`.",
            icon="📭")


# ---- overview ----------------------------------------------------------------------------------
def overview_totals(ov: Overview) -> None:
    stale = sum(r.stale for r in ov.rows)
    cols = st.columns(4)
    cols[0].metric("Streams", ov.total_streams)
    cols[1].metric(f"Segments / min, last {ov.rate_span_s} s", f"{ov.segments_per_minute:.1f}",
                   help=f"all streams, by event time, over the complete {ov.rate_resolution} s buckets of the last "
                        f"minute; when data began during that minute, over the buckets since it began")
    cols[2].metric("Alerts in the last hour", ov.alerts_last_hour)
    cols[3].metric("Stale on this page", stale, help="no update for longer than the stale limit")


def overview_frame(rows: list[StreamRow], now: float) -> pd.DataFrame:
    return pd.DataFrame({
        "stream": [printable(r.stream_id) for r in rows],
        "EWMA": [r.ewma for r in rows],
        "recent mean": [float("nan") if r.mean_window is None else r.mean_window for r in rows],
        "change": [float("nan") if r.change is None else r.change for r in rows],
        "change over": [change_window(r) for r in rows],
        "segments": [r.count for r in rows],
        "updated": [("STALE " if r.stale else "") + age(now - r.last_update) for r in rows],
        "trend": [r.sparkline for r in rows],
    })


def change_window(row: StreamRow) -> str:
    """The windows a row's change compares: 'last 10 min vs 10 min before', or shorter ones for
    a young stream."""
    return f"last {duration(row.window_s)} vs {duration(row.before_s)} before"


def moving_now(rows: list[StreamRow], n: int = 5) -> list[str]:
    """Plain-text lines (searchable, unlike the table's canvas): the streams on the page that
    moved most, each with the windows its change compares, and those with too little data to
    compare two windows."""
    moved = sorted((r for r in rows if r.change is not None), key=lambda r: -abs(r.change))[:n]
    lines = [f"{'▲' if r.change > 0 else '▼'} {printable(r.stream_id)}  {r.change:+.2f}, {change_window(r)}  "
             f"(now {r.mean_window:+.2f}, EWMA {r.ewma:+.2f})" for r in moved]
    new = [printable(r.stream_id) for r in rows if r.change is None]
    if new:
        lines.append(f"No change yet (too little data to compare two windows): {', '.join(new[:20])}"
                     + (f" and {len(new) - 20} more" if len(new) > 20 else ""))
    return lines


def overview_table(ov: Overview, now: float, key: str):
    """The page's streams; returns the selection event (a clicked row opens the stream)."""
    st.caption(f"{ov.matching} of {ov.total_streams} streams match; figures from {ov.resolution} s buckets of "
               f"each stream's event time. The change compares the mean of its last {duration(WINDOW_S)} with the "
               f"{duration(WINDOW_S)} before; for a stream younger than {duration(2 * WINDOW_S)}, the newer half of "
               "its data with the older half (“change over” says which).")
    lines = moving_now(ov.rows)
    if lines:
        st.text("Largest changes on this page:\n" + "\n".join(lines))
    return st.dataframe(
        overview_frame(ov.rows, now), hide_index=True, use_container_width=True, key=key,
        on_select="rerun", selection_mode="single-row",
        column_config={
            "EWMA": st.column_config.NumberColumn(format="%+.2f"),
            "recent mean": st.column_config.NumberColumn(format="%+.2f", help="mean of the newer window"),
            "change": st.column_config.NumberColumn(format="%+.2f", help="recent mean minus the mean of the window "
                                                                        "before it"),
            "trend": st.column_config.LineChartColumn(
                f"last {2 * WINDOW_S // 60} min", help=f"mean of each {ov.resolution} s bucket, each row on its own scale"),
        })


# ---- one stream ----------------------------------------------------------------------------
def stream_header(detail: StreamDetail, now: float, tz: ZoneInfo) -> None:
    st.text(f"Stream {printable(detail.stream_id)}")
    t = detail.totals
    if not t:
        st.warning("Nothing recorded for this stream (its keys may have expired).")
        return
    cols = st.columns(5)
    cols[0].metric("Segments", t["count"])
    cols[1].metric("EWMA", f"{t['ewma']:+.3f}")
    cols[2].metric("Mean", f"{t['mean']:+.3f}")
    cols[3].metric("Std", f"{t['std']:.3f}")
    cols[4].metric("Last score", f"{t['last_score']:+.3f}")
    st.caption(f"last event {clock(t['last_event_time'], tz)}, updated {age(now - t['last_update'])}")
    line = modality_line(t)
    if line:
        st.caption(line)


def modality_line(totals: dict) -> str:
    """How far audio and vision moved this stream's scores from its words alone, and how many of
    its segments lacked them; empty for a store written before modalities were recorded."""
    names = {"audio": "audio", "visual": "vision"}
    parts = [f"{names[side]} moved scores by {signed(v)} on average" for side, v in totals.get("moved", {}).items()
             if v is not None]
    n = totals.get("count") or 0
    parts += [f"{100 * k / n:.0f}% had no {names[side]}" for side, k in totals.get("missing", {}).items() if k and n]
    line = "; ".join(parts)
    return line[:1].upper() + line[1:]


def trend_frame(detail: StreamDetail, tz: ZoneInfo) -> pd.DataFrame:
    b = detail.buckets
    return pd.DataFrame({  # each bucket drawn at its middle: its figures are over all of it
        "time": [naive_local(x["start"] + detail.resolution / 2, tz) for x in b],
        "start": [naive_local(x["start"], tz) for x in b],
        "mean": [x["mean"] for x in b], "ewma": [x["ewma"] for x in b],
        "low": [x["mean"] - x["std"] for x in b], "high": [x["mean"] + x["std"] for x in b],
        "min": [x["min"] for x in b], "max": [x["max"] for x in b], "count": [x["count"] for x in b],
    })


def naive_local(t: float, tz: ZoneInfo) -> datetime:
    """Wall-clock time in `tz` without a zone: Vega-Lite then draws it as given."""
    return datetime.fromtimestamp(t, tz).replace(tzinfo=None)


def vega_time(t: datetime) -> alt.DateTime:
    """A naive wall-clock time as Vega-Lite takes it for a scale domain or a tick (local, as drawn)."""
    return alt.DateTime(year=t.year, month=t.month, date=t.day, hours=t.hour, minutes=t.minute, seconds=t.second)


TICK_STEPS_S = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400)
MAX_TICKS = 8


def time_ticks(lo: float, hi: float, resolution: int, tz: ZoneInfo) -> tuple[list[datetime], str]:
    """Ticks for a time axis over [lo, hi] (unix times) and their label format: at most about
    MAX_TICKS, never closer than one bucket, on round wall-clock times; seconds in the labels
    only when ticks are under a minute apart, the date when the span crosses midnight. So no
    two labels read the same, whatever the span."""
    fitting = [s for s in TICK_STEPS_S if s >= resolution and (hi - lo) / s <= MAX_TICKS]
    step = fitting[0] if fitting else max(resolution, 86400 * math.ceil((hi - lo) / 86400 / MAX_TICKS))
    first, last = naive_local(lo, tz), naive_local(hi, tz)
    midnight = first.replace(hour=0, minute=0, second=0, microsecond=0)
    tick = midnight + timedelta(seconds=step * math.ceil((first - midnight).total_seconds() / step))
    ticks = []
    while tick <= last:
        ticks.append(tick)
        tick += timedelta(seconds=step)
    fmt = "%H:%M:%S" if step % 60 else "%H:%M"
    return ticks, (f"%b %d {fmt}" if first.date() != last.date() else fmt)


def trend_chart(detail: StreamDetail, tz: ZoneInfo) -> alt.LayerChart:
    """Mean per bucket with a ±1 sd band, min/max, the EWMA, and alerts as red rules, over the
    span where the stream has data (around the alert when opened from one)."""
    frame = trend_frame(detail, tz)
    zone = datetime.now(tz).strftime("%Z")
    lo, hi = chart_span(detail)
    ticks, fmt = time_ticks(lo, hi, detail.resolution, tz)
    x = alt.X("time:T", title=f"event time ({zone})",
              axis=alt.Axis(values=[vega_time(t) for t in ticks], format=fmt, labelOverlap=True),
              scale=alt.Scale(domain=[vega_time(naive_local(lo, tz)), vega_time(naive_local(hi, tz))], nice=False))
    y = alt.Scale(domain=[-3, 3])
    when = alt.Tooltip("start:T", format="%Y-%m-%d %H:%M:%S", title="bucket from")
    base = alt.Chart(frame)
    layers = [
        base.mark_area(opacity=0.12, clip=True).encode(x=x, y=alt.Y("min:Q", scale=y, title="score"), y2="max:Q"),
        base.mark_area(opacity=0.3, clip=True).encode(x=x, y=alt.Y("low:Q", scale=y), y2="high:Q"),
        base.mark_line(point=len(frame) < 60, clip=True).encode(
            x=x, y=alt.Y("mean:Q", scale=y), tooltip=[when, alt.Tooltip("mean:Q", format="+.3f"),
                                                      alt.Tooltip("ewma:Q", format="+.3f"), "count:Q"]),
        base.mark_line(strokeDash=[5, 3], color="orange", clip=True).encode(x=x, y=alt.Y("ewma:Q", scale=y)),
    ]
    if detail.alerts:
        marks = pd.DataFrame({"time": [naive_local(a.event_time, tz) for a in detail.alerts],
                              "alert": [f"{a.direction} {signed(a.magnitude)}" for a in detail.alerts]})
        layers.append(alt.Chart(marks).mark_rule(color="red", strokeWidth=2, clip=True).encode(
            x=x, tooltip=[alt.Tooltip("time:T", format="%Y-%m-%d %H:%M:%S", title="alert at"), "alert:N"]))
    return alt.layer(*layers).properties(height=320)


FEW_BUCKETS = 5  # fewer than this and the chart is hardly a trend: point to a finer resolution


def stream_trend(detail: StreamDetail, tz: ZoneInfo, finer: int | None = None) -> None:
    """`finer`: the next finer kept resolution, if any (suggested when there are few buckets)."""
    if not detail.buckets:
        st.info(f"No {detail.resolution} s buckets for this stream yet.")
        return
    st.altair_chart(trend_chart(detail, tz), use_container_width=True)
    st.caption(f"{len(detail.buckets)} buckets of {duration(detail.resolution)}: mean (line), ±1 sd (band), min–max "
               f"(light band), EWMA (dashed), alerts (red).")
    if len(detail.buckets) < FEW_BUCKETS and finer:
        st.caption(f"Only {len(detail.buckets)} buckets at this resolution so far: {duration(finer)} shows more.")


def recent_frame(segments: list[dict], tz: ZoneInfo) -> pd.DataFrame:
    frame = pd.DataFrame({
        "time": [clock(s["event_time"], tz, with_date=False) for s in segments],
        "score": [s["score"] for s in segments],
        "transcript": [printable(s.get("text", "")) for s in segments],
    })
    # Written by the store once the model reports them (modality attribution).
    if any("modalities" in s for s in segments):
        frame["modalities"] = ["+".join(s.get("modalities", [])) for s in segments]
    for side in ("audio", "visual"):
        if any(side in s.get("contributions", {}) for s in segments):
            frame[f"{side} moved it"] = [s.get("contributions", {}).get(side) for s in segments]
    return frame


def recent_segments(segments: list[dict], tz: ZoneInfo) -> None:
    st.text(f"Last {len(segments)} segments, newest first")
    if segments:
        frame = recent_frame(segments, tz)
        st.dataframe(frame, hide_index=True, use_container_width=True, column_config={
            name: st.column_config.NumberColumn(format=SCORE_FORMAT) for name in score_columns(frame)})


SCORE_FORMAT = "%+.3f"  # every score-valued column alike: signed, three decimals


def score_columns(frame: pd.DataFrame) -> list[str]:
    """The columns holding scores or score differences."""
    return [name for name in frame.columns if name == "score" or name.endswith(" moved it")]


# ---- alerts --------------------------------------------------------------------------------
def alert_line(alert: Alert, tz: ZoneInfo) -> str:
    return (f"{clock(alert.event_time, tz)}  {printable(alert.stream_id)}  "
            f"{'▲ up' if alert.direction == 'up' else '▼ down'} by {abs(alert.magnitude):.2f}: "
            f"{signed(alert.reference.get('mean'))} → {signed(alert.recent.get('mean'))}  (z {signed(alert.z, 1)})")


SIDE_NAMES = {"words": "words", "audio": "voice", "visual": "face"}


def drivers_line(alert: Alert) -> str:
    """What moved, in one line (empty for an alert recorded before alerts carried drivers)."""
    d = alert.drivers
    parts = []
    if d.get("terms"):
        parts.append("about " + ", ".join(printable(t["term"]) for t in d["terms"][:5]))
    if d.get("modalities"):
        change = d["modalities"]["change"]
        parts.append("moved: " + ", ".join(f"{SIDE_NAMES.get(name, name)} {signed(v)}" for name, v in change.items())
                     + f" (most: {SIDE_NAMES.get(d['modalities']['moved_most'], d['modalities']['moved_most'])})")
    return " · ".join(parts)


def driver_segments_frame(alert: Alert, tz: ZoneInfo) -> pd.DataFrame:
    """The segments that pushed the alert hardest, as a table."""
    segments = alert.drivers.get("segments", [])
    return pd.DataFrame({"time": [clock(s["event_time"], tz, with_date=False) for s in segments],
                         "score": [s["score"] for s in segments],
                         "segment": [printable(s["segment_id"]) for s in segments],
                         "transcript": [printable(s["text"]) for s in segments]})


def driver_terms_frame(alert: Alert) -> pd.DataFrame:
    """Terms over-represented since the change point (Fightin' Words z, counts in and before)."""
    terms = alert.drivers.get("terms", [])
    return pd.DataFrame({"term": [printable(t["term"]) for t in terms], "z": [t["z"] for t in terms],
                         "since the change": [t["window"] for t in terms], "before": [t["reference"] for t in terms]})


def alert_drivers(alert: Alert, tz: ZoneInfo) -> None:
    if not alert.drivers:
        return
    line = drivers_line(alert)
    if line:
        st.text(line)
    with st.expander("what moved"):
        if alert.drivers.get("segments"):
            st.dataframe(driver_segments_frame(alert, tz), hide_index=True, use_container_width=True,
                         column_config={"score": st.column_config.NumberColumn(format=SCORE_FORMAT)})
        if alert.drivers.get("terms"):
            st.dataframe(driver_terms_frame(alert), hide_index=True, use_container_width=True)


def alerts_feed(alerts: list[Alert], tz: ZoneInfo, on_open) -> None:
    """Newest first. `on_open(stream_id, event_time)` is called when one is opened."""
    if not alerts:
        st.info("No alerts match.")
        return
    for alert in alerts:
        with st.container(border=True):
            left, right = st.columns([6, 1])
            left.text(alert_line(alert, tz))
            with left:
                alert_drivers(alert, tz)
            if right.button("open", key=f"open-{alert.stream_id}-{alert.id or alert.event_time}",
                            help="show this stream around the alert"):
                on_open(alert.stream_id, alert.event_time)


def page_footer(now: float, tz: ZoneInfo, live: bool) -> None:
    st.caption(f"data as of {clock(now, tz)}" + ("" if live else " (paused)")
               + f" · loaded in {(time.time() - now) * 1000:.0f} ms")


# ---- candidate against live (docs/shadow.md) -----------------------------------------------
AGREEMENT_COLUMNS = {"segments": "segments", "mae": "MAE", "correlation": "corr", "sign_agreement": "sign agreement",
                     "class7_agreement": "7-class agreement", "wasserstein": "Wasserstein", "ks": "KS", "psi": "PSI"}


def shadow_header(view: ShadowView) -> None:
    r = view.report
    roles = r["roles"]
    st.subheader(f"Candidate {r['candidate']} against live {roles.get('live')}")
    o, calls = r["overall"], r["calls"]
    cols = st.columns(5)
    cols[0].metric("Compared segments", f"{o['segments']}")
    cols[1].metric("Shadowed", duration(r["shadowed_s"]))
    cols[2].metric("MAE", f"{o['mae']:.3f}" if o["segments"] else "–")
    cols[3].metric("Wasserstein", f"{o['wasserstein']:.3f}" if o["segments"] else "–")
    failed = calls["error"] + calls["timeout"]
    cols[4].metric("Failed calls", f"{failed} of {calls['ok'] + failed}")
    if view.refusals:
        st.warning("The gate would refuse a promotion now:\n" + "\n".join(f"- {reason}" for reason in view.refusals))
    else:
        st.success("The gate would let `tecaflow promote` make it live.")


def distribution_chart(histogram: dict) -> alt.Chart:
    edges = histogram["edges"]
    rows = [{"score": (edges[i] + edges[i + 1]) / 2, "share": share, "model": model}
            for model in ("live", "candidate") for i, share in enumerate(histogram[model])]
    # overlaid, not stacked: each model's bars are its own share (a binned axis has no band to offset in)
    return alt.Chart(pd.DataFrame(rows)).mark_bar(opacity=0.55, binSpacing=0).encode(
        x=alt.X("score:Q", bin=alt.Bin(extent=[edges[0], edges[-1]], step=edges[1] - edges[0]), title="score"),
        y=alt.Y("share:Q", stack=None, title="share of segments", axis=alt.Axis(format="%")),
        color=alt.Color("model:N", sort=["live", "candidate"]))


def agreement_frame(streams: dict[str, dict]) -> pd.DataFrame:
    rows = [{"stream": printable(stream), **{label: s.get(key) for key, label in AGREEMENT_COLUMNS.items()}}
            for stream, s in streams.items() if s.get("segments")]
    return pd.DataFrame(rows, columns=["stream", *AGREEMENT_COLUMNS.values()])


def alert_disagreements(alerts: dict, tz: ZoneInfo, on_open) -> None:
    """Each alert one model raised and the other did not within the tolerance; each opens its stream."""
    st.text(f"alerts: live {alerts['live']}, candidate {alerts['candidate']}, matched {alerts['matched']} "
            f"(Jaccard {alerts['jaccard']:.2f})")
    for side in ("only_live", "only_candidate"):
        for mark in alerts[side]:
            with st.container(border=True):
                left, right = st.columns([6, 1])
                when = clock(mark["event_time"], tz) if mark.get("event_time") else "?"
                left.text(f"{'live only' if side == 'only_live' else 'candidate only'}: {printable(mark['stream'])} "
                          f"{mark['direction']} at segment {mark['position']} ({when})")
                if right.button("open", key=f"open-{side}-{mark['stream']}-{mark['position']}",
                                help="show this stream around the alert"):
                    on_open(mark["stream"], mark.get("event_time"))


def shadow_page(view: ShadowView, tz: ZoneInfo, on_open) -> None:
    if not view.candidate:
        live = view.report["roles"].get("live")
        st.info(f"No candidate is shadowing{f' live version {live}' if live else ''}: "
                "`tecaflow export --candidate` exports one.")
        return
    shadow_header(view)
    if not view.report["overall"]["segments"]:
        st.info("The candidate has not scored any segment yet.")
        return
    left, right = st.columns(2)
    left.altair_chart(distribution_chart(view.report["histogram"]), use_container_width=True)
    frame = agreement_frame(view.report["streams"])
    right.dataframe(frame, hide_index=True, use_container_width=True)
    right.text("streams: " + ", ".join(frame["stream"]))  # the canvas is not searchable text
    alert_disagreements(view.report["alerts"], tz, on_open)
