"""Speech nobody recorded: known sentences spoken by espeak-ng (Debian) into a WAV file, and
muxed by ffmpeg with a still picture into a video. For the tests and the bench, whose truth is
the text that was spoken."""
from __future__ import annotations

import shutil
import subprocess
import wave
from pathlib import Path

import numpy as np

from stream.errors import UserError

POSITIVE = (
    "I love this new phone, the camera is wonderful.",
    "What a fantastic day, everything went perfectly.",
    "The support team was friendly and helpful.",
    "This is the best coffee I have ever had.",
    "I am so happy with how the concert turned out.",
    "The hotel was clean, quiet and beautiful.",
)
NEGATIVE = (
    "This is terrible, the screen broke after one day.",
    "I hate waiting on hold for hours.",
    "The food was cold and the service was awful.",
    "What a disappointing and boring movie.",
    "The update ruined my laptop and nothing works.",
    "I am angry and I want my money back.",
)
NEUTRAL = (
    "The meeting starts at nine in the morning.",
    "The train leaves from platform four.",
    "The report has twelve pages and three tables.",
    "The store is open from Monday to Friday.",
)


def require(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise UserError(f"{tool} not found: install the Debian package {tool} (make setup does)")
    return path


def speak(sentences: list[str], path: Path, gap_s: float = 1.0, lead_s: float = 0.5) -> list[tuple[float, float]]:
    """Speak `sentences` into one WAV file, `gap_s` of silence between them; returns each
    sentence's (start, end) in seconds."""
    espeak = require("espeak-ng")
    spans, frames, rate = [], [], None
    position = 0
    for k, sentence in enumerate(sentences):
        part = path.with_suffix(f".{k}.wav")
        subprocess.run([espeak, "-v", "en-us", "-s", "150", "-w", str(part), sentence], check=True, timeout=60)
        with wave.open(str(part), "rb") as w:
            rate = rate or w.getframerate()
            silence = b"\x00\x00" * round((lead_s if k == 0 else gap_s) * rate)
            audio = voiced(w.readframes(w.getnframes()))
        part.unlink()
        frames += [silence, audio]
        start = position + len(silence) // 2
        position = start + len(audio) // 2
        spans.append((start / rate, position / rate))
    frames.append(b"\x00\x00" * round(gap_s * rate))
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(b"".join(frames))
    return spans


def voiced(pcm: bytes) -> bytes:
    """16-bit PCM without the near-silence espeak-ng puts before and after a sentence, so that
    a sentence's span is its speech and the gaps between sentences are exactly as asked."""
    samples = np.frombuffer(pcm, "<i2")
    loud = np.flatnonzero(np.abs(samples.astype(np.int32)) > 0.02 * np.abs(samples.astype(np.int32)).max())
    return samples[loud[0]:loud[-1] + 1].tobytes() if len(loud) else pcm


def video_of(wav: Path, path: Path) -> Path:
    """`wav` muxed with a still picture into an MP4 (H.264 + AAC), as a recorded video has it."""
    subprocess.run([require("ffmpeg"), "-loglevel", "error", "-y", "-f", "lavfi", "-i", "color=c=navy:s=160x120:r=5",
                    "-i", str(wav), "-shortest", "-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac", str(path)],
                   check=True, timeout=120)
    return path
