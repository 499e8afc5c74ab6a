"""Whisper through CTranslate2 (faster-whisper), one utterance at a time.

Greedy decoding (beam 1), no conditioning on the previous utterance and no timestamps: an
utterance is at most 30 s (one Whisper window) and stands alone, and this is several times
faster than beam search at a small cost in accuracy (`tecaflow bench ingest` measures both
models as they run here). The audio was already cut by our VAD, so Whisper's own is off.
"""
from __future__ import annotations

import logging
import time

import numpy as np

from stream.errors import UserError
from stream.ingest.sources import SAMPLE_RATE
from stream.ingest.weights import model_directory

logging.getLogger("faster_whisper").setLevel(logging.WARNING)  # a line per utterance otherwise


class Transcriber:
    def __init__(self, model: str, device: str = "AUTO", threads: int = 0, language: str = "en", cache: str = ""):
        import ctranslate2
        from faster_whisper import WhisperModel
        directory = model_directory(model, cache)
        device = device.lower()
        if device == "auto":
            device = "cuda" if ctranslate2.get_cuda_device_count() > 0 else "cpu"
        try:
            self.model = WhisperModel(str(directory), device=device, cpu_threads=threads,
                                      compute_type="int8" if device == "cpu" else "float16")
        except (RuntimeError, ValueError) as e:
            raise UserError(f"Whisper {model} on {device}: {str(e).splitlines()[0]}") from None
        self.name, self.device = model, device
        if language and not self.model.model.is_multilingual and language != "en":
            raise UserError(f"Whisper {model} is English only; TECAFLOW_INGEST_LANGUAGE={language} needs base or "
                            f"another multilingual model")
        self.language = language or None
        self.busy_s = 0.0  # time spent transcribing, for the real-time factor
        self.audio_s = 0.0

    def __call__(self, samples: np.ndarray) -> str:
        started = time.perf_counter()
        parts, _ = self.model.transcribe(samples, language=self.language, beam_size=1, vad_filter=False,
                                         condition_on_previous_text=False, without_timestamps=True)
        text = " ".join(p.text.strip() for p in parts).strip()
        self.busy_s += time.perf_counter() - started
        self.audio_s += len(samples) / SAMPLE_RATE
        return text
