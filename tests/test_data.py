import csv
import pickle

import numpy as np
import pytest
import torch

from tests.conftest import MOSI_DIR
from trainer.data import (
    DEFAULT_MAX_FRAMES,
    Batcher,
    DataError,
    Split,
    bucketed_batches,
    feature_stats,
    load_dataset,
    load_mmsa_pickle,
    load_native,
    load_urfunny,
    pad_sequences,
    synthetic_dataset,
)
from trainer.text_encoder import load_tokenizer


def write_native(root, n=12, audio="seq", visual=True, labels=None, d_a=4, d_v=6):
    root.mkdir(parents=True, exist_ok=True)
    modes = (["train"] * (n - 4)) + ["valid"] * 2 + ["test"] * 2
    labels = labels if labels is not None else np.linspace(-3, 3, n)
    ids = [f"u{i}" for i in range(n)]
    with (root / "utterances.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "text", "label", "mode"])
        for i in range(n):
            w.writerow([ids[i], "" if i == 0 else f"sentence number {i}", labels[i], modes[i]])
    rng = np.random.default_rng(0)
    order = rng.permutation(n)  # arrays need not be in csv order
    if audio == "seq":
        np.savez(root / "audio_covarep.npz", ids=np.array(ids)[order], audio=rng.normal(size=(n, 7, d_a)).astype("f4"),
                 lengths=rng.integers(1, 8, n))
    elif audio == "vector":
        np.savez(root / "audio.npz", ids=np.array(ids)[order], audio=rng.normal(size=(n, d_a)).astype("f4"))
    if visual:
        np.savez(root / "visual.npz", ids=np.array(ids)[order], visual=rng.normal(size=(n, 5, d_v)).astype("f4"),
                 lengths=rng.integers(1, 6, n))
    return ids, order


def test_native_roundtrip_keeps_ids_matched(tmp_path):
    ids, order = write_native(tmp_path)
    ds = load_native(tmp_path)
    assert ds.modalities == ("text", "audio", "visual")
    assert (len(ds.train), len(ds.valid), len(ds.test)) == (8, 2, 2)
    with np.load(tmp_path / "audio_covarep.npz") as z:
        row = list(z["ids"]).index("u5")
        np.testing.assert_array_equal(ds.train.audio[5, : z["lengths"][row]], z["audio"][row, : z["lengths"][row]])
    assert ds.train.texts[0] == ""  # empty transcripts are data, not errors


def test_native_vectors_become_one_frame_sequences(tmp_path):
    write_native(tmp_path, audio="vector", visual=False)
    ds = load_native(tmp_path)
    assert ds.modalities == ("text", "audio")
    assert ds.train.audio.shape == (8, 1, 4) and set(ds.train.audio_lengths) == {1}


@pytest.mark.parametrize("breakage, message", [
    (lambda r: (r / "utterances.csv").unlink(), "no utterances.csv"),
    (lambda r: np.savez(r / "visual.npz", ids=np.array(["u0"]), visual=np.zeros((1, 5, 6), "f4"),
                        lengths=np.array([1])), "no visual for 11 utterances"),
    (lambda r: np.savez(r / "visual.npz", ids=np.array([f"u{i}" for i in range(12)]),
                        visual=np.full((12, 5, 6), np.nan, "f4"), lengths=np.ones(12, int)), "NaN or Inf"),
    (lambda r: np.savez(r / "visual.npz", ids=np.array([f"u{i}" for i in range(12)]),
                        visual=np.zeros((12, 5, 6), "f4")), "needs 'lengths'"),
    (lambda r: np.savez(r / "visual.npz", ids=np.array([f"u{i}" for i in range(12)]),
                        wrong=np.zeros((12, 6), "f4")), "missing array 'visual'"),
    (lambda r: np.savez(r / "visual.npz", ids=np.array([f"u{i}" for i in range(12)]),
                        visual=np.array([{"a": 1}] * 12, dtype=object)), "cannot be read without pickle"),
    (lambda r: (r / "visual.npz").write_bytes(b"garbage"), "cannot be read"),
])
def test_native_bad_inputs_say_what_is_wrong(tmp_path, breakage, message):
    write_native(tmp_path)
    breakage(tmp_path)
    with pytest.raises(DataError, match=message):
        load_native(tmp_path)


def test_labels_outside_range_are_rejected(tmp_path):
    labels = np.linspace(-3, 3, 12)
    labels[3] = 3.5
    write_native(tmp_path, labels=labels)
    with pytest.raises(DataError, match=r"label 3.5 of 'u3' is outside \[-3, 3\]"):
        load_native(tmp_path)


def test_bad_mode_and_label_text(tmp_path):
    write_native(tmp_path)
    text = (tmp_path / "utterances.csv").read_text().replace(",train\n", ",training\n", 1)
    (tmp_path / "utterances.csv").write_text(text)
    with pytest.raises(DataError, match="mode 'training'"):
        load_native(tmp_path)


def mmsa_dict(n=6, t=10, aligned=False, drop=None):
    rng = np.random.default_rng(0)
    data = {}
    for split in ("train", "valid", "test"):
        part = {"raw_text": [f"text {i}" for i in range(n)], "id": [f"{split}$_${i}" for i in range(n)],
                "audio": rng.normal(size=(n, t, 5)).astype("f4"), "vision": rng.normal(size=(n, t, 20)).astype("f4"),
                "regression_labels": rng.uniform(-3, 3, n).astype("f4")}
        lengths = rng.integers(1, t + 1, n)
        for i, length in enumerate(lengths):
            part["audio"][i, length:] = 0
            part["vision"][i, length:] = 0
        if not aligned:
            part["audio_lengths"], part["vision_lengths"] = list(lengths), list(lengths)
        part["audio"][0, 0, 0] = -np.inf  # MOSEI's COVAREP has these
        if drop:
            del part[drop]
        data[split] = part
    return data, lengths


@pytest.mark.parametrize("aligned", [False, True])
def test_mmsa_pickles(tmp_path, aligned):
    data, lengths = mmsa_dict(aligned=aligned)
    path = tmp_path / ("aligned_50.pkl" if aligned else "unaligned_50.pkl")
    path.write_bytes(pickle.dumps(data))
    ds = load_mmsa_pickle(path)
    assert ds.width("audio") == 5 and ds.width("visual") == 20
    np.testing.assert_array_equal(ds.test.visual_lengths, lengths)
    assert np.isfinite(ds.train.audio).all()


def test_mmsa_pickle_with_missing_key(tmp_path):
    data, _ = mmsa_dict(drop="regression_labels")
    (tmp_path / "x.pkl").write_bytes(pickle.dumps(data))
    with pytest.raises(DataError, match=r"missing keys \['regression_labels'\]"):
        load_mmsa_pickle(tmp_path / "x.pkl")


def test_not_a_pickle(tmp_path):
    (tmp_path / "x.pkl").write_bytes(b"not a pickle at all")
    with pytest.raises(DataError, match="not a readable pickle"):
        load_mmsa_pickle(tmp_path / "x.pkl")


def test_urfunny_folder(tmp_path):
    rng = np.random.default_rng(0)
    ids = list(range(12))
    folds = {"train": ids[:6], "dev": ids[6:9], "test": ids[9:]}
    language = {i: {"punchline_sentence": f"and then he said {i}"} for i in ids}
    covarep = {i: {"punchline_features": rng.normal(size=(3 + i % 4, 81))} for i in ids}
    openface = {i: {"punchline_features": rng.normal(size=(3 + i % 4, 75))} for i in ids}
    labels = {i: i % 2 for i in ids}
    for name, obj in zip(("data_folds", "language_sdk", "covarep_features_sdk", "openface_features_sdk",
                          "humor_label_sdk"), (folds, language, covarep, openface, labels)):
        (tmp_path / f"{name}.pkl").write_bytes(pickle.dumps(obj))
    ds = load_dataset(str(tmp_path))
    assert ds.task == "binary" and len(ds.valid) == 3
    assert ds.train.audio_lengths.tolist() == [3, 4, 5, 6, 3, 4]
    (tmp_path / "humor_label_sdk.pkl").unlink()
    with pytest.raises(DataError, match="humor_label_sdk.pkl"):
        load_urfunny(tmp_path)


def test_unknown_data_path():
    with pytest.raises(DataError, match="no such file or directory"):
        load_dataset("/nonexistent/place")


def test_synthetic_is_seeded_and_has_near_duplicates():
    a, b = synthetic_dataset(n=300, seed=3), synthetic_dataset(n=300, seed=3)
    assert a.train.texts == b.train.texts and np.array_equal(a.train.audio, b.train.audio)
    texts, labels = a.train.texts, a.train.labels
    gaps = [abs(labels[i] - labels[i + 1]) for i in range(len(texts) - 1) if texts[i] == texts[i + 1]]
    assert len(gaps) > 10
    assert 0.1 < np.median(gaps) < 0.6  # the twins differ through non-text cues only
    assert synthetic_dataset(n=300, seed=4).train.texts != a.train.texts


def test_batcher_pads_and_trims(tmp_path):
    write_native(tmp_path)
    ds = load_native(tmp_path)
    batch = Batcher(ds.train, load_tokenizer("tiny"), max_text_tokens=16).batch(np.arange(4))
    assert batch["input_ids"].shape[0] == 4
    assert int(batch["audio_lengths"].max()) == batch["audio"].shape[1]
    assert batch["attention_mask"][0].sum() == 2  # the empty transcript: [CLS] [SEP]


@pytest.mark.skipif(not MOSI_DIR.is_dir(), reason=f"real CMU-MOSI folder {MOSI_DIR} is absent")
def test_real_cmu_mosi_loads_in_the_wo_v_setting():
    ds = load_dataset(str(MOSI_DIR))
    assert (len(ds.train), len(ds.valid), len(ds.test)) == (1284, 229, 686)
    assert ds.modalities == ("text", "audio") and ds.width("audio") == 73
    empty = [i for s in (ds.train, ds.valid, ds.test) for i, t in zip(s.ids, s.texts) if not t.strip()]
    assert sorted(empty) == ["2WGyTLYerpo_44", "5W7Z1C_fDaE_24", "BioHAh1qJAQ_30", "lXPQBPVc5Cw_30"]


def _long_split(n=20, longest=30, d=3, seed=0):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, longest + 1, n)
    lengths[0] = longest
    array = rng.normal(size=(n, longest, d)).astype("f4")
    for i, length in enumerate(lengths):
        array[i, length:] = 1e6  # padding garbage: statistics must not see it
    return Split([f"s{i}" for i in range(n)], [" ".join(["word"] * (1 + i % 9)) for i in range(n)],
                 rng.uniform(-3, 3, n).astype("f4"), array, lengths), lengths


def test_every_frame_is_kept_up_to_the_cap_and_a_cut_is_logged(caplog):
    split, lengths = _long_split()
    tok = load_tokenizer("tiny")
    kept = Batcher(split, tok, max_frames=DEFAULT_MAX_FRAMES)
    assert kept.seq["audio"][0].shape[1] == 30 and kept.seq["audio"][1].tolist() == lengths.tolist()
    assert "cut" not in caplog.text
    Batcher(split, tok, max_frames=10, name="train")
    cut = int((lengths > 10).sum())
    assert f"train audio: {cut} of 20 sequences are longer than max_frames=10 and were cut (longest 30 frames)" \
        in caplog.text


def test_pad_sequences_logs_what_it_cuts(caplog):
    seqs = [np.ones((n, 2), "f4") for n in (3, 8, 12)]
    array, lengths = pad_sequences(seqs, 10, "UR-FUNNY train audio")
    assert lengths.tolist() == [3, 8, 10] and array.shape == (3, 10, 2)
    assert "UR-FUNNY train audio: 1 of 3 sequences are longer than max_frames=10" in caplog.text
    assert pad_sequences(seqs)[0].shape == (3, 12, 2)  # no cap: nothing cut


def test_feature_stats_count_real_frames_only():
    split, lengths = _long_split()
    mean, std = feature_stats(split)["audio"]
    real = np.concatenate([split.audio[i, :n] for i, n in enumerate(lengths)])
    np.testing.assert_allclose(mean, real.mean(0), rtol=1e-5)
    np.testing.assert_allclose(std, real.std(0), rtol=1e-5)
    assert "visual" not in feature_stats(split)


def test_bucketed_batches_cover_every_sample_once_and_pad_less():
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(1, 50, (1000,), generator=g)
    batches = bucketed_batches(lengths, 32, shuffle=True, generator=g)
    flat = torch.cat(batches)
    assert sorted(flat.tolist()) == list(range(1000))
    plain = torch.randperm(1000, generator=g).split(32)
    padded = lambda bs: sum(int(lengths[b].max()) * len(b) for b in bs)  # noqa: E731
    assert padded(batches) < 0.7 * padded(plain)
    again = bucketed_batches(lengths, 32, shuffle=True, generator=g)
    assert [b.tolist() for b in again] != [b.tolist() for b in batches]  # a new composition each epoch
    ordered = bucketed_batches(lengths, 32)
    assert torch.equal(torch.cat(ordered).sort().values, torch.arange(1000))


def test_batcher_orders_by_text_then_frames():
    split, _ = _long_split()
    b = Batcher(split, load_tokenizer("tiny"), max_text_tokens=16)
    for index in b.order(4, bucket=True):
        batch = b.batch(index)
        tokens = batch["attention_mask"].sum(1)
        assert int(tokens.max() - tokens.min()) <= 1  # texts of one length come together
