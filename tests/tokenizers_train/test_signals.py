"""Point-cloud, time-series and speech tokenizer training: the shipped configs run through `train-tokenizer`
on a corpus with the scenes' point_cloud, imu and speech series, and save loadable tokenizers with held-out scores."""

import pytest

from fourm.data.corpus import storage_entry, write_manifest, write_shard
from fourm.modalities import CORPUS
from fourm.tokenization.base import load_tokenizers
from fourm.train.curves import read_metrics
from pseudolabel.sources.scenes import SERIES, render_scene
from tokenizers_train import train_tokenizer

TRAIN = ["batch_size=8", "eval_samples=4", "train.steps=3", "train.warmup_steps=1", "train.eval_every=0",
         "train.save_every=0", "train.log_every=1", "train.precision=fp32"]
CASES = {
    "point_cloud": ["model.num_points=128", "model.num_groups=8", "model.group_size=16", "model.grid_size=4",
                    "model.dim=16", "model.codebook_size=16", "model.codebook_dim=4"],
    "imu": ["model.dim=16", "model.depth=1", "model.codebook_size=16", "model.codebook_dim=4"],
    "speech": ["model.max_samples=12800", "model.dim=16", "model.depth=1", "model.codebook_size=16",
               "model.codebook_dim=4"],
}
MODALITY = {"point_cloud": "tok_point_cloud", "imu": "tok_imu", "speech": "tok_speech"}

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    samples = [{"__key__": f"s{i:04d}", **{k: v for k, v in render_scene(i, 24, SERIES).items() if k in SERIES}}
               for i in range(16)]
    write_shard(root, 0, samples, {k: CORPUS[k].storage for k in SERIES})
    write_manifest(root, {"modalities": {k: storage_entry(CORPUS[k].storage) for k in SERIES}})
    return str(root)


@pytest.mark.parametrize("name", CASES)
def test_shipped_config_trains_and_saves(corpus, tmp_path, name):
    model = train_tokenizer(f"configs/tokenizers/{name}.yaml", corpus, tmp_path, [*TRAIN, *CASES[name]],
                            progress=False)
    loaded = load_tokenizers(tmp_path)
    assert list(loaded) == [MODALITY[name]] and loaded[MODALITY[name]].vocab_size == model.vocab_size
    rows = read_metrics(tmp_path / "runs" / MODALITY[name] / "metrics.jsonl")
    scores = [row for row in rows if any(k.startswith("eval/") for k in row)]
    key = {"point_cloud": "eval/chamfer", "speech": "eval/l1_db_voiced"}.get(name, "eval/nrmse")
    assert scores and scores[-1][key] > 0 and 0 < scores[-1]["eval/usage"] <= 1


def test_video_config_wraps_the_rgb_tokenizer_of_the_same_folder(corpus, tmp_path):
    from fourm.tokenization.vqvae import ImageVQConfig, ImageVQVAE

    with pytest.raises(FileNotFoundError, match="no RGB tokenizer at"):
        train_tokenizer("configs/tokenizers/video.yaml", corpus, tmp_path, progress=False)
    rgb = ImageVQVAE(ImageVQConfig(image_size=24, patch_size=8, dim=16, encoder_depth=1, decoder_depth=1, heads=2,
                                   codebook_size=16, codebook_dim=4))
    rgb.save_pretrained(tmp_path / "tok_rgb")
    video = train_tokenizer("configs/tokenizers/video.yaml", corpus, tmp_path, progress=False)
    loaded = load_tokenizers(tmp_path)
    assert sorted(loaded) == ["tok_rgb", "tok_video"] and loaded["tok_video"].num_tokens == 8 * 9 == video.num_tokens
