"""`tecaflow ingest` and `tecaflow bench ingest`: their flags, and what they print.

`register(sub)` and `register_bench(bench_sub)` add them to the command line; nothing heavy is imported until one
of them runs.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
from pathlib import Path

from stream.arguments import positive
from stream.errors import UserError

FIELDS_HELP = ("which JSON field is what, ROLE=FIELD comma-separated: text (required), stream, time (unix seconds "
               "or ISO 8601), id; dotted names reach into objects (default: text=text)")


def register(sub) -> None:
    p = sub.add_parser("ingest", help="media (a file, a live URL, stdin) or a JSON Lines text feed in, segments out",
                       description="Transcribe a media file or live source (VAD + Whisper, offline) or read a JSON "
                                   "Lines feed of posts, and send each utterance or post as a text-only segment to "
                                   "the segments topic. See docs/ingest.md.")
    p.add_argument("source", nargs="?", help="a media file, a URL FFmpeg reads (http(s):// incl. HLS, rtsp://, "
                                             "rtmp://, udp://, srt://, tcp://), or - for stdin")
    p.add_argument("--feed", metavar="FILE", help="a JSON Lines text feed instead (- for stdin)")
    p.add_argument("--fields", default="text=text", help=FIELDS_HELP)
    p.add_argument("--stream-id", help="the stream's id (default: the file's name, or the URL's host; "
                                       "for a feed, every post's stream unless --fields names a stream field)")
    p.add_argument("--live", action=argparse.BooleanOptionalAction, default=None,
                   help="treat the source as live: wall-clock times, reconnects (default: URLs of streaming "
                        "protocols, stdin, and http(s) streams of unknown length)")
    p.add_argument("--start", type=start_time, help="a file's start time, ISO 8601 or unix seconds (default: its "
                                                    "creation_time tag, else its modification time less its length)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=cmd_ingest)


def register_bench(bench_sub) -> None:
    p = bench_sub.add_parser("ingest", help="transcription real-time factor, streams per machine, end of speech to "
                                            "Kafka latency, WER and score correlation on espeak-ng speech")
    p.add_argument("--models", default="tiny.en,base", help="Whisper models compared (comma-separated)")
    p.add_argument("--sentences", type=positive(int), default=24, help="sentences spoken (from a fixed list)")
    p.add_argument("--threads", type=positive(int), default=2, help="CPU threads per transcription")
    p.add_argument("--live-sentences", type=int, default=8,
                   help="sentences served live through ffmpeg and the embedded broker for the latency (0: skip)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_bench_ingest)


def start_time(text: str) -> float:
    from stream.ingest.text_feed import unix_seconds
    try:
        return unix_seconds(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def cmd_ingest(args) -> int:
    from stream.config import Settings
    settings = Settings.from_env()
    if (args.source is None) == (args.feed is None):
        raise UserError("give a media SOURCE or --feed FILE, one of them")
    serve_metrics(settings)
    report = ingest_feed(args, settings) if args.feed else ingest_media(args, settings)
    if args.json:
        print(json.dumps(summary(report, settings)))
    else:
        print(describe(report, settings))
    return 0


def serve_metrics(settings) -> None:
    if not settings.ingest_metrics_port:
        return
    from prometheus_client import start_http_server
    try:
        start_http_server(settings.ingest_metrics_port, addr=settings.metrics_host)
    except OSError as e:
        raise UserError(f"metrics port {settings.metrics_host}:{settings.ingest_metrics_port}: {e.strerror} "
                        f"(TECAFLOW_INGEST_METRICS_PORT; 0 turns it off)") from None


def ingest_media(args, settings):
    from stream.ingest.producer import ingest_media
    from stream.ingest.segments import checked_stream_id
    from stream.ingest.sources import MediaSource, default_stream_id
    from stream.ingest.transcribe import Transcriber
    from stream.ingest.utterances import SpeechDetector, UtteranceCutter
    import importlib.util
    missing = [m for m in ("av", "faster_whisper", "ctranslate2") if importlib.util.find_spec(m) is None]
    if missing:
        raise UserError(f"ingesting media needs {', '.join(missing)}, not installed: pip install 'tecaflow[ingest]'")
    if args.source != "-" and "://" not in args.source and not Path(args.source).exists():
        raise UserError(f"{args.source}: no such file")
    stream_id = checked_stream_id(args.stream_id or default_stream_id(args.source))
    source = MediaSource(args.source, args.live, settings.ingest_reconnect_s, args.start)
    transcriber = Transcriber(settings.ingest_model, settings.ingest_device, settings.ingest_threads,
                              settings.ingest_language, settings.ingest_cache)
    cutter = UtteranceCutter(SpeechDetector(), settings.ingest_vad_threshold, settings.ingest_min_silence_s,
                             settings.ingest_max_utterance_s)
    progress = Progress(source, disabled=args.no_progress)
    try:
        report = asyncio.run(ingest_media(source, cutter, transcriber, stream_id, settings, progress.advance))
    finally:
        progress.close()
    report.model = f"{transcriber.name} on {transcriber.device}"
    return report


class Progress:
    """A bar over a file's length (made once its length is known); nothing for a live source."""

    def __init__(self, source, disabled: bool):
        self.source, self.disabled, self.bar = source, disabled, None

    def advance(self, seconds: float) -> None:
        if self.disabled or self.source.live:
            return
        if self.bar is None:
            from tqdm import tqdm
            self.bar = tqdm(total=round(self.source.duration_s or 0, 1) or None, unit="s", desc="ingest",
                            file=sys.stderr, bar_format="{l_bar}{bar}| {n:.0f}/{total_fmt} s media [{elapsed}<{remaining}]")
        self.bar.update(seconds)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def ingest_feed(args, settings):
    from stream.ingest.producer import ingest_feed
    from stream.ingest.text_feed import Fields, posts
    fields = Fields.parse(args.fields)
    if args.live is not None or args.start is not None:
        raise UserError("--live and --start are for media; a feed's times come from its time field")
    feed = sys.stdin.buffer if args.feed == "-" else open(args.feed, "rb")  # noqa: SIM115 - closed below
    try:
        report = asyncio.run(ingest_feed(posts(feed, fields, args.stream_id, settings), settings))
    finally:
        if feed is not sys.stdin.buffer:
            feed.close()
    return report


def summary(report, settings) -> dict:
    out = {"stream_id": report.stream_id, "sent": report.sent, "topic": settings.topic_segments,
           "rejected": report.rejected, "dlq": settings.topic_dlq, "ended": report.ended}
    if report.stream_id is not None:  # media
        latencies = sorted(report.latencies)
        out.update(media_s=round(report.media_s, 2), utterances=report.utterances, empty=report.empty,
                   realtime_factor=report.realtime_factor, model=report.model,
                   reconnects=report.reconnects,
                   latency_p50_s=statistics.median(latencies) if latencies else None,
                   latency_p95_s=latencies[int(0.95 * (len(latencies) - 1))] if latencies else None)
    return out


def describe(report, settings) -> str:
    s = summary(report, settings)
    bad = f"; {s['rejected']} sent to {s['dlq']} (reported above)" if s["rejected"] else ""
    if report.stream_id is None:
        return f"{s['sent']} posts sent to {s['topic']}{bad}; {s['ended']}"
    rtf = f", real-time factor {s['realtime_factor']:.3f}" if s["realtime_factor"] is not None else ""
    lines = [f"{s['media_s']:.1f} s of media as stream {s['stream_id']}: {s['utterances']} utterances, "
             f"{s['sent']} segments sent to {s['topic']}" + (f" ({s['empty']} without words)" if s["empty"] else "")
             + bad,
             f"Whisper {s['model']}{rtf}; {s['ended']}" + (f", {s['reconnects']} reconnects" if s["reconnects"] else "")]
    if s["latency_p50_s"] is not None:
        lines.append(f"end of speech to Kafka: p50 {s['latency_p50_s']:.2f} s, p95 {s['latency_p95_s']:.2f} s")
    return "\n".join(lines)


def cmd_bench_ingest(args) -> int:
    from stream.ingest.bench import bench_ingest, format_report
    result = bench_ingest([m.strip() for m in args.models.split(",") if m.strip()], args.sentences, args.threads,
                          args.live_sentences, progress=lambda m: print(m, file=sys.stderr, flush=True))
    print(json.dumps(result, indent=2) if args.json else format_report(result))
    return 0
