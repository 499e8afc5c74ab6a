"""The serving contract (stream/contract.py): config.pbtxt, tecafn.json, padding, tokenizer."""
import numpy as np
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as pb

from stream.contract import ContractError, ModelContract, Tokenizer, pad_and_stack
from trainer.text_encoder import load_tokenizer, minilm_dir

CONTRACT = ModelContract(widths={"audio": 5, "visual": 7}, max_text_tokens=12, max_frames=9, max_batch=32)


@pytest.mark.parametrize("backend", ["python", "onnxruntime"])
def test_config_pbtxt_round_trips_through_tritons_own_schema(tmp_path, backend):
    path = tmp_path / "config.pbtxt"
    path.write_text(CONTRACT.config_pbtxt(backend=backend, max_batch=32))
    config = text_format.Parse(path.read_text(), pb.ModelConfig())  # Triton's parser accepts it
    assert [i.name for i in config.input] == list(CONTRACT.inputs)
    assert all(i.allow_ragged_batch == (backend == "python") for i in config.input if not i.name.endswith("_lengths"))
    assert ModelContract.read_config_pbtxt(path) == CONTRACT


def test_the_clients_json_view_of_the_config_reads_the_same(tmp_path):
    from google.protobuf import json_format
    as_json = json_format.MessageToDict(CONTRACT.model_config(max_batch=32))  # what Triton's clients return
    assert ModelContract.from_model_config(as_json) == CONTRACT


def test_metadata_round_trips(tmp_path):
    CONTRACT.write_metadata(tmp_path, version=3)
    assert ModelContract.read_metadata(tmp_path) == ModelContract(CONTRACT.widths, 12, 9)


def test_a_model_that_is_not_a_tecaflow_export_is_named():
    with pytest.raises(ContractError, match="'other' is not a tecaflow export"):
        ModelContract.from_model_config(pb.ModelConfig(name="other"))


def test_padding_keeps_every_value_and_pads_with_zeros():
    a, b = np.ones((2, 3, 4)), np.full((1, 5, 4), 2.0)
    out = pad_and_stack([a, b])
    assert out.shape == (3, 5, 4) and out[:2, :3].sum() == a.sum() and out[:2, 3:].sum() == 0
    assert (out[2] == 2).all()
    assert pad_and_stack([np.zeros((1, 0, 4))], minimum=1).shape == (1, 1, 4)


def test_a_batch_has_the_inputs_the_config_declares():
    rng = np.random.default_rng(0)
    frames = {"audio": [rng.normal(size=(n, 5)) for n in (3, 0, 9)], "visual": [rng.normal(size=(2, 7))] * 3}
    batch = CONTRACT.batch(np.ones((3, 4)), np.ones((3, 4)), frames)
    assert tuple(batch) == CONTRACT.inputs
    assert batch["audio"].shape == (3, 9, 5) and batch["audio_lengths"].ravel().tolist() == [3, 1, 9]
    checked = CONTRACT.check_request(batch)
    assert checked["audio_lengths"].shape == (3,)


@pytest.mark.parametrize("change, message", [
    (lambda b: b.pop("visual"), "missing input 'visual'"),
    (lambda b: b.update(input_ids=np.ones((2, 13)), attention_mask=np.ones((2, 13))), "13 tokens > max_text_tokens 12"),
    (lambda b: b.update(audio_lengths=np.array([[0], [1]])), "audio_lengths must be in"),
    (lambda b: b["audio"].__setitem__((0, 0, 0), np.nan), "NaN or Inf"),
])
def test_a_bad_request_is_named(change, message):
    batch = CONTRACT.batch(np.ones((2, 4)), np.ones((2, 4)),
                           {"audio": [np.ones((2, 5))] * 2, "visual": [np.ones((2, 7))] * 2})
    change(batch)
    with pytest.raises(ContractError, match=message):
        CONTRACT.check_request(batch)


def test_requests_concatenate_into_one_padded_batch():
    one = CONTRACT.check_request(CONTRACT.batch(np.ones((1, 3)), np.ones((1, 3)),
                                                {"audio": [np.ones((2, 5))], "visual": [np.ones((4, 7))]}))
    two = CONTRACT.check_request(CONTRACT.batch(np.ones((2, 5)), np.ones((2, 5)),
                                                {"audio": [np.ones((6, 5))] * 2, "visual": [np.ones((1, 7))] * 2}))
    feed = CONTRACT.concatenate([one, two])
    assert feed["input_ids"].shape == (3, 5) and feed["audio"].shape == (3, 6, 5)
    assert feed["audio_lengths"].tolist() == [2, 6, 6] and feed["attention_mask"][0].tolist() == [1, 1, 1, 0, 0]


def test_the_worker_tokenizer_matches_the_one_the_model_trained_with():
    texts = ["the movie was GREAT!!", "", "i guess the plot was not terrible at all " * 20, "naïve café — 😀 ok"]
    trained = load_tokenizer("minilm")(texts, padding=True, truncation=True, max_length=24, return_tensors="np")
    ids, mask = Tokenizer(minilm_dir(), 24)(texts)
    assert (ids == trained["input_ids"]).all() and (mask == trained["attention_mask"]).all()


PARTIAL = ModelContract(widths={"audio": 5}, max_text_tokens=12, max_frames=9, max_batch=32, presence=True,
                        attribution=True)


@pytest.mark.parametrize("backend", ["python", "onnxruntime"])
def test_presence_and_attribution_are_part_of_the_config(tmp_path, backend):
    path = tmp_path / "config.pbtxt"
    path.write_text(PARTIAL.config_pbtxt(backend=backend, max_batch=32))
    config = text_format.Parse(path.read_text(), pb.ModelConfig())
    assert [o.name for o in config.output] == ["score", "text_only", "contribution"]
    assert config.input[-1].name == "present" and config.input[-1].data_type == pb.TYPE_BOOL
    assert ModelContract.read_config_pbtxt(path) == PARTIAL
    PARTIAL.write_metadata(tmp_path)
    assert ModelContract.read_metadata(tmp_path) == ModelContract({"audio": 5}, 12, 9, presence=True, attribution=True)


def test_a_side_without_frames_is_absent_not_a_zero_frame():
    batch = PARTIAL.batch(np.ones((3, 4)), np.ones((3, 4)), {"audio": [np.ones((2, 5)), np.zeros((0, 5)),
                                                                         np.ones((1, 5))]})
    assert batch["audio_lengths"].ravel().tolist() == [2, 0, 1]
    assert batch["present"].tolist() == [[True, False], [False, False], [True, False]]  # the model has no vision
    PARTIAL.check_request(batch)  # zero frames are valid for a model that takes `present`
    old = ModelContract(widths={"audio": 5}, max_text_tokens=12, max_frames=9)
    assert old.batch(np.ones((1, 4)), np.ones((1, 4)), {"audio": [np.zeros((0, 5))]})["audio_lengths"].item() == 1


def test_attributions_name_only_the_sides_a_segment_had():
    outputs = {"score": np.array([[1.0], [0.5]]), "text_only": np.array([[0.25], [0.5]]),
               "contribution": np.array([[0.75, 0.0], [0.0, 0.0]])}
    present = np.array([[True, False], [False, False]])
    assert PARTIAL.attributions(outputs, present) == [(0.25, {"audio": 0.75}), (0.5, {})]
    assert CONTRACT.attributions(outputs) is None


def test_the_tokenizer_is_the_served_versions(tmp_path):
    from stream.contract import ContractError, tokenizer_dir
    for version in ("1", "2", "10"):
        (tmp_path / "tecafn" / version / "tokenizer").mkdir(parents=True)
    (tmp_path / "tecafn" / "11").mkdir()  # an export that left no tokenizer
    assert tokenizer_dir(tmp_path, "tecafn", "2") == tmp_path / "tecafn" / "2" / "tokenizer"
    assert tokenizer_dir(tmp_path, "tecafn") == tmp_path / "tecafn" / "11" / "tokenizer"  # newest on disk
    with pytest.raises(ContractError, match="Triton serves version 11 of tecafn"):
        tokenizer_dir(tmp_path, "tecafn", "11")


def test_segments_are_run_at_lengths_of_their_own_and_come_back_in_order():
    """The serving model's grouping: each row at the bucket of its own lengths (never a batch of
    one), the outputs scattered back to the rows they belong to."""
    from stream.contract import bucket_length
    served = ModelContract(widths={"audio": 3}, max_text_tokens=40, max_frames=20, presence=True)
    assert [bucket_length(n, 40) for n in (0, 1, 8, 9, 17, 33, 40)] == [8, 8, 8, 16, 24, 40, 40]
    assert [bucket_length(n, 500) for n in (64, 65, 130, 499)] == [64, 128, 192, 500]
    rng = np.random.default_rng(0)
    tokens, frames = np.array([3, 12, 30, 5, 40]), np.array([2, 0, 20, 9, 1])
    mask = (np.arange(40)[None, :] < tokens[:, None]).astype(np.int64)
    feed = served.check_request(served.batch(rng.integers(1, 99, (5, 40)) * mask, mask,
                                             {"audio": [rng.normal(size=(n, 3)) for n in frames]}))
    calls = []

    def run(part):
        calls.append({k: v.shape for k, v in part.items()})
        real = part["attention_mask"].sum(1) * 100 + part["audio_lengths"]
        return [real.astype(np.float32).reshape(-1, 1)]
    out = served.run_by_bucket(run, feed, ["score"])
    assert out["score"].reshape(-1).tolist() == (tokens * 100 + frames).tolist()
    assert sorted((c["input_ids"][1], c["audio"][1]) for c in calls) == [(8, 8), (8, 16), (16, 8), (32, 20), (40, 8)]
    assert all(c["input_ids"][0] >= 2 for c in calls)  # a row alone is run as two
