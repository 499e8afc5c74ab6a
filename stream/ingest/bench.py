"""`tecaflow bench ingest`: what transcription costs and what it does to scores, measured here.

On speech nobody recorded (known sentences spoken by espeak-ng, a second apart), in one run:
- per Whisper model: real-time factor (VAD + Whisper time over the audio's length) with
  --threads threads, and its word error rate against the spoken sentences;
- streams one machine keeps up with: the first model transcribing the same audio in as many
  processes as there are cores, one thread each, all at once; the audio they get through per
  second of wall time is how many real-time streams the machine sustains (measured, not
  1/RTF extrapolated: the processes share caches, memory bandwidth and whatever else runs);
- end of speech to Kafka latency (p50, p95): the audio served live by ffmpeg over loopback TCP,
  followed by `tecaflow ingest` into an embedded broker on a scratch port;
- the correlation between the served model's scores of the transcripts and of the true
  sentences, when Triton answers at TECAFLOW_TRITON_URL (`tecaflow stack up`); else skipped,
  and the report says so.
"""
from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from stream.config import Settings, environment_with
from stream.errors import UserError
from stream.ingest.sources import SAMPLE_RATE, Chunk, MediaSource
from stream.ingest.spoken import NEGATIVE, NEUTRAL, POSITIVE, require, speak
from stream.ingest.wer import word_error_rate


def sentences(n: int) -> list[str]:
    """n sentences, positive, negative and neutral interleaved (repeating the list if n is larger)."""
    pool = [s for group in zip(POSITIVE, NEGATIVE, NEUTRAL + NEUTRAL[:2]) for s in group]
    return [pool[i % len(pool)] for i in range(n)]


def decoded(path: Path) -> np.ndarray:
    return np.concatenate([c.samples for c in MediaSource(str(path), False, 0).items() if isinstance(c, Chunk)])


def cut(samples: np.ndarray, settings: Settings) -> tuple[list, float]:
    """The utterances, and the VAD's time."""
    from stream.ingest.utterances import SpeechDetector, UtteranceCutter
    cutter = UtteranceCutter(SpeechDetector(), settings.ingest_vad_threshold, settings.ingest_min_silence_s,
                             settings.ingest_max_utterance_s)
    started = time.perf_counter()
    found = []
    for start in range(0, len(samples), SAMPLE_RATE // 2):
        found += cutter.feed(Chunk(samples[start:start + SAMPLE_RATE // 2], start, start / SAMPLE_RATE))
    found += cutter.flush()
    return found, time.perf_counter() - started


def transcribe_all(model: str, threads: int, audio: list[np.ndarray], settings: Settings,
                   device: str = "CPU") -> tuple[list[str], float]:
    """Every utterance's transcript and Whisper's time for all of them (after one warm-up)."""
    from stream.ingest.transcribe import Transcriber
    transcriber = Transcriber(model, device, threads, settings.ingest_language, settings.ingest_cache)
    transcriber(audio[0])
    started = time.perf_counter()
    texts = [transcriber(a) for a in audio]
    return texts, time.perf_counter() - started


def _one_process(args) -> tuple[float, float]:
    model, audio, settings, ready, go = args
    from stream.ingest.transcribe import Transcriber
    transcriber = Transcriber(model, "CPU", 1, settings.ingest_language, settings.ingest_cache)
    transcriber(audio[0])
    ready.wait()
    go.wait()
    started = time.perf_counter()
    for a in audio:
        transcriber(a)
    return started, time.perf_counter()


def streams_kept_up(model: str, audio: list[np.ndarray], settings: Settings, processes: int) -> dict:
    """`processes` transcribers at once, one thread each, started together once all are loaded."""
    context = multiprocessing.get_context("spawn")
    with context.Manager() as manager:
        ready, go = manager.Barrier(processes + 1), manager.Event()
        with context.Pool(processes) as pool:
            result = pool.map_async(_one_process, [(model, audio, settings, ready, go)] * processes)
            ready.wait()
            go.set()
            spans = result.get()
    wall = max(e for _, e in spans) - min(s for s, _ in spans)
    audio_s = sum(len(a) for a in audio) / SAMPLE_RATE * processes
    return {"processes": processes, "threads_each": 1, "audio_s": round(audio_s, 1), "wall_s": round(wall, 2),
            "streams": round(audio_s / wall, 1)}


def live_latency(wav: Path, settings: Settings, threads: int) -> dict:
    """`tecaflow ingest` following `wav` served in real time by ffmpeg, into a scratch broker."""
    from stream.stack.service import free_ports
    from stream.stack.embedded import Stack
    broker_port, source_port = free_ports(2)
    with tempfile.TemporaryDirectory() as run:
        broker = Stack(Settings(run_dir=run, broker_url=f"kafka://127.0.0.1:{broker_port}")).broker().start()
        server = subprocess.Popen([require("ffmpeg"), "-loglevel", "error", "-re", "-i", str(wav), "-c:a", "aac",
                                   "-f", "mpegts", f"tcp://127.0.0.1:{source_port}?listen=1"])
        env = environment_with(broker_url=f"kafka://127.0.0.1:{broker_port}", ingest_metrics_port=0,
                               ingest_reconnect_s=2, ingest_threads=threads, topic_segments="bench-ingest")
        try:
            result = subprocess.run([sys.executable, "-m", "stream.cli", "ingest", f"tcp://127.0.0.1:{source_port}",
                                     "--stream-id", "bench", "--json"], env=env, capture_output=True, text=True,
                                    timeout=600)
        finally:
            server.kill()
            broker.stop()
    if result.returncode != 0:
        raise UserError(f"the live ingest failed: {result.stderr.strip().splitlines()[-1]}")
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    return {k: summary[k] for k in ("sent", "latency_p50_s", "latency_p95_s", "realtime_factor", "model")}


def score_correlation(truths: list[str], heard: list[str], settings: Settings) -> dict:
    """Pearson correlation of the served model's scores of the transcripts and of the truths."""
    from stream.replay import served_scores
    from stream.shadow.roles import live_model
    from stream.triton_client import TritonScorer
    try:
        scorer = TritonScorer(settings.triton_url, model=live_model(settings), timeout=5.0)
    except Exception as e:  # noqa: BLE001 - any failure to reach it means: no served model to compare with
        return {"skipped": f"no served model at TECAFLOW_TRITON_URL={settings.triton_url} ({type(e).__name__}; "
                           f"tecaflow stack up)"}
    try:
        widths = scorer.contract().widths
    except Exception as e:  # noqa: BLE001
        return {"skipped": f"no served model at TECAFLOW_TRITON_URL={settings.triton_url} ({type(e).__name__}; "
                           f"tecaflow stack up)"}
    finally:
        scorer.close()
    texts = list(truths) + list(heard)
    scores = served_scores(SimpleNamespace(texts=texts, frames={m: [np.zeros((0, w), np.float32)] * len(texts)
                                                             for m, w in widths.items()}), settings)
    truth, transcript = scores[:len(truths)], scores[len(truths):]
    return {"pearson": round(float(np.corrcoef(truth, transcript)[0, 1]), 3),
            "mean_abs_difference": round(float(np.mean(np.abs(truth - transcript))), 3),
            "truth_score_std": round(float(truth.std()), 3)}


def bench_ingest(models: list[str], n_sentences: int, threads: int, live_sentences: int, progress=print) -> dict:
    settings = Settings.from_env()
    spoken = sentences(n_sentences)
    with tempfile.TemporaryDirectory() as folder:
        wav = Path(folder) / "bench.wav"
        speak(spoken, wav)
        samples = decoded(wav)
        audio_s = len(samples) / SAMPLE_RATE
        utterances, vad_s = cut(samples, settings)
        if len(utterances) != len(spoken):
            raise UserError(f"the VAD found {len(utterances)} utterances in {len(spoken)} spoken sentences")
        audio = [u.samples for u in utterances]
        report = {"audio_s": round(audio_s, 1), "sentences": len(spoken), "cores": os.cpu_count(),
                  "vad_realtime_factor": round(vad_s / audio_s, 4), "models": {}}
        transcripts = {}
        for model in models:
            progress(f"transcribing {audio_s:.0f} s with Whisper {model}, {threads} threads")
            texts, busy = transcribe_all(model, threads, audio, settings)
            transcripts[model] = texts
            report["models"][model] = {"realtime_factor": round((vad_s + busy) / audio_s, 4),
                                       "wer": round(word_error_rate(spoken, texts), 4)}
        fastest = min(models, key=lambda m: report["models"][m]["realtime_factor"])
        for model in models:
            report["models"][model]["time_vs_fastest"] = round(
                report["models"][model]["realtime_factor"] / report["models"][fastest]["realtime_factor"], 2)
        import ctranslate2
        if ctranslate2.get_cuda_device_count() > 0:
            for model in models:
                progress(f"Whisper {model} on CUDA")
                texts, busy = transcribe_all(model, threads, audio, settings, device="CUDA")
                report["models"][model]["cuda_realtime_factor"] = round(busy / audio_s, 5)
        progress(f"{os.cpu_count()} processes of Whisper {models[0]} at once")
        report["machine"] = streams_kept_up(models[0], audio, settings, os.cpu_count() or 1)
        if live_sentences > 0:
            live_wav = Path(folder) / "live.wav"
            speak(spoken[:live_sentences], live_wav)
            progress(f"following {live_sentences} sentences served live (real time)")
            report["live"] = live_latency(live_wav, settings, threads)
        progress("scoring transcripts and true sentences with the served model")
        report["scores"] = {m: score_correlation(spoken, transcripts[m], settings) for m in models}
    return report


def format_report(r: dict) -> str:
    lines = [f"{r['sentences']} espeak-ng sentences, {r['audio_s']} s of audio, {r['cores']} cores; "
             f"VAD real-time factor {r['vad_realtime_factor']}",
             "model       real-time factor  time vs fastest  WER"]
    for name, m in r["models"].items():
        cuda = f"  (CUDA: {m['cuda_realtime_factor']})" if "cuda_realtime_factor" in m else ""
        lines.append(f"{name:<11} {m['realtime_factor']:>16.4f}  {m['time_vs_fastest']:>15.2f}  {m['wer']:.3f}{cuda}")
    machine = r["machine"]
    lines.append(f"this machine: {machine['processes']} transcribers at once got through {machine['audio_s']} s of "
                 f"audio in {machine['wall_s']} s: keeps up with {machine['streams']} live streams "
                 f"({next(iter(r['models']))})")
    if "live" in r:
        live = r["live"]
        lines.append(f"live, end of speech to Kafka: p50 {live['latency_p50_s']:.2f} s, p95 {live['latency_p95_s']:.2f} s "
                     f"over {live['sent']} utterances ({live['model']}; includes the "
                     f"{Settings().ingest_min_silence_s} s of silence that ends an utterance)")
    for name, s in r["scores"].items():
        lines.append(f"scores of transcripts vs true sentences ({name}): " + (
            s["skipped"] if "skipped" in s else
            f"Pearson {s['pearson']}, mean |difference| {s['mean_abs_difference']} (true scores' std "
            f"{s['truth_score_std']})"))
    return "\n".join(lines)
