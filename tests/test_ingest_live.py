"""`tecaflow ingest` as a user runs it, on a real broker (Tansu): a spoken video ingested twice,
a live source served by ffmpeg that stops and comes back, bad input of every kind; and end to
end on the whole embedded stack, scored by the worker into Redis."""
from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from stream.config import Settings
from stream.ingest.spoken import NEGATIVE, POSITIVE, speak, video_of
from stream.ingest.wer import word_error_rate
from stream.stack.service import free_ports
from stream.stack.embedded import Stack
from tests.conftest import CLI

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    port = free_ports(1)[0]
    service = Stack(Settings(run_dir=str(tmp_path_factory.mktemp("broker")),
                             broker_url=f"kafka://127.0.0.1:{port}")).broker().start()
    yield f"127.0.0.1:{port}"
    service.stop()


@pytest.fixture(scope="module")
def talk(tmp_path_factory):
    """A video of three positive then three negative sentences, a second apart."""
    folder = tmp_path_factory.mktemp("talk")
    sentences = list(POSITIVE[:3] + NEGATIVE[:3])
    speak(sentences, folder / "talk.wav")
    return video_of(folder / "talk.wav", folder / "talk.mp4"), sentences


def env_for(servers: str, topic: str, **settings) -> dict:
    return dict(os.environ, TECAFLOW_BROKER_URL=servers, TECAFLOW_TOPIC_SEGMENTS=topic,
                TECAFLOW_TOPIC_DLQ=f"{topic}-dlq", TECAFLOW_INGEST_METRICS_PORT="0", TECAFLOW_INGEST_THREADS="2",
                **{f"TECAFLOW_{k.upper()}": str(v) for k, v in settings.items()})


def ingest(env: dict, *args, stdin=None, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, "ingest", "--no-progress", *args], env=env, capture_output=True, timeout=timeout,
                          cwd=ROOT, input=stdin, text=stdin is None or isinstance(stdin, str))


def read_all(servers: str, topic: str) -> list:
    """Every record of `topic`, in order (one partition's worth: ingest keys by stream)."""
    async def read():
        from aiokafka import AIOKafkaConsumer, TopicPartition
        consumer = AIOKafkaConsumer(bootstrap_servers=servers, auto_offset_reset="earliest", enable_auto_commit=False)
        await consumer.start()
        try:
            await consumer.topics()  # fetches the metadata that partitions_for_topic reads
            partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
            if not partitions:
                return []
            consumer.assign(partitions)
            ends = await consumer.end_offsets(partitions)
            records = []
            while [p for p in partitions if await consumer.position(p) < ends[p]]:
                for batch in (await consumer.getmany(timeout_ms=1000)).values():
                    records += batch
            return sorted(records, key=lambda r: (r.partition, r.offset))
        finally:
            await consumer.stop()
    return asyncio.run(read())


def segments(servers: str, topic: str) -> list[dict]:
    return [json.loads(r.value) for r in read_all(servers, topic)]


def last_line(result: subprocess.CompletedProcess) -> str:
    return result.stderr.strip().splitlines()[-1]


def test_a_video_ingested_twice_sends_the_same_segments(broker, talk):
    video, sentences = talk
    env = env_for(broker, "twice")
    first = ingest(env, str(video), "--stream-id", "talk-1")
    assert first.returncode == 0, first.stderr
    assert "6 utterances, 6 segments sent to twice" in first.stdout
    sent = read_all(broker, "twice")
    messages = [json.loads(r.value) for r in sent]
    assert word_error_rate(sentences, [m["text"] for m in messages]) <= 0.2, [m["text"] for m in messages]
    assert all(m["stream_id"] == "talk-1" and "audio" not in m and "visual" not in m for m in messages)
    times = [m["event_time"] for m in messages]
    assert times == sorted(times) and times[-1] - times[0] > 15  # media time: ~4 s a sentence
    assert ingest(env, str(video), "--stream-id", "talk-1").returncode == 0
    again = read_all(broker, "twice")[len(sent):]
    assert [r.value for r in again] == [r.value for r in sent]  # same ids, same content: the store skips them
    assert {r.key for r in sent} == {b"talk-1"}


def closest(sentences: list[str], texts: list[str]) -> list[int]:
    """For each transcript, which spoken sentence it is nearest to (by word error rate)."""
    return [min(range(len(sentences)), key=lambda k: word_error_rate([sentences[k]], [text])) for text in texts]


def serve(wav: Path, port: int) -> subprocess.Popen:
    """ffmpeg playing `wav` in real time as MPEG-TS to the one client that connects."""
    return subprocess.Popen(["ffmpeg", "-loglevel", "error", "-re", "-i", str(wav), "-c:a", "aac", "-f", "mpegts",
                             f"tcp://127.0.0.1:{port}?listen=1"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def test_a_live_source_that_stops_and_comes_back_loses_and_doubles_nothing(broker, tmp_path):
    first, second = list(POSITIVE[3:6]), list(NEGATIVE[3:6])
    speak(first, tmp_path / "first.wav")
    speak(second, tmp_path / "second.wav")
    port = free_ports(1)[0]
    server = serve(tmp_path / "first.wav", port)
    env = env_for(broker, "live", ingest_reconnect_s=8)
    started = time.time()
    follower = subprocess.Popen([*CLI, "ingest", f"tcp://127.0.0.1:{port}", "--stream-id", "cam-1"], env=env,
                                cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert server.wait(timeout=120) == 0, server.stderr.read()
        server = serve(tmp_path / "second.wav", port)  # the source comes back
        assert server.wait(timeout=120) == 0, server.stderr.read()
        out, err = follower.communicate(timeout=120)  # it gives up once the source stays away
    finally:
        for process in (server, follower):
            if process.poll() is None:
                process.kill()
    assert follower.returncode == 0, err
    assert "1 reconnects" in out and "the source has been gone for 8 s" in out, out
    messages = segments(broker, "live")
    texts = [m["text"] for m in messages]
    assert len(messages) == 6 and len({m["segment_id"] for m in messages}) == 6, texts
    assert closest(first + second, texts) == list(range(6)), texts  # each sentence once, in order
    assert word_error_rate(first + second, texts) <= 0.35, texts
    times = [m["event_time"] for m in messages]
    assert started < times[0] and times == sorted(times) and times[-1] < time.time()  # capture time, wall clock
    assert all(m["segment_id"] == f"cam-1/w{round(m['event_time'] * 1000)}" for m in messages)


def test_ctrl_c_sends_every_utterance_heard_then_exits(broker, tmp_path):
    sentences = list(POSITIVE + NEGATIVE)
    speak(sentences, tmp_path / "long.wav")
    port = free_ports(1)[0]
    server = serve(tmp_path / "long.wav", port)
    follower = subprocess.Popen([*CLI, "ingest", f"tcp://127.0.0.1:{port}", "--stream-id", "stopped-1"],
                                env=env_for(broker, "ctrl-c"), cwd=ROOT, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while len(read_all(broker, "ctrl-c")) < 2 and time.monotonic() < deadline and follower.poll() is None:
            time.sleep(0.5)
        follower.send_signal(signal.SIGINT)
        out, err = follower.communicate(timeout=120)
    finally:
        for process in (server, follower):
            if process.poll() is None:
                process.kill()
    assert follower.returncode == 0, err
    sent = int(re.search(r"(\d+) segments sent to ctrl-c", out).group(1))
    assert "; stopped" in out and 2 <= sent < len(sentences), out
    messages = segments(broker, "ctrl-c")
    assert len(messages) == sent and len({m["segment_id"] for m in messages}) == sent
    assert closest(sentences, [m["text"] for m in messages[:-1]]) == list(range(sent - 1))


def test_an_hls_stream_over_http(broker, talk, tmp_path):
    video, sentences = talk
    subprocess.run(["ffmpeg", "-loglevel", "error", "-i", str(video), "-c:a", "aac", "-c:v", "copy", "-f", "hls",
                    "-hls_time", "4", "-hls_playlist_type", "vod", str(tmp_path / "index.m3u8")], check=True)
    port = free_ports(1)[0]
    server = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"], cwd=tmp_path,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        result = ingest(env_for(broker, "hls", ingest_reconnect_s=30), f"http://127.0.0.1:{port}/index.m3u8",
                        "--stream-id", "hls-1")
    finally:
        server.kill()
    assert result.returncode == 0, result.stderr
    assert "6 segments sent to hls" in result.stdout and "end of media" in result.stdout
    messages = segments(broker, "hls")
    assert word_error_rate(sentences, [m["text"] for m in messages]) <= 0.2
    assert all(re.fullmatch(r"hls-1/\d{10}", m["segment_id"]) for m in messages)  # a recording: media offsets


def test_stdin_is_read_to_its_end(broker, talk):
    env = env_for(broker, "stdin")
    wav = talk[0].with_suffix(".wav").read_bytes()
    result = ingest(env, "-", stdin=wav)
    assert result.returncode == 0, result.stderr
    assert "as stream stdin: 6 utterances, 6 segments sent to stdin" in result.stdout.decode()


# ---- bad input: each a clear line or a dead letter, nothing lost --------------------------------
def test_a_file_that_is_not_media(broker, tmp_path):
    path = tmp_path / "slides.mp4"
    path.write_bytes(b"%PDF-1.4 not a video\n" * 50)
    result = ingest(env_for(broker, "bad"), str(path))
    assert result.returncode == 2
    assert last_line(result) == f"tecaflow ingest: error: {path}: Invalid data found when processing input"


def test_a_video_without_audio(broker, tmp_path):
    path = tmp_path / "mute.mp4"
    subprocess.run(["ffmpeg", "-loglevel", "error", "-f", "lavfi", "-i", "color=c=red:s=64x64:d=2", "-c:v", "libx264",
                    "-pix_fmt", "yuv420p", str(path)], check=True)
    result = ingest(env_for(broker, "bad"), str(path))
    assert result.returncode == 2
    assert last_line(result) == (f"tecaflow ingest: error: {path}: no audio stream (it has video): "
                                 f"nothing to transcribe")


def test_pure_silence_sends_nothing_and_succeeds(broker, tmp_path):
    path = tmp_path / "silence.wav"
    subprocess.run(["ffmpeg", "-loglevel", "error", "-f", "lavfi", "-i", "anullsrc=r=44100:cl=stereo", "-t", "20",
                    str(path)], check=True)
    result = ingest(env_for(broker, "silence"), str(path))
    assert result.returncode == 0, result.stderr
    assert "20.0 s of media as stream silence: 0 utterances, 0 segments sent to silence" in result.stdout
    assert segments(broker, "silence") == []


def test_an_unreachable_url(broker):
    port = free_ports(1)[0]
    result = ingest(env_for(broker, "bad", ingest_reconnect_s=1), f"http://127.0.0.1:{port}/live/index.m3u8")
    assert result.returncode == 2
    # the path is hidden as every URL in messages is: it may hold a key (rtmp://host/app/STREAM-KEY)
    assert last_line(result) == (f"tecaflow ingest: error: http://127.0.0.1:{port}/***: Connection "
                                 f"refused (retried for TECAFLOW_INGEST_RECONNECT_S=1 s)")


def test_a_missing_file_and_a_broker_that_is_away(broker, tmp_path, talk):
    result = ingest(env_for(broker, "bad"), str(tmp_path / "nope.mp4"))
    assert result.returncode == 2 and last_line(result) == f"tecaflow ingest: error: {tmp_path / 'nope.mp4'}: no such file"
    away = ingest(env_for(f"127.0.0.1:{free_ports(1)[0]}", "bad"), str(talk[0]))
    assert away.returncode == 2 and last_line(away).startswith("tecaflow ingest: error: the broker failed")


def test_a_feed_with_broken_lines_reports_each_and_ingests_the_rest(broker):
    lines = [json.dumps({"user": "ann", "at": 1767607200 + i, "body": f"post {i}", "id": i}).encode()
             for i in range(5)]
    broken = [b'{"user": "ann", "body": ', "caf\xe9".encode("latin-1"), b"y" * 3000, b'{"user": "ann", "at": 1}',
              b'"just a string"']
    feed = b"\n".join([lines[0], broken[0], lines[1], broken[1], lines[2], broken[2], lines[3], broken[3], broken[4],
                       lines[4]]) + b"\n"
    env = env_for(broker, "feed", ingest_max_line_bytes=2048)
    result = ingest(env, "--feed", "-", "--fields", "stream=user,time=at,text=body,id=id", stdin=feed)
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode().startswith("5 posts sent to feed; 5 sent to feed-dlq")
    stderr = result.stderr.decode()
    for where, reason in (("line 2", "undecodable"), ("line 4", "undecodable"), ("line 6", "too_large"),
                          ("line 8", "missing_field"), ("line 9", "not_an_object")):
        assert f"{where}: " in stderr and f"({reason}): sent to feed-dlq" in stderr, (where, stderr)
    assert [m["text"] for m in segments(broker, "feed")] == [f"post {i}" for i in range(5)]
    dead = sorted((json.loads(r.value) for r in read_all(broker, "feed-dlq")),  # unkeyed: any partition
                  key=lambda d: int(d["detail"].split(":")[0].removeprefix("line ")))
    assert [d["reason"] for d in dead] == ["undecodable", "undecodable", "too_large", "missing_field",
                                           "not_an_object"]
    originals = [base64.b64decode(d["original"]) for d in dead]
    assert originals[:2] == broken[:2] and originals[3:] == broken[3:]
    assert originals[2] == broken[2][:2049] and dead[2]["detail"].startswith("line 6: longer than 2048 bytes")


def test_a_live_feed_on_stdin_is_sent_post_by_post_as_it_comes(broker):
    follower = subprocess.Popen([*CLI, "ingest", "--feed", "-", "--stream-id", "ticker"],
                                env=env_for(broker, "ticker"), cwd=ROOT, stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for n in range(1, 4):  # each post reaches the broker before the next is even written
            follower.stdin.write(json.dumps({"text": f"post {n}"}) + "\n")
            follower.stdin.flush()
            deadline = time.monotonic() + 60
            while len(read_all(broker, "ticker")) < n and time.monotonic() < deadline:
                time.sleep(0.2)
            assert [m["text"] for m in segments(broker, "ticker")] == [f"post {k}" for k in range(1, n + 1)]
        out, err = follower.communicate(timeout=60)  # closing stdin ends the feed
    finally:
        if follower.poll() is None:
            follower.kill()
    assert follower.returncode == 0 and out.startswith("3 posts sent to ticker"), err


def test_a_large_feed_goes_through_in_batches(broker, tmp_path):
    path = tmp_path / "many.jsonl"
    path.write_text("".join(json.dumps({"u": f"user-{i % 7}", "t": 1767607200 + i, "text": f"post {i}", "id": i}) + "\n"
                            for i in range(2000)))
    result = ingest(env_for(broker, "many"), "--feed", str(path), "--fields", "stream=u,time=t,text=text,id=id")
    assert result.returncode == 0 and result.stdout.startswith("2000 posts sent to many"), result.stderr
    messages = segments(broker, "many")
    assert sorted(int(m["segment_id"].split("/")[1]) for m in messages) == list(range(2000))
    for user in range(7):  # a stream's posts stay in order (one key, one partition)
        times = [m["event_time"] for m in messages if m["stream_id"] == f"user-{user}"]
        assert times == sorted(times) and len(times) in (285, 286)


# ---- end to end on the embedded stack -----------------------------------------------------------
# The served model in tests is small and trained on the synthetic generator's movie-review
# sentences (trainer/synthetic.py). Whether it reads sentiment into other English is not what this
# test is about, so the passage is spoken in that lexicon, and the test asserts what the pipeline
# owes: the transcripts match the spoken words, Redis holds exactly the scores the served model
# gives those transcripts, and the trend over the passage moves the way the served model's
# scores of the *spoken* sentences move (positive, then negative). How well a real model's
# scores of transcripts follow those of the true sentences is a figure of `tecaflow bench ingest`.
SPOKEN_POSITIVE = ["honestly the acting was really wonderful", "the soundtrack was amazing",
                   "the story was brilliant in my opinion", "this film was great for me"]
SPOKEN_NEGATIVE = ["the plot was terrible", "the ending was extremely awful",
                   "the dialogue was boring overall", "the special effects were really bad"]


@pytest.mark.slow
def test_a_spoken_video_is_scored_end_to_end_and_its_trend_turns_negative(live, tmp_path):
    sentences = SPOKEN_POSITIVE + SPOKEN_NEGATIVE
    speak(sentences, tmp_path / "review.wav")
    video = video_of(tmp_path / "review.wav", tmp_path / "review.mp4")
    env = dict(live.env, TECAFLOW_INGEST_METRICS_PORT="0", TECAFLOW_INGEST_THREADS="2")
    result = subprocess.run([*CLI, "ingest", str(video), "--stream-id", "review-1", "--no-progress"], env=env,
                            capture_output=True, text=True, timeout=300, cwd=live.root)
    assert result.returncode == 0, result.stderr
    assert "8 utterances, 8 segments sent" in result.stdout
    deadline = time.monotonic() + 120
    while live.store.totals("review-1")["count"] < 8 and time.monotonic() < deadline:
        time.sleep(0.5)
    recent = sorted(live.store.recent("review-1", 50), key=lambda r: r["event_time"])
    assert len(recent) == 8
    texts = [r["text"] for r in recent]
    assert word_error_rate(sentences, texts) <= 0.25, texts
    stored = np.array([r["score"] for r in recent])
    assert np.allclose(stored, served_scores(live, texts), atol=1e-4)  # what the model says of the transcripts
    truth = served_scores(live, sentences)
    assert truth[:4].mean() > truth[4:].mean(), f"the served model does not read the passage's turn: {truth}"
    assert stored[:4].mean() > stored[4:].mean(), (texts, stored, truth)
    # ingesting the same video again changes nothing: every segment is an exact redelivery
    port = live.ports["metrics"][0]
    before = live.metric(port, "tecaflow_segments_duplicate_total")
    again = subprocess.run([*CLI, "ingest", str(video), "--stream-id", "review-1", "--no-progress"], env=env,
                           capture_output=True, text=True, timeout=300, cwd=live.root)
    assert again.returncode == 0, again.stderr
    deadline = time.monotonic() + 60
    while live.metric(port, "tecaflow_segments_duplicate_total") < before + 8 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert live.metric(port, "tecaflow_segments_duplicate_total") == before + 8
    assert live.store.totals("review-1")["count"] == 8


def served_scores(live, texts: list[str]) -> np.ndarray:
    """The served model's scores of `texts` alone (no frames), straight from Triton."""
    from transformers import AutoTokenizer

    from stream.triton_client import TritonScorer
    scorer = TritonScorer(live.env["TECAFLOW_TRITON_URL"])
    try:
        contract = scorer.contract()
        tokenizer = AutoTokenizer.from_pretrained(live.root / "repo" / "tecafn" / "1" / "tokenizer")
        enc = tokenizer(texts, padding=True, truncation=True, max_length=contract.max_text_tokens, return_tensors="np")
        empty = {m: [np.zeros((0, w), np.float32)] * len(texts) for m, w in contract.widths.items()}
        return np.asarray(scorer.score(contract.batch(enc["input_ids"], enc["attention_mask"], empty)), float)
    finally:
        scorer.close()


def test_the_metrics_count_what_was_ingested(broker, talk):
    from prometheus_client import REGISTRY

    from stream.ingest.producer import ingest_media
    from stream.ingest.sources import MediaSource
    from stream.ingest.transcribe import Transcriber
    from stream.ingest.utterances import SpeechDetector, UtteranceCutter

    def value(name, **labels):
        return REGISTRY.get_sample_value(name, labels) or 0.0
    names = ("tecaflow_ingest_media_seconds_total", "tecaflow_ingest_utterances_total",
             "tecaflow_ingest_transcription_seconds_total")
    before = {n: value(n) for n in names}
    sent_before = value("tecaflow_ingest_segments_sent_total", kind="media")
    settings = Settings(broker_url=broker, topic_segments="metrics")
    report = asyncio.run(ingest_media(MediaSource(str(talk[0]), None, 0), UtteranceCutter(SpeechDetector(), 0.5, 0.5, 15),
                                      Transcriber("tiny.en", "CPU", 2), "metrics-1", settings))
    assert report.sent == report.utterances == 6 and report.ended == "end of media"
    assert value(names[0]) - before[names[0]] == pytest.approx(report.media_s)
    assert value(names[1]) - before[names[1]] == 6
    assert value("tecaflow_ingest_segments_sent_total", kind="media") - sent_before == 6
    busy = value(names[2]) - before[names[2]]
    assert busy > 0 and value("tecaflow_ingest_realtime_factor") == pytest.approx(report.realtime_factor)
    assert len(segments(broker, "metrics")) == 6
