"""The soak's ingredients (the soak itself is a CLI benchmark: `tecaflow bench soak`)."""
import os

from stream.schema import Limits, Rejected, decode_segment
from stream.bench.soak import malformed, tree_rss_mb

WIDTHS = {"audio": 5, "visual": 20}


def test_every_malformed_kind_the_soak_sends_is_a_reject():
    """The soak compares DLQ records with malformed messages sent: each must be rejected."""
    reasons = set()
    for i in range(8):
        try:
            decode_segment(malformed(i, WIDTHS), Limits(widths=WIDTHS, max_frames=20))
        except Rejected as e:
            reasons.add(e.reason)
        else:
            raise AssertionError(f"soak message {i} was accepted")
    assert {"too_deep", "bad_id", "bad_text", "duplicate_key", "bad_timestamp", "text_too_long"} <= reasons


def test_resident_memory_of_a_process_tree():
    assert tree_rss_mb(os.getpid()) > 1
    assert tree_rss_mb(None) != tree_rss_mb(None)  # unknown is NaN, not 0
