"""The worker's Prometheus metrics. Never labelled by stream_id (unbounded cardinality)."""
from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

CONSUMED = Counter("tecaflow_segments_consumed_total", "Segment messages read from the segments topic")
SCORED = Counter("tecaflow_segments_scored_total", "Segments scored and recorded in Redis")
MISSING_MODALITY = Counter("tecaflow_segments_missing_modality_total",
                           "Segments scored without a modality (no audio or no visual frames)", ["modality"])
DUPLICATES = Counter("tecaflow_segments_duplicate_total", "Exact redeliveries of recorded segments, skipped")
REJECTED = Counter("tecaflow_segments_rejected_total", "Segments sent to the dead-letter topic", ["reason"])
BATCH_SIZE = Histogram("tecaflow_batch_size", "Segments per Triton call", buckets=(1, 2, 4, 8, 16, 32, 64, 128))
TRITON_LATENCY = Histogram("tecaflow_triton_latency_seconds", "Triton call latency per batch",
                           buckets=(.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10))
END_TO_END = Histogram("tecaflow_end_to_end_latency_seconds", "From a segment's event time to its Redis write",
                       buckets=(.05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 300))
RETRIES = Counter("tecaflow_retries_total", "Retried calls to a dependency", ["target"])
DEPENDENCY_UP = Gauge("tecaflow_dependency_up", "1 when the last call to the dependency succeeded", ["target"])
ALERTS = Counter("tecaflow_alerts_total", "Sentiment shift alerts raised", ["direction"])
DETECTION_FAILURES = Counter("tecaflow_detection_failures_total",
                             "Streams whose shift detection failed on a batch (a bug: scoring went on; see the log)")
IN_FLIGHT = Gauge("tecaflow_in_flight_segments", "Segments taken from Kafka and not yet recorded")
STAGE_SECONDS = Histogram("tecaflow_stage_seconds", "Time a micro-batch spends in each stage of the worker "
                          "(decode, tokenize, context, triton, redis, detect, publish)", ["stage"],
                          buckets=(.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 10))
WEBHOOK_FAILURES = Counter("tecaflow_webhook_failures_total", "Alerts the webhook gave up on after every retry")
WEBHOOK_DROPPED = Counter("tecaflow_webhook_dropped_total", "Alerts dropped because the webhook queue was full")
WEBHOOK_QUEUE = Gauge("tecaflow_webhook_queue", "Alerts waiting for the webhook")
CONSUMER_LAG = Gauge("tecaflow_consumer_lag", "Segment messages waiting on this worker's partitions")
# ---- shadow scoring (stream/shadow/) ----
ROLE_SCORED = Counter("tecaflow_role_segments_scored_total",
                      "Segments recorded, by the role and version of the model that scored them", ["role", "version"])
SHADOW_CALLS = Counter("tecaflow_shadow_calls_total",
                       "Candidate calls by outcome (ok, error, timeout; skipped: a backlog too long; "
                       "not_ready: Triton had not loaded the candidate yet; a candidate whose contract cannot "
                       "be read counts as error)", ["outcome"])
SHADOW_LATENCY = Histogram("tecaflow_shadow_latency_seconds", "Candidate call latency per batch",
                           buckets=(.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10))
SHADOW_ALERTS = Counter("tecaflow_shadow_alerts_total", "Alerts the candidate raised (recorded, never sent)",
                        ["direction"])
SHADOW_DIVERGENCE = Gauge("tecaflow_shadow_divergence", "The candidate against the live model, overall "
                          "(wasserstein, psi, mae, failure_rate), as `tecaflow shadow report` computes it", ["measure"])
SHADOW_THRESHOLD = Gauge("tecaflow_shadow_threshold", "The gate's bound on each divergence (TECAFLOW_GATE_MAX_*)",
                         ["measure"])
