"""FourM.encode_features and `fourm features` on a nano model and a small scenes corpus."""

import pytest
import torch

from fourm.cli import main
from fourm.generation import Pipeline
from fourm.transfer.features import EncoderInputs, extract_features, read_features


@pytest.fixture(scope="module")
def pipe(model_dir, tokenizers_dir):
    return Pipeline.from_pretrained(model_dir, tokenizers_dir)


@pytest.fixture(scope="module")
def data(pipe, scenes):
    return EncoderInputs.from_corpus(pipe, scenes, ["rgb", "depth"], limit=6)[0]


def test_shapes_of_each_pool(pipe, data):
    batch = data.batch(range(4))
    dim = pipe.model.config.dim
    mean = pipe.model.encode_features(batch, "mean")
    assert mean.values.shape == (4, dim) and mean.valid.all()
    per = pipe.model.encode_features(batch, "modality", ["rgb", "tok_depth"])
    assert per.values.shape == (4, 2, dim) and per.valid.all()
    every = pipe.model.encode_features(batch, "none")
    assert every.values.shape == (4, 32, dim) and every.valid.sum() == 4 * 32  # 16 rgb patches + 16 depth tokens
    with pytest.raises(ValueError, match="pool must be one of"):
        pipe.model.encode_features(batch, "max")
    with pytest.raises(ValueError, match="'tok_normal' is not one of this model's"):
        pipe.model.encode_features(batch, "mean", ["tok_normal"])


def test_pooling_ignores_absent_modalities_and_padding(pipe, data):
    """rgb features of a sample equal those of the same sample batched with depth (the depth tokens
    dropped before the encoder) and those of a batch where another sample carries more tokens."""
    model = pipe.model
    both = data.batch([0, 1])
    rgb_only = EncoderInputs(pipe, data.keys, {"rgb": data.tokenized["rgb"]}).batch([0])
    alone = model.encode_features(rgb_only, "mean").values[0]
    torch.testing.assert_close(model.encode_features(both, "mean", ["rgb"]).values[0], alone)
    # sample 0 without depth beside sample 1 with it: padded rows, and a modality absent in one sample
    partial = EncoderInputs(pipe, data.keys, {"rgb": data.tokenized["rgb"],
                                              "tok_depth": [None, *data.tokenized["tok_depth"][1:]]})
    mixed = model.encode_features(partial.batch([0, 1]), "modality", ["rgb", "tok_depth"])
    assert mixed.valid.tolist() == [[True, False], [True, True]]
    torch.testing.assert_close(mixed.values[0, 0], alone)
    assert mixed.values[0, 1].abs().sum() == 0
    # with depth the features differ: the encoder really saw it
    assert not torch.allclose(model.encode_features(both, "mean").values[0], alone)


def test_features_cli_writes_a_loadable_file_with_keys(model_dir, tokenizers_dir, scenes, tmp_path, pipe, data):
    out = tmp_path / "f.safetensors"
    args = ["features", "--model", str(model_dir), "--tokenizers", str(tokenizers_dir), "--corpus", str(scenes),
            "--inputs", "rgb,depth", "--out", str(out), "--batch-size", "4", "--limit", "6"]
    assert main(args) == 0
    tensors, keys, meta = read_features(out)
    assert keys == data.keys and len(set(keys)) == 6 and meta["pool"] == "mean"
    assert tensors["features"].shape == (6, pipe.model.config.dim)
    torch.testing.assert_close(tensors["features"], extract_features(pipe.model, data, batch_size=6,
                                                                     progress=False)["features"])
    assert main([*args[:-4], "--pool", "none", "--out", str(tmp_path / "n.safetensors")]) == 0
    assert read_features(tmp_path / "n.safetensors")[0]["features"].shape == (24, 32, pipe.model.config.dim)


def test_bad_inputs_are_one_line(model_dir, tokenizers_dir, scenes, tmp_path, capsys):
    base = ["features", "--model", str(model_dir), "--tokenizers", str(tokenizers_dir), "--corpus", str(scenes),
            "--out", str(tmp_path / "x.safetensors")]
    assert main([*base, "--inputs", "sonar"]) == 2
    assert "unknown modality 'sonar'" in capsys.readouterr().err
    assert main([*base, "--inputs", "normal"]) == 2
    err = capsys.readouterr().err
    assert "does not know modality 'normal'" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x.safetensors").exists()
