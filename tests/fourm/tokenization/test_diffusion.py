"""The diffusion decoder tokenizer: ids are the base VQ-VAE's, decode units, determinism, save/load,
DDIM step count, training reduces the loss, and the trainer task end to end on tiny synthetic data."""

import json

import numpy as np
import pytest
import torch

from fourm.pretrained import load_pretrained
from fourm.tokenization.base import ModalityTokenizer
from fourm.tokenization.diffusion import (
    DiffusionConfig,
    DiffusionDecoderConfig,
    DiffusionDecoderTokenizer,
    diffusion_loss,
)
from fourm.tokenization.vqvae import ImageVQConfig, ImageVQVAE

SIDE, PATCH = 16, 4
MODALITY_OF = {"rgb": "tok_rgb", "depth": "tok_depth", "normal": "tok_normal", "canny_edge": "tok_canny_edge"}


def values(source: str, n: int = 3, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if source == "rgb":
        return rng.integers(0, 256, (n, SIDE, SIDE, 3), dtype=np.uint8)
    if source == "depth":
        d = rng.uniform(0.5, 30.0, (n, SIDE, SIDE)).astype(np.float32)
        d[:, : SIDE // 4] = 0  # sky
        return d
    if source == "normal":
        v = rng.normal(size=(n, SIDE, SIDE, 3))
        return (v / np.linalg.norm(v, axis=-1, keepdims=True)).astype(np.float32)
    return (rng.random((n, SIDE, SIDE)) < 0.1).astype(np.uint8) * 255


def tiny_vq(source: str = "rgb") -> ImageVQVAE:
    torch.manual_seed(0)
    return ImageVQVAE(ImageVQConfig(modality=MODALITY_OF[source], source=source, image_size=SIDE, patch_size=PATCH,
                                    dim=32, encoder_depth=1, decoder_depth=1, heads=2, codebook_size=64,
                                    codebook_dim=8)).eval()


def tiny(source: str = "rgb", **overrides) -> DiffusionDecoderTokenizer:
    diffusion = DiffusionConfig(**{"block_out_channels": [8, 16], "norm_num_groups": 4, "steps": 4, **overrides})
    torch.manual_seed(0)
    return DiffusionDecoderTokenizer.from_vq(tiny_vq(source), diffusion)


@pytest.mark.parametrize("source", list(MODALITY_OF))
def test_decode_gives_corpus_units(source):
    model = tiny(source)
    assert isinstance(model, ModalityTokenizer)
    assert (model.modality, model.vocab_size, model.num_tokens) == (MODALITY_OF[source], 64, 16)
    v = values(source)
    out = model.decode(model.encode(v))
    assert out.shape == v.shape and out.dtype == v.dtype
    if source == "depth":
        assert ((out == 0) | ((out >= 0.0999) & (out <= 100.01))).all()  # the codec clamps to 0.1-100 m
    if source == "normal":
        norm = np.linalg.norm(out, axis=-1)
        assert np.allclose(norm[norm > 0], 1, atol=1e-4)
    if source == "canny_edge":
        assert set(np.unique(out)) <= {0, 255}


def test_encode_is_the_base_vq_encode():
    vq, model = tiny_vq(), tiny()
    v = values("rgb", n=5)
    assert torch.equal(model.encode(v), vq.encode(v))
    assert not any(p.requires_grad for p in model.vq.parameters())


@pytest.mark.parametrize("upsample,use_plain_decode,use_residual,pixel_shuffle,prediction_type",
                         [("nearest", True, True, 2, "sample"), ("learned", False, False, 1, "v_prediction"),
                          ("nearest", True, False, 2, "v_prediction")])
def test_save_load_same_decode(tmp_path, upsample, use_plain_decode, use_residual, pixel_shuffle, prediction_type):
    model = tiny(upsample=upsample, use_plain_decode=use_plain_decode, use_residual=use_residual,
                 pixel_shuffle=pixel_shuffle, prediction_type=prediction_type, residual_scale=4.0)
    with torch.no_grad():  # an untrained UNet's last conv is zero: make the decode depend on every weight
        for p in model.unet.parameters():
            p.add_(0.05 * torch.randn_like(p))
    ids = model.encode(values("rgb"))
    model.save_pretrained(tmp_path / "tok")
    saved = json.loads((tmp_path / "tok" / "config.json").read_text())
    assert saved["class"] == "vqvae_diffusion" and saved["config"]["vq"]["patch_size"] == PATCH
    loaded = load_pretrained(tmp_path / "tok")
    assert isinstance(loaded, DiffusionDecoderTokenizer)
    a = model.decode(ids, generator=torch.Generator().manual_seed(3))
    b = loaded.decode(ids, generator=torch.Generator().manual_seed(3))
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(loaded.vq.decode(ids), model.vq.decode(ids))  # the base travels along


def test_decode_is_deterministic_and_batch_independent():
    model = tiny()
    with torch.no_grad():
        for p in model.unet.parameters():
            p.add_(0.05 * torch.randn_like(p))
    ids = model.encode(values("rgb", n=4))
    first = model.decode(ids)
    np.testing.assert_array_equal(first, model.decode(ids))  # default: the config's seed
    np.testing.assert_array_equal(first, model.decode(ids, batch_size=1))
    other = model.decode(ids, generator=torch.Generator().manual_seed(123))
    assert not np.array_equal(first, other)


@pytest.mark.parametrize("steps", [None, 1, 7])
def test_ddim_step_count_is_respected(steps):
    model = tiny()
    want = steps or model.config.diffusion.steps
    scheduler = model.inference_scheduler(steps)
    assert len(scheduler.timesteps) == want
    assert int(scheduler.timesteps[0]) == model.config.diffusion.num_train_timesteps - 1  # starts at pure noise
    calls = []
    handle = model.unet.register_forward_hook(lambda *a: calls.append(1))
    try:
        model.decode(model.encode(values("rgb", n=2)), steps=steps)
    finally:
        handle.remove()
    assert len(calls) == want
    with pytest.raises(ValueError, match="steps"):
        model.inference_scheduler(5000)


def test_residual_decoder_adds_to_the_plain_decode():
    """A residual decoder that predicts a zero residual (x0-prediction, zeroed output) gives the plain decode."""
    model = tiny(prediction_type="sample", residual_scale=3.0)
    with torch.no_grad():
        model.unet.conv_out.weight.zero_()
        model.unet.conv_out.bias.zero_()
    ids = model.encode(values("rgb", n=4))
    np.testing.assert_array_equal(model.decode(ids, steps=5), model.vq.decode(ids))


def test_training_reduces_the_diffusion_loss():
    model = tiny().train()
    x = model.vq.to_input(values("rgb", n=8))
    z_q = model.latents(x)
    plain = model.plain_decode(z_q)

    def fixed_loss():
        with torch.no_grad():
            return sum(diffusion_loss(model, x, z_q, plain, torch.Generator().manual_seed(s))[0].item()
                       for s in range(4)) / 4

    before = fixed_loss()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    for step in range(30):
        loss, logs = diffusion_loss(model, x, z_q, plain, torch.Generator().manual_seed(100 + step))
        assert torch.isfinite(loss) and "mse" in logs
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert fixed_loss() < 0.9 * before
    assert not model.vq.training  # frozen base stays in eval mode


def test_bad_configs_are_refused():
    with pytest.raises(ValueError, match="epsilon"):
        DiffusionConfig(prediction_type="epsilon")
    with pytest.raises(ValueError, match="use_residual needs"):
        DiffusionConfig(use_plain_decode=False)
    with pytest.raises(ValueError, match="upsample"):
        DiffusionConfig(upsample="bicubic")
    with pytest.raises(ValueError, match="no diffusion decoder"):
        DiffusionDecoderConfig(vq=ImageVQConfig(modality="tok_semseg", source="semseg", num_classes=4))


def test_trainer_task_reports_both_decoders(tmp_path):
    from fourm.train.loop import TrainConfig, train
    from tokenizers_train import diffusion, image

    vq = tiny_vq()
    train_cfg = TrainConfig(steps=3, warmup_steps=1, eval_every=0, save_every=0, log_every=1, precision="fp32")
    cfg = diffusion.Config(base="unused", diffusion=DiffusionConfig(block_out_channels=[8, 16], norm_num_groups=4),
                           batch_size=4, crop=8, eval_samples=3, eval_steps=2, train=train_cfg)
    image_cfg = image.Config(modality="tok_rgb", model=vq.config, batch_size=4, eval_samples=3, train=train_cfg)
    data = image.ImageTokenizerTask(image_cfg, values("rgb", n=12), values("rgb", n=3, seed=1))
    task = diffusion.DiffusionDecoderTask(cfg, vq, data)
    assert task.cfg.diffusion.residual_scale > 0  # measured on the training values
    model = train(task, train_cfg, tmp_path / "run", progress=False)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert {"eval/diffusion_psnr", "eval/plain_psnr"} <= set(summary)
    assert torch.equal(model.encode(values("rgb")), vq.encode(values("rgb")))
