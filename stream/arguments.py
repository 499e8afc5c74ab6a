"""The command line's argument types: each checks its flag's value while the command line is
parsed, so that a bad value stops the command before anything starts, with argparse's one line
and exit code 2 ("--streams: must be > 0, got 0")."""
from __future__ import annotations

import argparse

REPO_HELP = "model repository (default: TECAFLOW_MODEL_REPO, model_repo)"


def positive(kind):
    """A number of `kind` (int, float) above 0."""
    return _at_least_zero(kind, zero=False)


def non_negative(kind):
    """A number of `kind` (int, float) at least 0."""
    return _at_least_zero(kind, zero=True)


def _at_least_zero(kind, zero: bool):
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a valid {kind.__name__}") from None
        if value < 0 or (value == 0 and not zero):
            raise argparse.ArgumentTypeError(f"must be {'>=' if zero else '>'} 0, got {text}")
        return value
    parse.__name__ = kind.__name__
    return parse


def share(below: float = 1.0):
    """A share in [0, below)."""
    def parse(text):
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not 0.0 <= value < below:
            raise argparse.ArgumentTypeError(f"must be in [0, {below:g}), got {text}")
        return value
    parse.__name__ = "share"
    return parse


probability = share()


def shares(text: str) -> tuple[float, ...]:
    """Comma-separated shares in (0, 1]: the parts of the traffic a benchmark shadows."""
    values = []
    for part in text.split(","):
        try:
            value = float(part)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{part!r} is not a number") from None
        if not 0.0 < value <= 1.0:
            raise argparse.ArgumentTypeError(f"each share must be in (0, 1], got {part}")
        values.append(value)
    return tuple(values)
