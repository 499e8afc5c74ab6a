"""Word error rate: word-level edit distance over the words of the truth, for the bench and
the tests. Case, punctuation and spacing are not errors (Whisper writes them, espeak never
said them)."""
from __future__ import annotations

import re


def words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9']+", text.lower())


def edit_distance(truth: list[str], heard: list[str]) -> int:
    row = list(range(len(heard) + 1))
    for i, word in enumerate(truth, 1):
        previous, row[0] = row[0], i
        for j, other in enumerate(heard, 1):
            previous, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, previous + (word != other))
    return row[-1]


def word_error_rate(truths: list[str], heard: list[str]) -> float:
    """Errors over all sentences divided by the words of all truths (pairs in order)."""
    if len(truths) != len(heard):
        raise ValueError(f"{len(truths)} sentences against {len(heard)} transcripts")
    errors = sum(edit_distance(words(t), words(h)) for t, h in zip(truths, heard))
    return errors / max(1, sum(len(words(t)) for t in truths))
