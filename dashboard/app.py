"""tecaflow's live dashboard: `tecaflow dashboard` runs it (Streamlit).

It reads Redis through TrendStore's read API and nothing else: a Redis user allowed only read
commands is enough. Live parts reload in place (`st.fragment(run_every=...)`); when Redis is away
a banner says so and the page keeps retrying.

    Overview  every stream: EWMA, recent mean and change (10 minutes, shorter for young
              streams), activity, a sparkline; totals
    Stream    one stream's trend at each kept resolution, its alerts, its last segments
    Alerts    the alert feed, newest first; each opens its stream around its time
    Candidate a candidate model against the live one (docs/shadow.md): distributions side by
              side, per-stream agreement, the alerts only one of them raised (each opens its stream)
"""
from __future__ import annotations

import time
from zoneinfo import ZoneInfo

import redis
import streamlit as st
from redis.exceptions import RedisClusterException

from dashboard import data, views
from stream.config import Settings, redact_url
from stream.store import TrendStore

VIEWS = ("Overview", "Stream", "Alerts", "Candidate")
# RedisClusterException is not a RedisError: a cluster client raises it when no node answers
REDIS_ERRORS = (redis.RedisError, RedisClusterException)


@st.cache_resource
def settings() -> Settings:
    return Settings.from_env()


@st.cache_resource
def trend_store(settings: Settings) -> TrendStore:
    # redis-py reconnects by itself, so one client outlives Redis restarts.
    return TrendStore.of(settings)


def open_stream(stream_id: str, focus: float | None = None) -> None:
    """Ask for the Stream view; applied at the top of the next full run, before its widgets exist."""
    st.session_state["pending_open"] = (stream_id, focus)
    st.session_state["nav"] = st.session_state.get("nav", 0) + 1
    st.rerun()


def apply_pending_navigation() -> None:
    pending = st.session_state.pop("pending_open", None)
    if pending:
        st.session_state["view"], st.session_state["stream"] = "Stream", pending[0]
        st.session_state["focus"] = pending[1]


def guarded(load):
    """Run a Redis read; on failure draw the banner and return None (the next refresh retries)."""
    try:
        return load()
    except REDIS_ERRORS as e:
        views.redis_down(redact_url(settings().redis_url), e, settings().dashboard_refresh_s if live() else None)
        return None


def stream_ids(store: TrendStore) -> list[str] | None:
    """Every stream id for the page's pickers; with Redis down, the banner and a probe that
    reloads the whole page once Redis answers (this part is not inside a refreshing fragment)."""
    ids = guarded(lambda: [s for s, _ in store.streams()])
    if ids is None:
        reload_when_redis_answers(store.ping)
    return ids


def reload_when_redis_answers(probe) -> None:
    """A fragment that reloads the whole page once `probe()` stops failing (the page's other live
    parts need Redis to be drawn at all)."""
    @st.fragment(run_every=every())
    def reload_when_redis_is_back():
        try:
            probe()
        except REDIS_ERRORS:
            return
        st.rerun()
    reload_when_redis_is_back()


def live() -> bool:
    return st.session_state.get("live", True)


def every() -> float | None:
    return settings().dashboard_refresh_s if live() else None


def overview_page(store: TrendStore, tz: ZoneInfo) -> None:
    left, middle, right = st.columns([3, 2, 1])
    query = left.text_input("Search streams", key="query", placeholder="part of a stream id")
    sort = middle.selectbox("Sort by", list(data.SORTS), key="sort")
    page = right.number_input("Page", min_value=1, value=1, step=1, key="page")

    @st.fragment(run_every=every())
    def body():
        now = time.time()
        ov = guarded(lambda: data.load_overview(store, now, query, data.SORTS[sort], int(page),
                                                settings().dashboard_page_size, settings().dashboard_stale_s))
        if ov is None:
            return
        if ov.empty:
            views.empty_store()
            return
        views.overview_totals(ov)
        if ov.pages > 1:
            st.caption(f"page {min(int(page), ov.pages)} of {ov.pages}")
        event = views.overview_table(ov, now, key=f"overview-{st.session_state.get('nav', 0)}")
        if event and event.selection.rows:
            open_stream(ov.rows[event.selection.rows[0]].stream_id)
        views.page_footer(now, tz, live())
    body()


def stream_page(store: TrendStore, tz: ZoneInfo) -> None:
    streams = stream_ids(store)
    if streams is None:
        return
    if not streams:
        views.empty_store()
        return
    chosen = st.session_state.get("stream")
    options = streams if chosen in streams or chosen is None else [chosen, *streams]
    left, right = st.columns([3, 2])
    stream = left.selectbox("Stream", options, key="stream", format_func=views.printable,
                            on_change=lambda: st.session_state.update(focus=None))  # a new stream: whole trend
    kept = tuple(store.settings.resolutions)
    resolution = right.radio("Resolution", kept, key="resolution", horizontal=True,
                             index=min(1, len(kept) - 1), format_func=lambda r: f"{r} s" if r < 60 else f"{r // 60} min")
    focus = st.session_state.get("focus")
    if focus is not None:
        st.text(f"Centred on an alert at {views.clock(focus, tz)}")
        if st.button("Show the whole trend"):
            st.session_state["focus"] = None
            st.rerun()

    @st.fragment(run_every=every())
    def body():
        now = time.time()
        detail = guarded(lambda: data.load_stream(store, stream, resolution, focus=focus))
        if detail is None:
            return
        views.stream_header(detail, now, tz)
        views.stream_trend(detail, tz, finer=max((r for r in kept if r < resolution), default=None))
        views.recent_segments(detail.recent, tz)
        views.page_footer(now, tz, live())
    body()


def alerts_page(store: TrendStore, tz: ZoneInfo) -> None:
    streams = stream_ids(store)
    if streams is None:
        return
    left, right = st.columns([3, 2])
    stream = left.selectbox("Stream", ["(all streams)", *streams], key="alert_stream", format_func=views.printable)
    direction = right.radio("Direction", ("both", "up", "down"), key="alert_direction", horizontal=True)

    @st.fragment(run_every=every())
    def body():
        now = time.time()
        alerts = guarded(lambda: data.load_alerts(store, "" if stream == "(all streams)" else stream,
                                                  "" if direction == "both" else direction))
        if alerts is None:
            return
        views.alerts_feed(alerts, tz, open_stream)
        views.page_footer(now, tz, live())
    body()


def candidate_page(store: TrendStore, tz: ZoneInfo) -> None:
    @st.fragment(run_every=every())
    def body():
        now = time.time()
        view = guarded(lambda: data.load_shadow(store, settings()))
        if view is None:
            return
        views.shadow_page(view, tz, open_stream)
        views.page_footer(now, tz, live())
    body()


def main() -> None:
    st.set_page_config(page_title="tecaflow", page_icon="📈", layout="wide")
    s = settings()
    tz = ZoneInfo(s.timezone)
    store = guarded(lambda: trend_store(s))  # a cluster client connects when made
    if store is None:
        reload_when_redis_answers(lambda: trend_store(s))
        return
    apply_pending_navigation()
    with st.sidebar:
        st.title("tecaflow")
        view = st.radio("View", VIEWS, key="view")
        st.toggle("Live updates", value=True, key="live", help=f"reload every {s.dashboard_refresh_s:g} s")
        st.caption(f"Redis {redact_url(s.redis_url)} (read only)")
        st.caption(f"times in {s.timezone}")
    {"Overview": overview_page, "Stream": stream_page, "Alerts": alerts_page,
     "Candidate": candidate_page}[view](store, tz)


main()
