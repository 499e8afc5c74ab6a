"""replay's --score-shift: segments from the shift on are redrawn for utterances the model scores
DELTA away from the ones they replace (the model's scores stand in as a plain array here)."""
import numpy as np

from stream.replay import Shift, shift_scores


def test_score_shift_moves_the_stream_by_delta_in_score_units():
    rng = np.random.default_rng(0)
    scores = rng.uniform(-3, 3, 3000)  # the model's score of each pool row
    planned = [{"stream_id": f"stream-{s:03d}", "segment_id": f"stream-{s:03d}/run.{i:06d}", "index": i,
                "row": int(rng.integers(0, 1000))} for i in range(200) for s in range(2)]
    before = [p["row"] for p in planned]
    shift_scores(planned, scores, [Shift.parse("1@100:-1.5", 2)])
    for p, row in zip(planned, before):
        if p["stream_id"] == "stream-001" and p["index"] >= 100:
            assert abs(scores[p["row"]] - (scores[row] - 1.5)) < 0.05 or scores[row] - 1.5 < scores.min()
        else:
            assert p["row"] == row
