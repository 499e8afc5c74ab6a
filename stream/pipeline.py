"""What a worker does with one micro-batch of raw segment messages, with no Faust in it.

    decode + validate  -> rejects (reason, original bytes) for the dead-letter topic
    tokenize, pad      -> one async gRPC call to Triton for the whole batch (a model with context:
                          after one read of the streams' context windows, stream/context.py)
    record in Redis    -> idempotent per segment_id (Lua); conflicts become rejects
    detect shifts      -> alerts for the streams the batch touched

Triton and Redis failures are retried with capped exponential backoff for as long as it takes:
the agent stays inside this call, so it pulls no new work and commits no offsets meanwhile, and
the process stays up. Input problems never raise.

The worker calls the model version it took its contract and tokenizer from. When Triton serves
another (a new export, loaded while the worker runs), the call to the old one fails; the worker
then takes the new version's contract and tokenizer, prepares the batch again for it (segments
it no longer accepts go to the DLQ) and calls it: never a graph with another's tokenizer.
"""
from __future__ import annotations

import base64
import hashlib
import json
import logging
import math
import time
from dataclasses import dataclass, field, replace
from typing import Awaitable, Callable

import numpy as np

from stream import context, metrics
from stream.alerts import detector, drivers, noise
from stream.config import DetectorParams, Settings
from stream.contract import CONTEXT_INPUTS, PRESENT, SCORE, ModelContract, Tokenizer
from stream.errors import UserError
from stream.retry import Backoff, retry_forever
from stream.schema import Alert, Limits, Rejected, Score, Segment, decode_segment
from stream.store import ScoredSegment

log = logging.getLogger(__name__)


DLQ_KEEP_BYTES = Settings.dlq_keep_bytes  # the default of TECAFLOW_DLQ_KEEP_BYTES, for callers without settings
# The pooled autocorrelation prior is a property of the deployment, not of a batch: read again
# once a minute, from the streams heard from within a day (those that ended drop out).
RHO_PRIOR_REFRESH_S = 60.0
RHO_PRIOR_MAX_AGE_S = 86400.0


@dataclass
class Reject:
    reason: str
    detail: str
    raw: bytes

    def headers(self) -> dict[str, bytes]:
        return {"tecaflow-reason": self.reason.encode(), "tecaflow-detail": self.detail.encode()[:1000]}

    def message(self, keep_bytes: int = DLQ_KEEP_BYTES) -> bytes:
        """DLQ value: the reason, the detail and the original bytes (base64), as JSON. An original
        over `keep_bytes` keeps only its first `keep_bytes`, with the length and sha256 of the
        whole, so that the record always fits the producer's limit and still identifies it."""
        raw = self.raw or b""
        body = {"reason": self.reason, "detail": self.detail[:1000],
                "original": base64.b64encode(raw[:keep_bytes]).decode()}
        if len(raw) > keep_bytes:
            body.update(truncated=True, original_length=len(raw), original_sha256=hashlib.sha256(raw).hexdigest())
        return json.dumps(body).encode()


@dataclass
class BatchResult:
    scores: list[Score] = field(default_factory=list)  # for the `scores` topic
    rejects: list[Reject] = field(default_factory=list)  # for the dead-letter topic
    alerts: list[Alert] = field(default_factory=list)  # for the `alerts` topic and the webhook
    duplicates: int = 0


@dataclass(frozen=True)
class Served:
    """The model version a batch is prepared for: its contract, its tokenizer, and the limits
    messages are validated against (None: whatever Triton serves), and the model serving it."""
    version: str | None
    contract: ModelContract
    tokenizer: Tokenizer
    limits: Limits
    model: str | None = None  # the Triton model (slot) serving it; None: the scorer's own


@dataclass
class Prepared:
    """A batch between its stages: the outcomes so far, the valid segments and their model inputs
    for the served model they were prepared for."""
    result: BatchResult
    served: Served
    good: list[tuple[Segment, bytes]] = field(default_factory=list)
    inputs: dict[str, np.ndarray] | None = None
    taken: list[context.Taken] = field(default_factory=list)  # its segments, as context sees them
    earlier: dict[str, list[context.Taken]] = field(default_factory=dict)  # per stream: taken before it, unrecorded
    previous: dict[str, list[str]] = field(default_factory=dict)  # segment_id -> its context (k > 0 only)
    shadow: object | None = None  # the candidate's call on the batch (stream/shadow/scoring.py)
    recorded: list = field(default_factory=list)  # (segment, score, ScoredSegment) the live path recorded

    def context_added(self) -> bool:
        """Whether add_context has been here since the batch was last prepared: a model with
        context has its context inputs (prepare_again, after a switch of model, drops them); for
        one without, only a candidate reads context, and batch.previous holds it."""
        if self.served.contract.context:
            return CONTEXT_INPUTS[0] in self.inputs
        return bool(self.previous)


class Pipeline:
    shadow = None  # the roles and the candidate beside the live model (stream/shadow/scoring.py), if any
    role = "live"

    def __init__(self, scorer, store, tokenizer: Tokenizer, contract: ModelContract, detector_params: DetectorParams,
                 max_text_chars: int = 2000, max_future_s: float = 300.0, backoff: Callable[[], Backoff] = Backoff,
                 version: str | None = None, model_for: Callable | None = None, shadow=None, role: str = "live",
                 model: str | None = None):
        """`version`: the model version `contract` and `tokenizer` are for, served by `model` (a
        slot: stream/contract.py; None: the scorer's own); `model_for(version, model)` returns
        (contract, tokenizer) of another one Triton serves (None: the worker never follows a new
        version). `shadow` (stream/shadow/scoring.py): the roles, which name the live
        version, and the candidate scored beside it; `role`: "candidate" for the shadow's own
        pipeline, whose alerts are counted apart."""
        self.scorer, self.store = scorer, store
        self.backoff = backoff
        self.detector_params = detector_params
        self.max_text_chars, self.max_future_s = max_text_chars, max_future_s
        self.model_for = model_for
        self.shadow, self.role = shadow, role
        self.served = self.serving(version, contract, tokenizer, model)
        # per stream, the segments taken and not recorded yet, in partition order: the context of
        # a later segment counts them (stream/context.py)
        self.unrecorded: dict[str, list[context.Taken]] = {}
        self._rho_prior, self._rho_prior_read_at = None, -math.inf

    def serving(self, version: str | None, contract: ModelContract, tokenizer: Tokenizer,
                model: str | None = None) -> Served:
        return Served(version, contract, tokenizer, Limits(widths=dict(contract.widths), max_frames=contract.max_frames,
                                                           max_text_chars=self.max_text_chars,
                                                           max_future_s=self.max_future_s), model)

    @property
    def contract(self) -> ModelContract:
        return self.served.contract

    async def follow_served_model(self) -> bool:
        """After a failed call: if Triton now serves another version, take its contract and
        tokenizer (batches prepared for the old one are prepared again before their next call)."""
        if self.model_for is None:
            return False
        try:
            model, version = await self.live_version()
        except Exception:  # noqa: BLE001 - Triton away: the call is retried, and this asked again
            return False
        if version is None:
            return False
        try:
            contract, tokenizer = await self.model_for(version, model)
        except UserError as e:  # waiting is all the worker can do: an operator must fix the export
            log.error("Triton now serves version %s, which this worker cannot use: %s", version, e)
            return False
        except Exception:  # noqa: BLE001 - Triton went away meanwhile: as above
            return False
        if (model, version, contract) == (self.served.model, self.served.version, self.served.contract):
            return False  # the same model: the call failed for another reason, and is retried
        old, self.served = self.served, self.serving(version, contract, tokenizer, model)
        log.warning("Triton now serves version %s of the model (was %s): taking its contract%s and tokenizer",
                    version, old.version, "" if contract == old.contract else " (changed)")
        return True

    async def live_version(self) -> tuple[str | None, str | None]:
        """The model and version the roles name live, where Triton serves it; else the newest the
        model serves but the candidate (a plain export replaced the live one while Redis was away),
        or without roles the newest the scorer's own model serves (model None). Never the
        candidate: while Triton reloads a model after its config changed, its metadata may list
        the candidate alone, and the live path must not adopt the candidate for that."""
        current = await self.shadow.roles() if self.shadow is not None else None
        if current is None or current.live is None:
            return None, await self.scorer.served_version()
        ready = await self.scorer.served_versions(current.live_model)
        if current.live in ready:
            return current.live_model, current.live
        others = [v for v in ready if v != current.candidate]  # versions are numbered across both slots
        return current.live_model, others[-1] if others else current.live

    def decode(self, raws: list[bytes], result: BatchResult) -> list[tuple[Segment, bytes]]:
        """Valid segments; rejects go to `result` (decode_segment raises nothing but Rejected, so
        one message can only reject itself). Repeated segment_ids (in this batch or earlier) are
        the store's to judge: its script is applied in order, one segment at a time."""
        good = []
        for raw in raws:
            try:
                good.append((decode_segment(raw, self.served.limits), raw))
            except Rejected as e:
                result.rejects.append(Reject(e.reason, e.detail, raw if isinstance(raw, bytes) else b""))
        return good

    def model_inputs(self, segments: list[Segment], served: Served) -> dict[str, np.ndarray]:
        input_ids, attention_mask = served.tokenizer([s.text for s in segments])
        frames = {m: [s.frames(m) for s in segments] for m in served.contract.widths}
        return served.contract.batch(input_ids, attention_mask, frames)

    def scored(self, segments: list[Segment], scores: list[float], outputs: dict, inputs: dict,
               contract: ModelContract, version: str | None = None) -> list[ScoredSegment]:
        """What the store records of each segment: its score, the sides it lacked, and what each
        side it had moved the score, where the model says."""
        attributions = contract.attributions(outputs, inputs.get(PRESENT)) or [(None, None)] * len(segments)
        return [ScoredSegment(seg.stream_id, seg.segment_id, seg.digest, seg.event_time, score, seg.text, seg.missing,
                              text_only, moved, version)
                for seg, score, (text_only, moved) in zip(segments, scores, attributions)]

    # ---- the order of a batch's stages: start (prepare, then Triton), finish (record) ----------
    async def process(self, raws: list[bytes]) -> BatchResult:
        """One batch through every stage, start to end: the agent's order without its overlap
        (the tests and the naive consumer of `tecaflow bench pipeline`)."""
        metrics.IN_FLIGHT.inc(len(raws))
        try:
            return await self.finish(self.start(raws))
        finally:
            metrics.IN_FLIGHT.dec(len(raws))

    def start(self, raws: list[bytes]) -> Awaitable[tuple["Prepared", dict[str, np.ndarray]]]:
        """The stages that may overlap other batches. Decode and tokenize now, while the agent may
        still wait for a free Triton call, so that the call starts the moment one is free (preparing
        after the wait left the instances idle meanwhile: fp32 e2e was 0.88-0.91x Triton alone, now
        0.92-0.93x); the returned awaitable calls Triton. A bug in preparing surfaces where a failed
        call does: when it is awaited."""
        try:
            batch = self.prepare(raws)
        except Exception as e:  # noqa: BLE001 - handed on to the awaiter, as a failed Triton call is
            return _raise(e)
        return self.score_prepared(batch)

    async def finish(self, scoring: Awaitable[tuple["Prepared", dict[str, np.ndarray]]]) -> BatchResult:
        """The stage that must follow in the order the batches were taken: record."""
        batch, outputs = await scoring
        try:
            return await self.record(batch, outputs)
        finally:
            if self.shadow is not None:  # what the candidate's answer is compared with
                self.shadow.finish(batch.shadow, batch.recorded)

    async def score_prepared(self, batch: "Prepared") -> tuple["Prepared", dict[str, np.ndarray]]:
        try:
            if self.shadow is not None:
                await self.start_shadow(batch)
            return batch, await self.infer(batch)
        except BaseException:  # cancelled (a rebalance, a shutdown): it will not be recorded here
            self.release(batch)
            raise

    async def start_shadow(self, batch: "Prepared") -> None:
        if (await self.shadow.roles()).live not in (None, self.served.version):
            await self.follow_served_model()  # a promotion or rollback: the next call is the new live one's
            if batch.served is not self.served:
                self.prepare_again(batch)
        # the candidate reads the same previous transcripts as the live model
        await self.add_context(batch, self.shadow.context_read())
        batch.shadow = self.shadow.call([s for s, _ in batch.good], batch.previous)

    # ---- the stages of a batch: prepare (CPU), infer (Triton), record (Redis, detection) -------
    def prepare(self, raws: list[bytes]) -> "Prepared":
        """Decode, validate, tokenize and pad: CPU work on the event loop, no I/O."""
        metrics.CONSUMED.inc(len(raws))
        batch = Prepared(BatchResult(), self.served)
        with metrics.STAGE_SECONDS.labels("decode").time():
            batch.good = self.decode(raws, batch.result)
        if batch.good:
            with metrics.STAGE_SECONDS.labels("tokenize").time():
                batch.inputs = self.model_inputs([s for s, _ in batch.good], batch.served)
        self.take(batch)
        return batch

    def take(self, batch: "Prepared") -> None:
        """The batch's segments join the unrecorded ones; it keeps those taken before it."""
        batch.taken = [context.Taken(s.stream_id, s.segment_id, s.event_time, s.text) for s, _ in batch.good]
        for stream in dict.fromkeys(t.stream_id for t in batch.taken):
            batch.earlier[stream] = list(self.unrecorded.get(stream, ()))
        for t in batch.taken:
            self.unrecorded.setdefault(t.stream_id, []).append(t)

    def release(self, batch: "Prepared") -> None:
        """The batch is recorded (or refused): its segments are the store's to tell from now on."""
        mine = {id(t) for t in batch.taken}
        for stream in dict.fromkeys(t.stream_id for t in batch.taken):
            left = [t for t in self.unrecorded.get(stream, ()) if id(t) not in mine]
            if left:
                self.unrecorded[stream] = left
            else:
                self.unrecorded.pop(stream, None)

    async def add_context(self, batch: "Prepared", reading: int = 0) -> None:
        """A model with context: each segment's previous transcripts (stream/context.py), from one
        read of its streams' context windows and the segments taken before it. `reading`: how
        many a candidate beside the live model reads (it may read more, or the live model none);
        the batch keeps that many for it (batch.previous), and its own model takes its last k."""
        served = batch.served.contract
        wanted = max(served.context, reading)
        if not wanted or not batch.good or batch.context_added():
            return
        mine = {(s.stream_id, s.segment_id, s.event_time) for s, _ in batch.good}  # prepare_again may drop some
        segments = [t for t in batch.taken if (t.stream_id, t.segment_id, t.event_time) in mine]
        with metrics.STAGE_SECONDS.labels("context").time():
            recorded = await retry_forever(self.store.recorded_context, "redis",
                                           list(dict.fromkeys(t.stream_id for t in segments)), backoff=self.backoff)
            previous = context.transcripts(segments, batch.earlier, recorded, wanted)
            batch.previous = {t.segment_id: p for t, p in zip(segments, previous)}
            if served.context:
                tokens = batch.served.tokenizer.context([p[-served.context:] for p in previous],
                                                        served.max_context_tokens)
                batch.inputs.update(zip(CONTEXT_INPUTS, tokens))

    def prepare_again(self, batch: "Prepared") -> None:
        """The batch's valid segments prepared for the model now served; those it no longer
        accepts join the batch's rejects."""
        batch.served = self.served
        batch.good = self.decode([raw for _, raw in batch.good], batch.result)
        batch.inputs = self.model_inputs([s for s, _ in batch.good], batch.served) if batch.good else None

    async def infer(self, batch: "Prepared") -> dict[str, np.ndarray]:
        """Triton's outputs for the batch's valid segments (the scores, and the attribution where
        the model gives it), from the version it was prepared for, retried until it answers."""
        if not batch.good:
            return {}
        metrics.BATCH_SIZE.observe(len(batch.good))
        started = time.perf_counter()

        async def call() -> dict[str, np.ndarray]:
            if batch.served is not self.served:
                self.prepare_again(batch)
            if not batch.good:
                return {}
            await self.add_context(batch)
            try:
                return await self.scorer.infer(batch.inputs, batch.served.contract.outputs, batch.served.version,
                                               model=batch.served.model)
            except Exception:
                await self.follow_served_model()
                raise
        outputs = await retry_forever(call, "triton", backoff=self.backoff)
        metrics.TRITON_LATENCY.observe(time.perf_counter() - started)
        metrics.STAGE_SECONDS.labels("triton").observe(time.perf_counter() - started)
        return outputs

    @staticmethod
    def finite_only(good: list, scores: list[float], items: list[ScoredSegment], result: BatchResult):
        """The segments the model gave finite outputs for; the others go to the DLQ. A NaN would
        fail the store's script half-way (Redis keeps what a failed script wrote before) and make
        every later aggregate of its stream NaN."""
        keep = [i for i, item in enumerate(items) if all(math.isfinite(v) for v in item.numbers())]
        for i in sorted(set(range(len(items))) - set(keep)):
            segment, raw = good[i]
            result.rejects.append(Reject("non_finite_score", f"the model returned NaN or Inf for segment "
                                         f"{segment.segment_id} (features far outside what it was trained on?)", raw))
        return [good[i] for i in keep], [scores[i] for i in keep], [items[i] for i in keep]

    async def record(self, batch: "Prepared", outputs: dict[str, np.ndarray]) -> BatchResult:
        """Record the scores in Redis (idempotent) and run detection on the streams they touched.
        Batches must be recorded in the order they were taken: that keeps each stream's order."""
        try:
            return await self.record_outcomes(batch, outputs)
        finally:
            self.release(batch)

    async def record_outcomes(self, batch: "Prepared", outputs: dict[str, np.ndarray]) -> BatchResult:
        result, good = batch.result, batch.good
        if good:
            scores = outputs[SCORE].reshape(-1).tolist()
            items = self.scored([seg for seg, _ in good], scores, outputs, batch.inputs, batch.served.contract,
                                batch.served.version)
            good, scores, items = self.finite_only(good, scores, items, result)
        if good:
            with metrics.STAGE_SECONDS.labels("redis").time():
                outcomes = await retry_forever(self.store.record_many, "redis", items, backoff=self.backoff)
            scores, versions = await self.published_scores(good, scores, outcomes, batch.served.version)
            touched: dict[str, None] = {}
            for (segment, raw), score, version, item, outcome in zip(good, scores, versions, items, outcomes):
                touched[segment.stream_id] = None
                if outcome == "conflict":
                    result.rejects.append(Reject("conflicting_duplicate",
                                                 f"segment_id {segment.segment_id} was recorded with other content",
                                                 raw))
                    continue
                if outcome == "dup":
                    result.duplicates += 1
                else:
                    metrics.SCORED.inc()
                    metrics.ROLE_SCORED.labels(self.role, str(batch.served.version)).inc()
                    for side in segment.missing:
                        metrics.MISSING_MODALITY.labels(side).inc()
                    metrics.END_TO_END.observe(max(0.0, time.time() - segment.event_time))
                # A repeat is published again, with the score (and version) Redis holds: its first
                # publication may be the one a crash lost.
                result.scores.append(Score(segment.stream_id, segment.segment_id, segment.event_time, score, version))
                batch.recorded.append((segment, score, item))
            with metrics.STAGE_SECONDS.labels("detect").time():
                result.alerts += await retry_forever(self.detect_streams, "redis", list(touched), backoff=self.backoff)
        metrics.DUPLICATES.inc(result.duplicates)
        for r in result.rejects:
            metrics.REJECTED.labels(r.reason).inc()
        return result

    async def published_scores(self, good: list, scores: list[float], outcomes: list[str], version: str | None
                               ) -> tuple[list[float], list[str | None]]:
        """The score each segment is published with, and the version that scored it: the ones just
        computed for a new segment, the ones Redis recorded for a repeat (a different batch, or
        another version before a promotion, may have scored it, and every record of one segment
        must say the same)."""
        versions = [version] * len(scores)
        repeats = [i for i, outcome in enumerate(outcomes) if outcome == "dup"]
        if not repeats:
            return scores, versions
        held = await retry_forever(self.store.held, "redis",
                                   [(good[i][0].stream_id, good[i][0].segment_id) for i in repeats],
                                   backoff=self.backoff)
        scores = list(scores)
        for i, (score, held_version) in zip(repeats, held):
            if score is not None:
                scores[i], versions[i] = score, held_version
        return scores, versions

    async def published(self, result: BatchResult) -> None:
        """The agent has delivered every outcome of `result`: its alerts leave the outbox."""
        if result.alerts:
            await retry_forever(self.store.mark_published, "redis", result.alerts, backoff=self.backoff)

    def detect_streams(self, streams: list[str]) -> list[Alert]:
        """Detection on each stream a batch touched, in one thread hop, one round trip to read and
        one to save (a stream that raised alerts saves with them); a retry after a failure half-way
        is safe: the detector resumes where it stopped. Returns the alerts to publish: those found
        now, and those found before a crash that came before publishing."""
        alerts, steady, started_from, warmed_up = [], {}, {}, {}
        prior = self.rho_prior()
        for stream, seen in self.store.detection_inputs(streams).items():  # redelivered batches too
            alerts += seen.unpublished
            started_from[stream] = seen.state.get("evaluated", 0)
            if not seen.totals or started_from[stream] >= seen.totals["count"]:
                continue
            try:
                found, state = detector.scan(stream, seen.window, seen.totals["count"], seen.state,
                                             self.detector_params, prior)
            except Exception:  # noqa: BLE001 - a detector bug must not stall scoring (retry_forever would)
                metrics.DETECTION_FAILURES.inc()
                log.exception("shift detection failed on stream %s; its state is kept and the next batch "
                              "tries again", stream)
                continue
            if state["warmup_rho"]:
                warmed_up[stream] = state["warmup_rho"]
            if found:
                found = self.with_drivers(stream, found)
                alerts += self.record_alerts(stream, found, state, started_from[stream])
            else:
                steady[stream] = state
        moved_on = self.store.save_detector_states(steady, started_from, warmed_up)  # one round trip
        if moved_on:
            log.info("detection on %d stream(s) was done meanwhile by another worker (a rebalance); its "
                     "state is kept", len(moved_on))
        return alerts

    def rho_prior(self) -> noise.RhoPrior | None:
        """The autocorrelation prior the deployment's streams give (their warm-ups', every worker's,
        through Redis), read again every RHO_PRIOR_REFRESH_S; None until there are enough of them."""
        if time.monotonic() - self._rho_prior_read_at >= RHO_PRIOR_REFRESH_S:
            warmups = self.store.warmup_rhos(RHO_PRIOR_MAX_AGE_S)
            prior, before = noise.pooled_rho_prior(warmups), self._rho_prior
            self._rho_prior, self._rho_prior_read_at = prior, time.monotonic()
            if (prior is None) != (before is None) or (prior and abs(prior.mean - before.mean) > 0.02):
                log.info("shift detection: young streams' autocorrelation is pulled towards %s (%d streams' "
                         "warm-ups)", f"{prior.mean:.3f} ± {prior.sd:.3f}" if prior else "0, too few to pool",
                         len(warmups))
        return self._rho_prior

    def with_drivers(self, stream: str, alerts: list[Alert]) -> list[Alert]:
        """Each alert with what moved (stream/alerts/drivers.py), from the stream's recent segments
        in Redis: a redelivered batch after a restart finds the same segments, so the same drivers."""
        recent = self.store.recent(stream, self.store.settings.recent_segments)
        try:
            return [replace(a, drivers=drivers.drivers(recent, a.change_point["event_time"], a.event_time,
                                                       a.reference["mean"], a.direction)) for a in alerts]
        except Exception:  # noqa: BLE001 - a bug here must not stall scoring (retry_forever would) nor drop the alert
            metrics.DETECTION_FAILURES.inc()
            log.exception("stream %s: the drivers of its alerts failed; the alerts go out without them", stream)
            return alerts

    def record_alerts(self, stream: str, alerts: list[Alert], state: dict, started_from: int) -> list[Alert]:
        """Record a stream's new alerts with the state that follows them (together: a crash leaves
        both or neither), unless another worker moved the stream's state on since detection read
        it; returns them as the outbox holds them, with their ids."""
        ids = self.store.record_alerts(stream, alerts, state, over_evaluated=started_from)
        if not ids:
            log.info("stream %s: its alerts were raised meanwhile by another worker (a rebalance)", stream)
            return []
        for alert in alerts:
            (metrics.ALERTS if self.role == "live" else metrics.SHADOW_ALERTS).labels(alert.direction).inc()
            log.log(logging.WARNING if self.role == "live" else logging.INFO,
                    "%s shift alert: stream %s %s by %.2f [%.2f, %.2f] since %s (z=%.1f)", self.role, stream,
                    alert.direction, alert.magnitude, *alert.interval, alert.change_point["event_time"], alert.z)
        return [replace(alert, id=entry_id) for entry_id, alert in zip(ids, alerts)]


async def _raise(error: Exception):
    raise error
