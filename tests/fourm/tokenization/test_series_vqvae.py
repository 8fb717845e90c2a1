"""Time-series tokenizer: shapes and units, token order in time, save/load, learning, bad input."""

import numpy as np
import pytest
import torch

from fourm.pretrained import load_pretrained
from fourm.tokenization.series_vqvae import SeriesVQVAE, SeriesVQVAEConfig
from pseudolabel.sources.scene_series import Trajectory, imu_times
from pseudolabel.sources.scenes import Scene
from tokenizers_train.series import evaluate_signals

TINY = dict(num_samples=64, channels=6, patch_size=8, codes_per_patch=2, dim=32, depth=1, codebook_size=64,
            codebook_dim=8)

pytestmark = pytest.mark.usefixtures("one_thread")


def imu_signals(n: int, seed: int = 0) -> torch.Tensor:
    """IMU signals of the scenes' camera moves (the exact series, without rendering the scenes)."""
    out = []
    for i in range(n):
        camera = Scene.sample(np.random.default_rng(seed * 1000 + i)).camera
        out.append(Trajectory.sample(camera, np.random.default_rng([seed, i])).imu(imu_times()))
    return torch.from_numpy(np.stack(out))


def make(x: torch.Tensor) -> SeriesVQVAE:
    torch.manual_seed(0)
    model = SeriesVQVAE(SeriesVQVAEConfig(**TINY))
    model.fit_normalization(x)
    model.train()(x[:32])
    return model.eval()


def test_round_trip_shapes_units_and_save_load(tmp_path):
    x = imu_signals(48)
    model = make(x)
    ids = model.encode(list(x[:5].numpy()))
    assert ids.shape == (5, 16) and ids.max() < 64 and model.num_tokens == 16
    out = model.decode(ids)
    assert len(out) == 5 and out[0].shape == (64, 6) and out[0].dtype == np.float32
    # a change in the second half of the signal moves only the tokens of the patches near it
    late = x[:1].clone()
    late[:, 48:] += 5 * model.scale
    changed = (model.encode(late) != model.encode(x[:1]))[0].reshape(8, 2).any(-1)
    assert not changed[:4].any() and changed[6:].any()
    model.save_pretrained(tmp_path / "tok")
    loaded = load_pretrained(tmp_path / "tok")
    assert isinstance(loaded, SeriesVQVAE) and torch.equal(loaded.encode(x[:5]), ids)
    assert np.array_equal(loaded.decode(ids)[0], out[0])


def test_training_lowers_the_signal_error():
    x = imu_signals(160)
    model = make(x)
    train, held = x[:128], x[128:]
    before = evaluate_signals(model, held)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for step in range(60):
        loss = model(train[torch.randperm(128, generator=torch.Generator().manual_seed(step))[:32]]).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = evaluate_signals(model.eval(), held)
    assert after["nrmse"] < 0.7 * before["nrmse"], (before, after)
    assert after["rmse_acc"] > 0 and after["rmse_gyro"] > 0


def test_bad_input_is_a_one_line_error():
    model = SeriesVQVAE(SeriesVQVAEConfig(**TINY))
    with pytest.raises(ValueError, match=r"expected signals \(64, 6\) \(samples, channels\), got shapes \[\(6, 64\)\]"):
        model.encode([np.zeros((6, 64))])
    with pytest.raises(ValueError, match="not a multiple of patch_size"):
        SeriesVQVAEConfig(num_samples=60, patch_size=8)
