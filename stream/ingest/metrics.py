"""`tecaflow ingest`'s Prometheus metrics (TECAFLOW_INGEST_METRICS_PORT). Never labelled by
stream id or source (unbounded cardinality): run one ingest per source and tell them apart by
the scrape target."""
from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

MEDIA_SECONDS = Counter("tecaflow_ingest_media_seconds_total", "Seconds of media audio decoded")
UTTERANCES = Counter("tecaflow_ingest_utterances_total", "Utterances cut from the audio and transcribed")
SENT = Counter("tecaflow_ingest_segments_sent_total", "Segment messages the broker acknowledged", ["kind"])
REJECTED = Counter("tecaflow_ingest_rejected_total", "Feed lines and utterances sent to the dead-letter topic",
                   ["reason"])
TRANSCRIBE_SECONDS = Counter("tecaflow_ingest_transcription_seconds_total", "Time spent in Whisper")
REALTIME_FACTOR = Gauge("tecaflow_ingest_realtime_factor",
                        "Whisper's time over the audio it transcribed, since start (below 1: keeps up)")
LAG = Gauge("tecaflow_ingest_lag_seconds", "A live source: how far the audio being cut lags behind capture")
SPEECH_TO_KAFKA = Histogram("tecaflow_ingest_speech_to_kafka_seconds",
                            "A live source: from the end of an utterance's speech to its segment acknowledged",
                            buckets=(.25, .5, .75, 1, 1.5, 2, 3, 5, 10, 30, 60))
RECONNECTS = Counter("tecaflow_ingest_reconnects_total", "Times a live source came back after it dropped")
