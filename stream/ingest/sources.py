"""Media sources: a file, a URL FFmpeg reads, or stdin, decoded by PyAV to 16 kHz mono float32.

A source yields `Chunk`s of about half a second. Their sample offsets run on without a break for
the whole ingest, across reconnects, so that an utterance is placed by counting samples (exact)
and not by container timestamps (which a live source restarts from zero when it comes back).

Files and live sources differ in two ways:
- time: a file's audio happened at its start time plus the offset (the container's
  creation_time, else the file's modification time less its duration: when the recording
  ended); a live source's audio happened when it was captured (the wall clock as it is read);
- failure: a file that cannot be read is an error at once; a live source that cannot be
  reached or drops is retried with backoff for up to `reconnect_s`, and when it stays away it
  has ended (the broadcast is over).

Decoding runs in its own thread into a bounded queue (about a minute of audio): a live source is
read as it arrives while Whisper works, and a file is read no faster than it is transcribed, so
a two-hour file takes bounded memory.
"""
from __future__ import annotations

import logging
import queue
import re
import sys
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np

from stream.config import redact_url
from stream.errors import UserError
from stream.ingest import metrics

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
CHUNK_SAMPLES = SAMPLE_RATE // 2
QUEUE_CHUNKS = 120  # a minute of audio between the decoder and the transcriber
LIVE_SCHEMES = ("rtsp", "rtsps", "rtmp", "rtmps", "rtp", "udp", "srt", "tcp")
OPEN_TIMEOUT_S = 10.0
READ_TIMEOUT_S = 10.0  # a live source silent this long has dropped


@dataclass
class Chunk:
    samples: np.ndarray  # float32 mono at SAMPLE_RATE
    offset: int  # samples before this chunk since the ingest began
    wall: float  # unix time of the chunk's first sample
    after_gap: bool = False  # the source dropped before this chunk: what came before has ended


@dataclass
class End:
    """The last item a source yields: why it ended, or the error that stopped it."""
    reason: str
    error: UserError | None = None


def is_url(source: str) -> bool:
    return "://" in source


def shown(source: str) -> str:
    """The source as messages may print it (a URL's password hidden)."""
    return redact_url(source) if is_url(source) else source


def default_stream_id(source: str) -> str:
    """A stream id from the source's name: the file's stem, or the URL's host only (a path may
    hold a secret, as an RTMP stream key does, and the id is shown everywhere)."""
    if source == "-":
        return "stdin"
    name = (urlsplit(source).hostname or urlsplit(source).scheme) if is_url(source) else Path(source).stem
    cleaned = re.sub(r"[^A-Za-z0-9._:@-]+", "-", name).strip("-.")
    return cleaned[:128] or "media"


class MediaSource:
    """One source, read in a thread; iterate `items()` for Chunks and finally an End."""

    def __init__(self, source: str, live: bool | None, reconnect_s: float, start_time: float | None = None):
        self.source, self.reconnect_s = source, reconnect_s
        self.live = live if live is not None else (source == "-" or urlsplit(source).scheme in LIVE_SCHEMES)
        self.retried = is_url(source)  # a file, or stdin, cannot be opened again
        self.start_time = start_time
        self.duration_s: float | None = None  # known for files, once open
        self.reconnects = 0
        self.queue: queue.Queue = queue.Queue(maxsize=QUEUE_CHUNKS)
        self.stopping = threading.Event()
        self.opened = threading.Event()
        self.thread = threading.Thread(target=self._run, name="decoder", daemon=True)

    def items(self):
        self.thread.start()
        while True:
            item = self.queue.get()
            yield item
            if isinstance(item, End):
                return

    def stop(self) -> None:
        """Stop reading (Ctrl-C): what was read still comes out, then End."""
        self.stopping.set()

    # ---- the decoder thread -------------------------------------------------------------------
    def _run(self) -> None:
        try:
            self._put(End(self._read_until_ended()))
        except UserError as e:
            self._put(End("error", e))

    def _put(self, item) -> None:
        while True:  # blocks while the transcriber is behind, but still notices a stop
            try:
                self.queue.put(item, timeout=0.5)
                return
            except queue.Full:
                if self.stopping.is_set() and not isinstance(item, End):
                    return

    def _read_until_ended(self) -> str:
        offset, gap, delay, away_since = 0, False, 0.5, time.monotonic()
        while not self.stopping.is_set():
            try:
                container = self._open()
            except UserError:
                raise
            except Exception as e:  # noqa: BLE001 - FFmpeg's reasons are many; each is reported
                if not self.retried:
                    raise UserError(f"{shown(self.source)}: {reason(e)}") from None
                away = time.monotonic() - away_since
                if away >= self.reconnect_s:
                    if not self.opened.is_set():
                        raise UserError(f"{shown(self.source)}: {reason(e)} (retried for "
                                        f"TECAFLOW_INGEST_RECONNECT_S={self.reconnect_s:g} s)") from None
                    return f"the source has been gone for {self.reconnect_s:g} s ({reason(e)})"
                delay = min(delay, self.reconnect_s - away)
                log.warning("%s: %s; retrying in %.1f s", shown(self.source), reason(e), delay)
                self.stopping.wait(delay)
                delay = min(delay * 2, 10.0)
                continue
            if self.opened.is_set():
                self.reconnects += 1
                metrics.RECONNECTS.inc()
                log.info("%s: reconnected", shown(self.source))
            self.opened.set()
            delay = 0.5
            try:
                offset, ended = self._decode(container, offset, gap)
            finally:
                container.close()
            if ended is not None or not (self.live and self.retried):
                return ended or "end of media"
            gap, away_since = True, time.monotonic()
            log.warning("%s: the source dropped; reconnecting", shown(self.source))
        return "stopped"

    def _open(self):
        import av
        target = sys.stdin.buffer if self.source == "-" else self.source
        container = av.open(target, timeout=(OPEN_TIMEOUT_S, READ_TIMEOUT_S))
        if not container.streams.audio:
            kinds = sorted({s.type for s in container.streams}) or ["no streams"]
            container.close()
            raise UserError(f"{shown(self.source)}: no audio stream (it has {', '.join(kinds)}): nothing to transcribe")
        if not self.live and container.duration is None and is_url(self.source):
            self.live = True  # an http(s) stream of unknown length is live (HLS live, Icecast)
        if not self.live:
            self.duration_s = container.duration / 1e6 if container.duration else None
            if self.start_time is None:
                self.start_time = media_start(self.source, container, self.duration_s)
        return container

    def _decode(self, container, offset: int, gap: bool) -> tuple[int, str | None]:
        """Decode until the media ends or drops; returns the new offset and, if reading should
        not go on (stopped, or a file that broke), why."""
        import av
        resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
        pending: list[np.ndarray] = []
        pending_n, first_wall = 0, None
        try:
            for frame in container.decode(container.streams.audio[0]):
                for out in resampler.resample(frame):
                    samples = out.to_ndarray().reshape(-1)
                    if first_wall is None:
                        first_wall = self._wall(offset, len(samples))
                    pending.append(samples)
                    pending_n += len(samples)
                if pending_n >= CHUNK_SAMPLES:
                    offset = self._emit(pending, offset, first_wall, gap)
                    pending, pending_n, first_wall, gap = [], 0, None, False
                if self.stopping.is_set():
                    break
            for out in resampler.resample(None):
                pending.append(out.to_ndarray().reshape(-1))
        except Exception as e:  # noqa: BLE001 - a read error mid-way
            if not self.live:
                if pending:
                    self._emit(pending, offset, first_wall or self._wall(offset, 0), gap)
                raise UserError(f"{shown(self.source)}: unreadable at {offset / SAMPLE_RATE:.1f} s ({reason(e)})") from None
            log.warning("%s: %s", shown(self.source), reason(e))
        if pending:
            offset = self._emit(pending, offset, first_wall or self._wall(offset, 0), gap)
        return offset, "stopped" if self.stopping.is_set() else None

    def _wall(self, offset: int, arrived: int) -> float:
        """When the sample at `offset` happened: for a live source, now less the samples that
        just arrived with it; for a file, its start time plus the offset."""
        if self.live:
            return time.time() - arrived / SAMPLE_RATE
        return self.start_time + offset / SAMPLE_RATE

    def _emit(self, parts: list[np.ndarray], offset: int, wall: float, gap: bool) -> int:
        samples = np.concatenate(parts).astype(np.float32, copy=False)
        self._put(Chunk(samples, offset, wall, gap))
        return offset + len(samples)


def reason(error: Exception) -> str:
    """FFmpeg's reason without PyAV's '[Errno N]' and the repeated file name."""
    text = getattr(error, "strerror", None) or str(error) or type(error).__name__
    return re.sub(r"^\[Errno -?\d+\] ", "", text)


def media_start(source: str, container, duration_s: float | None) -> float:
    """When a file's first sample happened: its creation_time tag, else its modification time
    less its duration (a recording is written until it ends), else now."""
    tag = container.metadata.get("creation_time")
    if tag:
        try:
            start = datetime.fromisoformat(tag.replace("Z", "+00:00")).timestamp()
            if start > 946684800:  # muxers write 1970 for "unknown"
                return start
        except ValueError:
            pass
    if source != "-" and not is_url(source):
        return Path(source).stat().st_mtime - (duration_s or 0.0)
    return time.time()
