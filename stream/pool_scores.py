"""The served model's score for every utterance replay can draw, so that replay can state shifts
in score units (`--score-shift`): a label shift of 1 moves TeCaFN's scores by a model-dependent
amount, and alerts are about scores."""
from __future__ import annotations

import numpy as np

from stream.config import Settings


def score_pool(pool, settings: Settings, batch: int = 64) -> np.ndarray:
    from stream.triton_client import TritonScorer
    from stream.worker import load_tokenizer
    scorer = TritonScorer(settings.triton_url, model=settings.triton_model)
    try:
        contract = scorer.contract()
        tokenizer = load_tokenizer(settings, contract.max_text_tokens)
        out = []
        for start in range(0, len(pool.texts), batch):
            rows = range(start, min(start + batch, len(pool.texts)))
            frames = {m: [pool.frames[m][i] for i in rows] for m in contract.widths}
            inputs = contract.batch(*tokenizer([pool.texts[i] for i in rows]), frames)
            out.append(np.asarray(scorer.score(inputs), dtype=float).reshape(-1))
        return np.concatenate(out)
    finally:
        scorer.close()
