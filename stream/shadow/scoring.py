"""A worker's side of shadow scoring: it follows the roles, sends a batch's chosen segments to the
candidate beside the live call, and records the candidate's answers in its own keyspace, in the
order the batches were taken, with its own trends and detector; its alerts are recorded and never
published.

The live path never waits for the candidate: its call runs as a task of its own with its own
timeout, its answers are recorded by a background task after the live batch is acked, and every
failure on its side (preparing, calling, recording) is counted and logged, never raised. A slow
candidate only lets its backlog grow to TECAFLOW_SHADOW_BACKLOG batches; past that, batches are
not shadowed (counted as skipped).
"""
from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import time
from dataclasses import dataclass
from typing import Awaitable, Callable

import numpy as np

from stream import metrics
from stream.config import Settings
from stream.contract import CONTEXT_INPUTS, SCORE, ContractError, ModelContract, Tokenizer
from stream.schema import Segment
from stream.shadow import pairs, roles
from stream.store import ScoredSegment, TrendStore

log = logging.getLogger(__name__)


def chosen(segment_id: str, share: float) -> bool:
    """Whether a segment is in the shadowed share: by its id, so a redelivery is chosen again."""
    if share >= 1.0:
        return True
    return int.from_bytes(hashlib.blake2b(segment_id.encode(), digest_size=8).digest(), "big") < share * 2 ** 64


def check_widths(segments: list[Segment], contract: ModelContract, version: str) -> None:
    """The segments were validated against the live model's widths: a candidate of other widths
    cannot take them (reshaped, frames of one width would silently become frames of another)."""
    unfit = sorted({m for s in segments for m, width in contract.widths.items()
                    if len(s.frames(m)) and s.frames(m).shape[1] != width})
    if unfit:
        raise ContractError(f"candidate version {version} takes {', '.join(f'{m} {contract.widths[m]} wide' for m in unfit)}"
                            f"; the segments carry frames of the live model's widths")


@dataclass
class ShadowCall:
    """A batch's segments sent to the candidate, and the task that waits for its answer."""
    candidate: "object"  # the candidate's Pipeline
    segments: list[Segment]
    inputs: dict[str, np.ndarray]
    answer: asyncio.Future


class Shadow:
    def __init__(self, store: TrendStore, scorer, settings: Settings,
                 candidate_model: Callable[[str, str | None], Awaitable[tuple[ModelContract, Tokenizer]]],
                 candidate_pipeline: Callable[..., object]):
        """`candidate_model(version, model)`: the contract and tokenizer of that version, served by
        that model (slot; None: the scorer's own); `candidate_pipeline(scorer, store, tokenizer,
        contract, version, model)`: a pipeline recording in the given store."""
        self.store, self.scorer, self.settings = store, scorer, settings
        self.candidate_model, self.candidate_pipeline = candidate_model, candidate_pipeline
        self.current = roles.Roles()
        self.candidate = None  # the candidate's pipeline, once built for current.candidate
        # a candidate the roles name that is not shadowed yet: its keyspace, and how its batches are
        # counted ("not_ready": Triton has not loaded it; "error": its contract could not be read)
        self.waiting: tuple[str, str] | None = None
        self._read_at = -math.inf
        self._reading = asyncio.Lock()
        self._pending = 0
        self._queue: asyncio.Queue | None = None
        self._recorder: asyncio.Task | None = None
        self._tally: dict[str, dict[str, float]] = {}  # keyspace -> call counts not yet in Redis

    # ---- the roles ---------------------------------------------------------------------------
    async def roles(self) -> roles.Roles:
        """The roles, read at most every TECAFLOW_ROLES_REFRESH_S (Redis away: the last ones read).
        A batch that starts while another batch reads them waits for that read: it would otherwise
        go on with the roles from before it (an export's first batches neither shadowed nor counted)."""
        async with self._reading:
            if time.monotonic() - self._read_at < self.settings.roles_refresh_s:
                return self.current
            try:
                self.current = await asyncio.to_thread(roles.read, self.store.redis)
            except Exception as e:  # noqa: BLE001 - the live path waits for Redis where it writes
                log.debug("roles not read (%s); keeping %s", e, self.current)
            await self.follow_candidate()
            self._read_at = time.monotonic()
            return self.current

    async def follow_candidate(self) -> None:
        version, model, keyspace = self.current.candidate, self.current.candidate_model, self.current.candidate_keyspace()
        if self.candidate is not None and self.candidate.store.keyspace == keyspace:
            return
        self.candidate = None
        if not version:
            self.waiting = None
            return
        if not await self.loaded(version, model, keyspace):
            return
        try:
            contract, tokenizer = await self.candidate_model(version, model)
        except Exception as e:  # noqa: BLE001 - not shadowed until it can be; the live path goes on
            log.error("candidate version %s cannot be shadowed: %s", version, e)
            self.waiting = (keyspace, "error")  # counted: a candidate nobody can call must not pass the gate
            return
        store = TrendStore("", self.store.settings, client=self.store.redis, keyspace=keyspace)
        self.candidate = self.candidate_pipeline(self.scorer, store, tokenizer, contract, version, model)
        log.warning("shadowing candidate version %s beside live version %s", version, self.current.live)

    async def loaded(self, version: str, model: str | None, keyspace: str) -> bool:
        """Whether Triton answers calls to `version` yet. The roles name a candidate the moment it
        is exported or nominated, and Triton loads it only at its next poll of the repository:
        calls before then would fail and count against the gate. Until it is loaded, batches are
        counted as "not_ready" and not shadowed; the next read of the roles asks again."""
        try:
            ready = await self.scorer.version_ready(version, model)
        except Exception as e:  # noqa: BLE001 - Triton reloading or away: not ready, asked again
            log.debug("is candidate version %s ready? %s", version, e)
            ready = False
        if not ready and self.waiting != (keyspace, "not_ready"):
            log.info("candidate version %s: waiting for Triton to load it before shadowing it", version)
        self.waiting = None if ready else (keyspace, "not_ready")
        return ready

    def context_read(self) -> int:
        """How many previous transcripts the candidate reads (0: none, or no candidate)."""
        return self.candidate.served.contract.context if self.candidate is not None else 0

    # ---- a batch's candidate call ------------------------------------------------------------
    def call(self, segments: list[Segment], previous: dict[str, list[str]] | None = None) -> ShadowCall | None:
        """Start the candidate's call on the batch's chosen segments, prepared for its own
        contract and tokenizer (with context: `previous`, each segment's context as the live
        model read it); None when nothing is shadowed."""
        candidate = self.candidate
        if candidate is None and self.waiting is None:
            return None
        segments = [s for s in segments if chosen(s.segment_id, self.settings.shadow_share)]
        if not segments:
            return None
        if candidate is None:
            self.count(*self.waiting)
            return None
        if self._pending >= self.settings.shadow_backlog:
            self.count(candidate.store.keyspace, "skipped")
            return None
        try:
            check_widths(segments, candidate.served.contract, candidate.served.version)
            inputs = candidate.model_inputs(segments, candidate.served)
            served = candidate.served.contract
            if served.context:
                tokens = candidate.served.tokenizer.context([previous[s.segment_id][-served.context:]
                                                             for s in segments], served.max_context_tokens)
                inputs.update(zip(CONTEXT_INPUTS, tokens))
        except Exception:  # noqa: BLE001 - segments the live model takes and the candidate does not
            log.exception("candidate version %s: a batch could not be prepared for it", candidate.served.version)
            self.count(candidate.store.keyspace, "error")
            return None
        self._pending += 1
        return ShadowCall(candidate, segments, inputs, asyncio.ensure_future(self.ask(candidate, inputs)))

    async def ask(self, candidate, inputs: dict[str, np.ndarray]) -> tuple[str, dict | None, float]:
        started = time.perf_counter()
        try:
            answer = self.scorer.infer(inputs, candidate.served.contract.outputs, candidate.served.version,
                                       model=candidate.served.model)
            outputs = await asyncio.wait_for(answer, self.settings.shadow_timeout_s)
            return "ok", outputs, time.perf_counter() - started
        except asyncio.TimeoutError:
            return "timeout", None, time.perf_counter() - started
        except Exception as e:  # noqa: BLE001 - counted; the live path is not the candidate's to fail
            log.debug("candidate call failed: %s", e)
            return "error", None, time.perf_counter() - started

    def finish(self, call: ShadowCall | None, recorded: list[tuple[Segment, float, ScoredSegment]]) -> None:
        """After the live path recorded the batch (`recorded`: each segment with the score it holds
        and what the live model said of it), its candidate answer is recorded in the background,
        in the order of the batches."""
        if call is None:
            if self._tally:  # calls that failed before they were sent: counted all the same
                self._pending += 1  # until written: a reader that waits for none pending finds them
                asyncio.ensure_future(self.flush_counts_then_done())
            return
        if self._queue is None:
            self._queue = asyncio.Queue()
        if self._recorder is None or self._recorder.done():
            self._recorder = asyncio.ensure_future(self.record_in_order())
        self._queue.put_nowait((call, recorded))

    async def record_in_order(self) -> None:
        while True:
            call, recorded = await self._queue.get()
            try:
                await self.record(call, recorded)
            except Exception:  # noqa: BLE001 - a shadow failure is logged, never the live path's
                log.exception("recording a candidate batch failed")
                self.count(call.candidate.store.keyspace, "error")
            finally:
                await self.flush_counts()  # before the batch stops counting as pending: a reader that
                self._pending -= 1  # waits for none pending then finds its calls counted

    async def record(self, call: ShadowCall, recorded: list[tuple[Segment, float, ScoredSegment]]) -> None:
        outcome, outputs, seconds = await call.answer
        candidate, version = call.candidate, call.candidate.served.version
        self.count(candidate.store.keyspace, outcome, len(call.segments), seconds)
        if outcome != "ok":
            return
        live = {segment.segment_id: (score, item) for segment, score, item in recorded}
        items = candidate.scored(call.segments, outputs[SCORE].reshape(-1).tolist(), outputs, call.inputs,
                                 candidate.served.contract, version)
        items = [i for i in items if i.segment_id in live and all(math.isfinite(v) for v in i.numbers())]
        if not items:
            return
        outcomes = await asyncio.to_thread(candidate.store.record_many, items)
        rows: dict[str, list[list]] = {}
        for item, outcome in zip(items, outcomes):
            if outcome == "new":
                live_score, live_item = live[item.segment_id]
                rows.setdefault(item.stream_id, []).append([item.event_time, live_score, item.score,
                                                            live_item.contributions, item.contributions])
        metrics.ROLE_SCORED.labels("candidate", version).inc(sum(len(r) for r in rows.values()))
        if rows:
            await asyncio.to_thread(pairs.record_pairs, self.store.redis, candidate.store.keyspace, rows,
                                    self.settings.shadow_pairs_kept)
        alerts = await asyncio.to_thread(candidate.detect_streams, list({i.stream_id: None for i in items}))
        if alerts:  # recorded in the candidate's keyspace; its outbox is never published
            await asyncio.to_thread(candidate.store.mark_published, alerts)

    def count(self, keyspace: str, outcome: str, segments: int = 0, seconds: float = 0.0) -> None:
        """A call's outcome, for the candidate (its keyspace) it was for: in the metrics now, in
        Redis (for the report) with the next batch recorded."""
        metrics.SHADOW_CALLS.labels(outcome).inc()
        if outcome == "ok":
            metrics.SHADOW_LATENCY.observe(seconds)
        tally = self._tally.setdefault(keyspace, {})
        for field, value in ((outcome, 1), ("segments", segments), ("seconds", seconds)):
            tally[field] = tally.get(field, 0) + value

    async def flush_counts_then_done(self) -> None:
        try:
            await self.flush_counts()
        finally:
            self._pending -= 1

    async def flush_counts(self) -> None:
        tally, self._tally = self._tally, {}
        try:
            await asyncio.to_thread(pairs.count_calls, self.store.redis, tally)
        except Exception as e:  # noqa: BLE001 - the metrics have them; the report misses these
            log.debug("candidate call counts not written to Redis: %s", e)
