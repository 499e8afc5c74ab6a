"""`tecaflow export --quantize int8`: the int8 graph is what gets served, it passes its own parity
check against the fp32 graph, and an export whose int8 graph strays leaves nothing behind."""
import json

import numpy as np
import onnx
import pytest

from stream.errors import UserError
from tests.test_export_serve import checkpoint  # noqa: F401 - its tiny trained checkpoint, a fixture
from trainer import export as export_module
from trainer.data import load_dataset
from trainer.export import QUANTIZED_TOLERANCE, export, ort_scores
from trainer.train import evaluate_checkpoint


def test_the_int8_export_serves_a_quantized_graph_within_tolerance_of_fp32(checkpoint, tmp_path):
    fp32 = export(checkpoint, tmp_path / "fp32")
    int8 = export(checkpoint, tmp_path / "int8", quantize="int8", accuracy_data="synthetic")
    ops = {node.op_type for node in onnx.load(str(int8 / "model.onnx")).graph.node}
    assert "DynamicQuantizeLinear" in ops and not {"DynamicQuantizeLinear"} & {
        node.op_type for node in onnx.load(str(fp32 / "model.onnx")).graph.node}
    assert not (int8 / "model.fp32.onnx").exists()  # only the served graph is kept
    meta = json.loads((int8 / "tecafn.json").read_text())
    assert meta["quantized"] == "int8" and meta["int8_parity_max_abs_diff"] <= QUANTIZED_TOLERANCE

    # the accuracy report is the two graphs' MAE on the whole test split
    split = load_dataset("synthetic").split("test")
    accuracy = meta["int8_accuracy"]
    assert accuracy["test_segments"] == len(split)
    assert accuracy["mae_change"] == pytest.approx(accuracy["mae_int8"] - accuracy["mae_fp32"])
    # the fp32 graph's MAE is the checkpoint's own test MAE (scores paired with their labels: a
    # length-bucketed batch order once paired them with other segments' labels)
    own = evaluate_checkpoint(checkpoint, load_dataset("synthetic"), splits=("test",))["test"]
    assert accuracy["mae_fp32"] == pytest.approx(own["mae"], abs=1e-4)

    # and, independently of the export's own check, the graphs agree on other inputs
    model = export_module.load_checkpoint(checkpoint)[0]
    served = export_module.model_contract(model, 20, 12, attribution=True)
    batch = [export_module.example_batch(served, model.text_encoder.config.vocab_size, 32, seed=7)]
    diff = np.abs(ort_scores(int8 / "model.onnx", batch) - ort_scores(fp32 / "model.onnx", batch))
    assert diff.max() <= QUANTIZED_TOLERANCE


def test_an_int8_graph_that_strays_fails_the_export_and_leaves_nothing(checkpoint, tmp_path, monkeypatch):
    monkeypatch.setattr(export_module, "quantized_parity", lambda *a: 0.4)
    with pytest.raises(RuntimeError, match="int8 graph differs from the fp32 graph by 0.400"):
        export(checkpoint, tmp_path, quantize="int8")
    assert not any((tmp_path / "tecafn").glob("[0-9]*")) and not any((tmp_path / "tecafn").glob(".staging*"))


def test_an_unknown_quantization_is_a_user_error(checkpoint, tmp_path):
    with pytest.raises(UserError, match="--quantize must be one of"):
        export(checkpoint, tmp_path, quantize="int4")
