"""Voice activity detection and cutting audio into utterances of bounded length.

The detector is Silero VAD v6 as faster-whisper ships it (an ONNX file inside its wheel, run by
ONNX Runtime): a speech probability per 32 ms window, with a recurrent state carried from one
chunk to the next, so that streaming gives exactly the probabilities of reading the whole audio
at once (checked when this was written; tests/test_ingest.py keeps it so).

An utterance begins at a window above the threshold (with a little audio before it, so the
first word is not clipped) and ends after `min_silence_s` of windows below a lower threshold
(hysteresis: a dip inside a word does not split it). Speech longer than `max_utterance_s` is cut
at the quietest window of its last stretch, and the rest goes on as the next utterance, so that
memory and Whisper's input stay bounded however long someone talks.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from stream.ingest.sources import SAMPLE_RATE, Chunk

WINDOW = 512  # samples the Silero model reads at 16 kHz
CONTEXT = 64  # samples of the previous window it sees with each one
PAD_S = 0.2  # audio kept before and after the speech of an utterance
MIN_SPEECH_S = 0.25  # shorter bursts (a click, a cough) are not utterances
HYSTERESIS = 0.15  # in speech, a window is silence only below threshold - this


@dataclass
class Utterance:
    start: int  # first sample, counted from the start of the ingest
    samples: np.ndarray
    start_wall: float  # unix time of the first sample
    speech_end_wall: float  # unix time the last speech window ended

    @property
    def end(self) -> int:
        return self.start + len(self.samples)


class SpeechDetector:
    """Streaming Silero VAD: feed samples, get one probability per complete window."""

    def __init__(self):
        import onnxruntime
        from faster_whisper.utils import get_assets_path
        options = onnxruntime.SessionOptions()
        options.inter_op_num_threads = options.intra_op_num_threads = 1
        options.log_severity_level = 4
        self.session = onnxruntime.InferenceSession(f"{get_assets_path()}/silero_vad_v6.onnx", options,
                                                    providers=["CPUExecutionProvider"])
        self.reset()

    def reset(self) -> None:
        self.h = np.zeros((1, 1, 128), np.float32)
        self.c = np.zeros((1, 1, 128), np.float32)
        self.context = np.zeros(CONTEXT, np.float32)
        self.rest = np.zeros(0, np.float32)

    def __call__(self, samples: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(windows [n, WINDOW], probabilities [n]) of the complete windows so far."""
        audio = np.concatenate([self.rest, samples])
        n = len(audio) // WINDOW
        self.rest = audio[n * WINDOW:]
        if n == 0:
            return np.zeros((0, WINDOW), np.float32), np.zeros(0, np.float32)
        windows = audio[: n * WINDOW].reshape(n, WINDOW)
        before = np.concatenate([self.context[None], windows[:-1, -CONTEXT:]])
        probs, self.h, self.c = self.session.run(None, {"input": np.concatenate([before, windows], 1), "h": self.h,
                                                        "c": self.c})
        self.context = windows[-1, -CONTEXT:].copy()
        return windows, np.asarray(probs, np.float32).reshape(n)


class UtteranceCutter:
    def __init__(self, detector: SpeechDetector, threshold: float, min_silence_s: float, max_utterance_s: float):
        self.detector, self.threshold = detector, threshold
        window_s = WINDOW / SAMPLE_RATE
        self.pad = round(PAD_S / window_s)
        self.min_silence = max(1, round(min_silence_s / window_s))
        self.min_speech = round(MIN_SPEECH_S / window_s)
        self.max_windows = int(max_utterance_s / window_s) - self.pad
        self.windows: list[np.ndarray] = []  # the utterance being heard (empty: none)
        self.probs: list[float] = []
        self.first = 0  # sample at which self.windows[0] begins
        self.preroll: deque = deque(maxlen=self.pad)  # (window, probability) before speech began
        self.silence_run = 0
        self.next_sample = 0  # where the next window the detector returns begins
        self.anchors: deque = deque()  # (sample, wall) of recent chunks, to date windows

    def feed(self, chunk: Chunk) -> list[Utterance]:
        done = self.flush() if chunk.after_gap else []
        if chunk.after_gap:
            self.detector.reset()
            self.next_sample = chunk.offset  # the detector starts again at the chunk
            self.preroll.clear()
        self.anchors.append((chunk.offset, chunk.wall))
        windows, probs = self.detector(chunk.samples)
        for window, p in zip(windows, probs):
            done += self._step(window, float(p))
            self.next_sample += WINDOW
        self._forget_anchors()
        return done

    def flush(self) -> list[Utterance]:
        """The utterance being heard, ended now (the media ended, dropped or was stopped)."""
        done = self._end(len(self.windows)) if self.windows else []
        self.windows, self.probs, self.silence_run = [], [], 0
        return done

    def _step(self, window: np.ndarray, p: float) -> list[Utterance]:
        if not self.windows:
            if p < self.threshold:
                self.preroll.append((window, p))
                return []
            self.first = self.next_sample - len(self.preroll) * WINDOW
            self.windows = [w for w, _ in self.preroll]
            self.probs = [q for _, q in self.preroll]
            self.preroll.clear()
            self.silence_run = 0
        self.windows.append(window)
        self.probs.append(p)
        self.silence_run = self.silence_run + 1 if p < self.threshold - HYSTERESIS else 0
        if self.silence_run >= self.min_silence:
            keep = len(self.windows) - self.silence_run + self.pad
            done = self._end(keep)
            self.preroll.extend(zip(self.windows[keep:], self.probs[keep:]))
            self.windows, self.probs = [], []
            return done
        if len(self.windows) >= self.max_windows:
            return self._cut_at_quietest()
        return []

    def _cut_at_quietest(self) -> list[Utterance]:
        stretch = min(len(self.windows) // 3, round(3.0 * SAMPLE_RATE / WINDOW))
        cut = len(self.windows) - stretch + int(np.argmin(self.probs[-stretch:])) + 1
        done = self._end(cut)
        self.windows, self.probs = self.windows[cut:], self.probs[cut:]
        self.first += cut * WINDOW
        return done

    def _end(self, keep: int) -> list[Utterance]:
        """The first `keep` windows of the current utterance, as an Utterance if it holds speech."""
        probs = np.asarray(self.probs[:keep])
        speech = np.flatnonzero(probs >= self.threshold)
        if len(speech) < self.min_speech:
            return []
        start = self.first
        speech_end = self.first + (int(speech[-1]) + 1) * WINDOW
        return [Utterance(start, np.concatenate(self.windows[:keep]), self._wall(start), self._wall(speech_end))]

    def _wall(self, sample: int) -> float:
        anchor_sample, wall = self.anchors[0]
        for s, w in self.anchors:
            if s > sample:
                break
            anchor_sample, wall = s, w
        return wall + (sample - anchor_sample) / SAMPLE_RATE

    def _forget_anchors(self) -> None:
        """Keep the anchors that can still date a sample of the utterance or the pre-roll."""
        oldest = self.first if self.windows else self.next_sample - len(self.preroll) * WINDOW
        while len(self.anchors) > 1 and self.anchors[1][0] <= oldest:
            self.anchors.popleft()
