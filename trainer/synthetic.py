"""A seeded generator of MOSI-like segments.

Text: real English sentences from a small sentiment lexicon, with intensifiers, negation and
hedges, so the transcript carries most of the label. Audio and visual frame sequences carry the
rest: a per-utterance "arousal" cue in audio channel 0 and a "smile" cue in visual channel 0,
under frame noise. Some utterances come in near-duplicate pairs: the same (or nearly the same)
words whose labels differ by 0.2-0.5 through the non-text cues only (the paper's Fig. 1).

label = clip(text_polarity + audio_cue + visual_cue + small noise, -3, 3)

Consecutive utterances form streams of `stream_length` segments (a speaker's video), in order, so
that a model with context has earlier transcripts to read.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from stream.errors import UserError


@dataclass(frozen=True)
class SyntheticSet:
    """The generated utterances in order, with the [start, end) rows of each split; trainer/data.py
    turns it into a Dataset."""
    name: str
    ids: list[str]
    texts: list[str]
    labels: np.ndarray
    audio: list[np.ndarray]  # [T_i, d_audio] each
    visual: list[np.ndarray]
    bounds: dict[str, tuple[int, int]]
    streams: list[str]  # the stream of each utterance; a stream's utterances are consecutive, in order

ADJECTIVES = {
    "amazing": 2.4, "brilliant": 2.2, "wonderful": 2.2, "great": 1.8, "good": 1.2, "fun": 1.2,
    "nice": 1.0, "decent": 0.6, "fine": 0.4, "okay": 0.1, "predictable": -0.5, "slow": -0.8,
    "boring": -1.4, "bad": -1.5, "weak": -1.0, "awful": -2.2, "terrible": -2.4, "dull": -1.2,
}
SUBJECTS = ["the movie", "the acting", "the plot", "the soundtrack", "the ending", "the dialogue",
            "the main character", "the special effects", "this film", "the story"]
INTENSIFIERS = {"very": 1.3, "really": 1.25, "extremely": 1.5, "pretty": 0.85, "somewhat": 0.6}
HEDGES = ["i guess", "i think", "honestly", "to be fair", "kind of"]
FILLERS = ["", "", "", " overall", " for me", " in my opinion", " at least"]


def sentence(rng: np.random.Generator) -> tuple[str, float]:
    """One sentence and its text polarity in roughly [-2.4, 2.4]."""
    adjective = rng.choice(list(ADJECTIVES))
    score = ADJECTIVES[adjective]
    words = [adjective]
    if rng.random() < 0.4:
        intensifier = rng.choice(list(INTENSIFIERS))
        score *= INTENSIFIERS[intensifier]
        words.insert(0, intensifier)
    negated = rng.random() < 0.2
    verb = "was not" if negated else rng.choice(["was", "is", "felt"])
    if negated:  # "not great" is mildly negative, "not terrible" mildly positive
        score = -0.5 * score
    text = f"{rng.choice(SUBJECTS)} {verb} {' '.join(words)}{rng.choice(FILLERS)}"
    if rng.random() < 0.25:
        text = f"{rng.choice(HEDGES)} {text}"
        score *= 0.7
    return text, float(np.clip(score, -2.4, 2.4))


def frames(rng: np.random.Generator, cue: float, length: int, width: int, noise: float) -> np.ndarray:
    """A [length, width] sequence whose channel 0 hovers around the cue, the rest is noise."""
    x = rng.normal(0.0, noise, size=(length, width)).astype(np.float32)
    drift = np.sin(np.linspace(0, rng.uniform(1, 4), length)) * 0.1
    x[:, 0] += cue + drift
    return x


def generate(n: int = 1200, seed: int = 0, d_audio: int = 5, d_visual: int = 20, max_frames: int = 50,
             cue_strength: float = 0.8, near_duplicate_fraction: float = 0.2,
             split_fractions=(0.6, 0.15, 0.25), stream_length: int = 8) -> SyntheticSet:
    """n utterances split train/valid/test; deterministic for a seed."""
    if n < 10:
        raise UserError("the synthetic set needs at least 10 utterances")
    if stream_length < 1:
        raise UserError("synthetic streams need at least 1 utterance each")
    rng = np.random.default_rng(seed)
    rows = []
    while len(rows) < n:
        text, polarity = sentence(rng)
        a_cue, v_cue = rng.uniform(-cue_strength, cue_strength, size=2)
        rows.append((text, polarity, a_cue, v_cue))
        if rng.random() < near_duplicate_fraction and len(rows) < n:
            # same words, a label 0.2-0.5 away carried by audio and vision only
            gap = rng.uniform(0.2, 0.5) * rng.choice([-1, 1])
            twin = text if rng.random() < 0.7 else text.replace("the ", "this ", 1)
            rows.append((twin, polarity, a_cue + gap / 2, v_cue + gap / 2))
    audio, visual, labels, texts = [], [], [], []
    for text, polarity, a_cue, v_cue in rows:
        texts.append(text)
        labels.append(np.clip(polarity + a_cue + v_cue + rng.normal(0, 0.05), -3, 3))
        shortest = min(10, max_frames)
        audio.append(frames(rng, a_cue, int(rng.integers(shortest, max_frames + 1)), d_audio, 0.5))
        visual.append(frames(rng, v_cue, int(rng.integers(shortest, max_frames + 1)), d_visual, 0.5))
    ids = [f"syn{seed}_{i:05d}" for i in range(n)]
    # Near-duplicate pairs are adjacent; split by contiguous blocks so a pair never straddles splits
    # except at the two boundaries.
    n_train = int(split_fractions[0] * n)
    n_valid = int(split_fractions[1] * n)
    bounds = {"train": (0, n_train), "valid": (n_train, n_train + n_valid), "test": (n_train + n_valid, n)}
    streams = [f"syn{seed}_stream{i // stream_length:04d}" for i in range(n)]
    return SyntheticSet(f"synthetic-{seed}", ids, texts, np.array(labels, dtype=np.float32), audio, visual, bounds,
                        streams)
