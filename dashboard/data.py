"""What the dashboard shows, computed from the TrendStore read API. No Streamlit in here, so
every number on the page can be tested against Redis without a browser.

The overview reads Redis in a fixed number of pipelined round trips, so it stays fast with
thousands of streams: sorted by activity it reads only the page's streams (the index is in that
order already); sorted by change or level it needs every matching stream's figures.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from stream.schema import Alert
from stream.store import TrendStore

WINDOW_S = 600  # "the last 10 minutes", and the window before it for the change
RATE_SPAN_S = 60  # segments per minute are counted over the last minute of complete buckets
RATE_BUCKETS = 6  # ... of a resolution fine enough to give at least this many in that minute
SORTS = {"recent activity": "recent", "largest change": "change", "most negative": "negative"}
DIRECTIONS = ("up", "down")
FOCUS_BUCKETS = 60  # an alert opens its stream on at most this many buckets around it


@dataclass(frozen=True)
class StreamRow:
    stream_id: str
    count: int
    ewma: float
    mean_window: float | None  # mean over the recent window (window_s) of the stream's event time
    change: float | None  # mean_window minus the mean of the window before it (before_s)
    last_update: float  # wall clock of the last write
    last_event_time: float
    stale: bool
    sparkline: list[float]  # bucket means over the two windows, oldest first
    window_s: int  # the recent window: WINDOW_S, or the newer half of a young stream's data
    before_s: int  # the window before it: WINDOW_S, or the older half


@dataclass(frozen=True)
class Overview:
    rows: list[StreamRow]  # this page's rows, sorted
    matching: int  # streams that match the search
    total_streams: int
    segments_per_minute: float  # event time, all streams, over rate_span_s (see rate_over_data)
    rate_span_s: int  # the seconds of event time it is over
    rate_resolution: int  # the bucket size it comes from
    alerts_last_hour: int
    resolution: int  # the bucket size the figures come from
    pages: int = 1

    @property
    def empty(self) -> bool:
        return self.total_streams == 0


@dataclass(frozen=True)
class StreamDetail:
    stream_id: str
    totals: dict
    resolution: int
    buckets: list[dict]  # oldest first, each with "ewma" added
    recent: list[dict]
    alerts: list[Alert]
    focus: float | None = None  # an event time to centre on (an alert's)


def fitting_resolution(resolutions: tuple[int, ...], span_s: int, buckets: int) -> int:
    """The coarsest kept resolution that still gives at least `buckets` buckets over `span_s`
    (the finest kept one when none does)."""
    fitting = [r for r in resolutions if r <= span_s / buckets]
    return max(fitting) if fitting else min(resolutions)


def overview_resolution(resolutions: tuple[int, ...]) -> int:
    """At least 5 buckets per window (60 s by default)."""
    return fitting_resolution(resolutions, WINDOW_S, 5)


def rate_resolution(resolutions: tuple[int, ...]) -> int:
    """At least RATE_BUCKETS buckets over RATE_SPAN_S (10 s by default)."""
    return fitting_resolution(resolutions, RATE_SPAN_S, RATE_BUCKETS)


def window_starts(last_event_time: float, resolution: int) -> list[int]:
    """Starts of the buckets of the two windows that end with the stream's newest bucket, oldest first."""
    newest = math.floor(last_event_time / resolution) * resolution
    n = 2 * WINDOW_S // resolution
    return [newest - k * resolution for k in range(n - 1, -1, -1)]


@dataclass(frozen=True)
class Windows:
    mean: float | None  # over the recent window
    before: float | None  # over the window before it
    window_s: int  # the recent window's length
    before_s: int  # the earlier window's length


def window_means(sums: dict[int, tuple[int, float]], last_event_time: float, resolution: int,
                 count: int | None = None) -> Windows:
    """The means of the recent window and of the one before it, from the (count, sum) of
    buckets by start. Both windows are WINDOW_S long, except for a young stream (`count`, its
    total, all inside the two windows, which do not reach back to its first bucket): then the
    recent window is the newer half of its buckets and the one before it the older half, so a
    stream has a change as soon as its data spans two buckets."""
    newest = math.floor(last_event_time / resolution) * resolution
    full = WINDOW_S // resolution
    by_age = {(newest - start) // resolution: c_s for start, c_s in sums.items()
              if 0 <= newest - start < 2 * WINDOW_S}
    spanned = max(by_age, default=-1) + 1  # buckets from the oldest one with data to the newest
    young = count is not None and count <= sum(c for c, _ in by_age.values()) and spanned < 2 * full
    recent, older = (max(1, spanned // 2), spanned) if young else (full, 2 * full)

    def mean(ages: range) -> float | None:
        n = sum(by_age[k][0] for k in ages if k in by_age)
        return sum(by_age[k][1] for k in ages if k in by_age) / n if n else None

    return Windows(mean(range(recent)), mean(range(recent, older)), recent * resolution,
                   max(1, older - recent) * resolution)


def stream_row(stream: str, totals: dict, sums: dict[int, tuple[int, float]], resolution: int, now: float,
               stale_after_s: float) -> StreamRow | None:
    if not totals:  # listed in the index but its keys are gone (expired or being written)
        return None
    w = window_means(sums, totals["last_event_time"], resolution, totals["count"])
    change = w.mean - w.before if w.mean is not None and w.before is not None else None
    return StreamRow(stream_id=stream, count=totals["count"], ewma=totals["ewma"], mean_window=w.mean, change=change,
                     last_update=totals["last_update"], last_event_time=totals["last_event_time"],
                     stale=now - totals["last_update"] > stale_after_s,
                     sparkline=[total / count for _, (count, total) in sorted(sums.items())],
                     window_s=w.window_s, before_s=w.before_s)


def sort_rows(rows: list[StreamRow], sort: str) -> list[StreamRow]:
    if sort == "change":  # biggest moves first; streams without a previous window last
        return sorted(rows, key=lambda r: (r.change is None, -abs(r.change or 0.0), r.stream_id))
    if sort == "negative":
        return sorted(rows, key=lambda r: (r.ewma, r.stream_id))
    if sort == "recent":
        return sorted(rows, key=lambda r: (-r.last_update, r.stream_id))
    raise ValueError(f"unknown sort {sort!r}: use one of {sorted(SORTS.values())}")


def rate_starts(now: float, resolution: int) -> list[int]:
    """Starts of the complete buckets covering the last RATE_SPAN_S before `now` (at least RATE_BUCKETS)."""
    end = math.floor(now / resolution) * resolution
    return [end - resolution * k for k in range(max(RATE_BUCKETS, RATE_SPAN_S // resolution), 0, -1)]


def rate_over_data(counts: list[int], resolution: int) -> tuple[float, int]:
    """(segments per minute, the seconds it is over) from the counts of consecutive complete
    buckets, oldest first. Empty buckets before the first with data are left out (the data
    began later), and so is that first bucket, which holds only the part of its span after
    the data began; the whole window counts when data is there from its first bucket."""
    first = next((i for i, c in enumerate(counts) if c), 0)
    if 0 < first < len(counts) - 1:
        first += 1
    span = (len(counts) - first) * resolution
    return 60 * sum(counts[first:]) / span, span


def load_overview(store: TrendStore, now: float, query: str = "", sort: str = "recent", page: int = 1,
                  page_size: int = 50, stale_after_s: float = 300.0) -> Overview:
    """Five round trips whatever the number of streams: the index; the totals of the streams the
    sort needs (the page's for `recent`, every match's otherwise); the buckets of the two windows
    of the streams shown (of every match for `change`); the fine buckets of the last minute of
    every lately active stream (for the rate); the alert count."""
    if sort not in SORTS.values():
        raise ValueError(f"unknown sort {sort!r}: use one of {sorted(SORTS.values())}")
    resolution = overview_resolution(store.settings.resolutions)
    index = store.streams()  # most recent activity first
    needle = query.strip().lower()
    matching = [s for s, _ in index if needle in s.lower()]
    pages = max(1, math.ceil(len(matching) / page_size))
    page = min(max(1, page), pages)
    on_page = slice((page - 1) * page_size, page * page_size)
    if sort == "recent":  # the index is in this order already: read only the page
        shown = matching[on_page]
        totals = store.totals_many(shown)
    else:
        totals = store.totals_many(matching)
        shown = matching if sort == "change" else sorted((s for s in matching if totals[s]),
                                                         key=lambda s: (totals[s]["ewma"], s))[on_page]

    wanted = {s: window_starts(totals[s]["last_event_time"], resolution) for s in shown if totals[s]}
    sums = store.bucket_sums(wanted, resolution)
    fine = rate_resolution(store.settings.resolutions)
    rate = rate_starts(now, fine)
    in_rate = store.bucket_sums({s: rate for s, active in index if active >= rate[0]}, fine)
    per_minute, rate_span = rate_over_data([sum(found.get(start, (0, 0.0))[0] for found in in_rate.values())
                                            for start in rate], fine)

    rows = [row for s in shown if (row := stream_row(s, totals[s], sums.get(s, {}), resolution, now,
                                                     stale_after_s)) is not None]
    rows = sort_rows(rows, sort)
    return Overview(rows=rows[on_page] if sort == "change" else rows, matching=len(matching),
                    total_streams=len(index), segments_per_minute=per_minute,
                    alerts_last_hour=store.alerts_since(now - 3600, index), resolution=resolution, pages=pages,
                    rate_span_s=rate_span, rate_resolution=fine)


def with_ewma(buckets: list[dict], alpha: float) -> list[dict]:
    """Each bucket with the EWMA of the scores up to its end. The store keeps only the latest
    segment-level EWMA, so a bucket of n scores with mean m moves it as n equal scores m would:
    e <- (1-alpha)^n e + (1 - (1-alpha)^n) m."""
    out, e = [], None
    for b in buckets:
        keep = (1 - alpha) ** b["count"]
        e = b["mean"] if e is None else keep * e + (1 - keep) * b["mean"]
        out.append({**b, "ewma": e})
    return out


def load_stream(store: TrendStore, stream: str, resolution: int, recent: int = 20, alerts: int = 50,
                focus: float | None = None) -> StreamDetail:
    if resolution not in store.settings.resolutions:
        raise ValueError(f"resolution {resolution}s is not kept; the store keeps {store.settings.resolutions}")
    return StreamDetail(stream_id=stream, totals=store.totals(stream), resolution=resolution,
                        buckets=with_ewma(store.buckets(stream, resolution), store.settings.ewma_alpha),
                        recent=store.recent(stream, recent), alerts=store.alerts(alerts, stream), focus=focus)


def chart_span(detail: StreamDetail) -> tuple[float, float] | None:
    """The event-time span the trend chart shows: from its first bucket's start to its last
    bucket's end; opened from an alert, FOCUS_BUCKETS buckets centred on it, clipped to that
    span (a young stream fills the chart instead of a sliver of it) but always showing the
    alert. None without buckets."""
    if not detail.buckets:
        return None
    lo, hi = detail.buckets[0]["start"], detail.buckets[-1]["start"] + detail.resolution
    if detail.focus is None:
        return lo, hi
    half = FOCUS_BUCKETS // 2 * detail.resolution
    return min(max(lo, detail.focus - half), detail.focus), max(min(hi, detail.focus + half), detail.focus)


def load_alerts(store: TrendStore, stream: str = "", direction: str = "", count: int = 50) -> list[Alert]:
    """Newest first; `stream` is an exact stream id, `direction` 'up' or 'down' (empty: all)."""
    if direction and direction not in DIRECTIONS:
        raise ValueError(f"direction {direction!r}: use up or down")
    alerts = store.alerts(count if not direction else 4 * count, stream or None)
    return [a for a in alerts if not direction or a.direction == direction][:count]


@dataclass(frozen=True)
class ShadowView:
    report: dict  # stream/shadow/report.py build(): roles, comparison overall and per stream, alerts, calls
    refusals: list[str]  # why the gate would refuse a promotion now (empty: it passes)

    @property
    def candidate(self) -> str | None:
        return self.report.get("candidate")


def load_shadow(store: TrendStore, settings) -> ShadowView:
    """The candidate against the live model, as `tecaflow shadow report` computes it."""
    from stream.shadow import gate, roles
    from stream.shadow.report import build
    report = build(store, roles.read(store.redis), settings.shadow_alert_tolerance)
    return ShadowView(report, gate.refusals(report, gate.Thresholds.of(settings)) if report["candidate"] else [])
