"""Several micro-batches in flight on the real embedded stack: one batch is made slow inside
Triton (tests/slow_triton_model.py, two model instances so the batches behind it are scored
first), and each stream's segments must still reach Redis in the order they were produced, each
exactly once."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import trainer.export
from stream.schema import encode_frames
from tests.conftest import launch, shut_down
from tests.malformed import valid

pytestmark = [pytest.mark.integration, pytest.mark.slow]

STREAMS, PER_STREAM = 4, 40
MARKER, SLOW_S = 4242.0, 4.0  # as in tests/slow_triton_model.py (which only Triton can import)


@pytest.fixture(scope="module")
def system(tmp_path_factory):
    real_export = trainer.export.export

    def export_with_a_slow_model(*args, **kwargs):
        version = real_export(*args, **{**kwargs, "instances": 2})
        (version / "model.py").rename(version / "tecafn_model.py")
        shutil.copy(Path(__file__).with_name("slow_triton_model.py"), version / "model.py")
        return version

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(trainer.export, "export", export_with_a_slow_model)
        live = launch(tmp_path_factory.mktemp("in-flight"), TECAFLOW_BATCHES_IN_FLIGHT="4",
                      TECAFLOW_BATCH_SIZE="16")
    yield live
    shut_down(live)


def message(stream: int, i: int, slow: bool) -> tuple[bytes, bytes]:
    name = f"order-{stream:03d}"
    m = valid(stream=name, segment=f"{name}/{i:03d}", frames=3)
    if slow:
        m["audio"] = encode_frames(np.full((3, 5), MARKER))
    return name.encode(), json.dumps(m).encode()


def test_a_slow_batch_in_triton_keeps_each_streams_order_and_loses_nothing(system):
    # stream 0's third segment is in the first batch: the batches behind it overtake it in Triton
    system.produce([message(s, i, slow=(s == 0 and i == 2)) for i in range(PER_STREAM) for s in range(STREAMS)])
    counts = system.wait_for_total("order", STREAMS * PER_STREAM, timeout=120 + SLOW_S)
    assert counts == {f"order-{s:03d}": PER_STREAM for s in range(STREAMS)}
    for s in range(STREAMS):
        recent = system.store.recent(f"order-{s:03d}", PER_STREAM)  # newest first
        assert [r["segment_id"] for r in reversed(recent)] == [f"order-{s:03d}/{i:03d}" for i in range(PER_STREAM)]
    log = system.workers[0][2].read_text()
    assert "internal_error" not in log
