"""The image VQ-VAE and its pixel codecs: units, shapes, quantizer properties, save/load, errors."""

import json

import numpy as np
import pytest
import torch

from fourm.model.blocks import EncoderBlock
from fourm.pretrained import load_pretrained
from fourm.tokenization.base import ModalityTokenizer
from fourm.tokenization.pixels import CODECS, DepthCodec, get_codec
from fourm.tokenization.vqvae import ImageVQConfig, ImageVQVAE

SIDE, PATCH = 16, 4
NUM_CLASSES, FEATURES = 6, 8
MODALITY_OF = {"rgb": "tok_rgb", "depth": "tok_depth", "normal": "tok_normal", "semseg": "tok_semseg",
               "canny_edge": "tok_canny_edge", "sam_edge": "tok_sam_edge", "clip": "tok_clip",
               "dinov2": "tok_dinov2", "imagebind": "tok_imagebind", "xray": "tok_xray", "thermal": "tok_thermal",
               "hyperspectral": "tok_hyperspectral"}


pytestmark = pytest.mark.usefixtures("one_thread")


def sample_values(name: str, n: int = 3, side: int = SIDE, seed: int = 0) -> np.ndarray:
    """Corpus-like values of codec ``name``, with unknown pixels where the modality has them."""
    rng = np.random.default_rng(seed)
    kind = CODECS[name].name
    if kind == "rgb":
        return rng.integers(0, 256, (n, side, side, 3), dtype=np.uint8)
    if kind == "depth":
        d = rng.uniform(0.5, 30.0, (n, side, side)).astype(np.float32)
        d[:, : side // 4] = 0  # sky
        return d
    if kind == "normal":
        v = rng.normal(size=(n, side, side, 3))
        v = (v / np.linalg.norm(v, axis=-1, keepdims=True)).astype(np.float32)
        v[:, : side // 4] = 0
        return v
    if kind == "semseg":
        return rng.integers(0, NUM_CLASSES, (n, side, side), dtype=np.uint8)
    if kind == "canny_edge":
        return (rng.random((n, side, side)) < 0.1).astype(np.uint8) * 255
    if kind == "mask":
        return rng.random((n, side, side)) < 0.5
    if kind == "xray":
        a = rng.uniform(0, 4, (n, side, side)).astype(np.float32)
        a[:, : side // 4] = 0  # rays that meet nothing
        return a
    if kind == "thermal":
        return rng.uniform(240, 340, (n, side, side)).astype(np.float32)
    if kind == "hyperspectral":  # FEATURES bands: the tokenizer takes any count
        return rng.integers(0, 256, (n, side, side, FEATURES), dtype=np.uint8)
    return rng.normal(size=(n, side, side, FEATURES)).astype(np.float16)


def codec_args(name: str) -> dict:
    return {"num_classes": NUM_CLASSES, "channels": FEATURES}


def tiny(name: str = "rgb", **overrides) -> ImageVQVAE:
    torch.manual_seed(0)
    cfg = dict(modality=MODALITY_OF.get(name, f"test_{name}"), source=name, image_size=SIDE, patch_size=PATCH,
               dim=32, encoder_depth=1, decoder_depth=1, heads=2, codebook_size=64, codebook_dim=8,
               num_classes=NUM_CLASSES if name == "semseg" else None,
               channels=FEATURES if CODECS[name].channels_from_data else None)
    return ImageVQVAE(ImageVQConfig(**{**cfg, **overrides}))


def assert_values_close(a: np.ndarray, b: np.ndarray, name: str):
    assert a.shape == b.shape and a.dtype == b.dtype, (name, a.shape, b.shape, a.dtype, b.dtype)
    if a.dtype.kind == "f":
        np.testing.assert_allclose(a.astype(np.float64), b.astype(np.float64), rtol=2e-3, atol=2e-3)
    else:
        np.testing.assert_array_equal(a, b)


# ----------------------------------------------------------------------------- codecs
@pytest.mark.parametrize("name", sorted(CODECS))
def test_codec_output_of_the_input_gives_the_values_back(name):
    """from_output(to_input(v)) == v: the network's target decodes to exactly the corpus values."""
    codec, values = get_codec(name, **codec_args(name)), sample_values(name)
    x = codec.to_input(list(values))
    assert x.dtype == torch.float32 and x.shape == (3, codec.in_channels, SIDE, SIDE)
    assert codec.in_channels == codec.out_channels
    assert_values_close(codec.from_output(x), values, name)


@pytest.mark.parametrize("name", sorted(CODECS))
def test_codec_metrics_are_perfect_on_the_truth_and_loss_is_finite(name):
    codec, values = get_codec(name, **codec_args(name)), sample_values(name)
    scores = codec.metrics(values, values)
    perfect = {"psnr": 60, "abs_rel": 0, "delta1": 1, "angle_mean": 0, "miou": 1, "f1": 1, "iou": 1, "cosine": 1}
    for key, best in perfect.items():
        if key in scores:
            assert scores[key] >= best - 1e-6 if best else scores[key] <= 1e-3, (key, scores[key])
    x = codec.to_input(values)
    pred = torch.randn(len(x), codec.out_channels, SIDE, SIDE, requires_grad=True)
    loss, logs = codec.loss(pred, x)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(pred.grad).all() and logs


def test_depth_keeps_metres_and_unknown_pixels():
    codec = DepthCodec()
    d = np.array([[[0.0, 2.0, 20.0, 0.1]]], np.float32)
    x = codec.to_input(d)
    # fixed constants, not per-image: the same depth always maps to the same input
    assert torch.allclose(x[0, 0, 0, 1:], (torch.tensor([2.0, 20.0, 0.1]).log() - codec.LOG_CENTRE) / codec.LOG_SCALE)
    assert x[0, 1].tolist() == [[0.0, 1.0, 1.0, 1.0]]
    back = codec.from_output(x)
    assert back[0, 0, 0] == 0.0 and np.allclose(back[0, 0, 1:], [2.0, 20.0, 0.1], rtol=1e-5)


def test_normal_hflip_negates_x():
    codec = get_codec("normal")
    n = sample_values("normal", n=1)
    x = codec.to_input(n)
    flipped = codec.hflip(x)
    assert torch.equal(flipped[:, 0], -x[:, 0].flip(-1))
    assert torch.equal(flipped[:, 1:], x[:, 1:].flip(-1))
    assert torch.equal(get_codec("rgb").hflip(x), x.flip(-1))


def test_metrics_on_known_errors():
    rgb = np.zeros((1, 4, 4, 3), np.uint8)
    assert get_codec("rgb").metrics(rgb + 1, rgb)["psnr"] == pytest.approx(20 * np.log10(255), rel=1e-6)
    depth = np.full((1, 2, 2), 2.0, np.float32)
    assert get_codec("depth").metrics(depth * 1.1, depth)["abs_rel"] == pytest.approx(0.1, rel=1e-5)
    up, tilted = np.array([0, 1, 0.0]), np.array([0, np.cos(0.1), np.sin(0.1)])
    angle = get_codec("normal").metrics(np.broadcast_to(tilted, (1, 2, 2, 3)), np.broadcast_to(up, (1, 2, 2, 3)))
    assert angle["angle_mean"] == pytest.approx(np.degrees(0.1), rel=1e-4)
    truth = np.array([[[0, 0, 1, 1]]], np.uint8)
    assert get_codec("semseg", num_classes=3).metrics(np.zeros_like(truth), truth)["miou"] == pytest.approx(0.25)
    edge = np.zeros((1, 5, 5), np.uint8)
    edge[0, 2, 2] = 255
    shifted = np.roll(edge, 1, axis=2)  # one pixel off: a hit within the 1 px tolerance
    assert get_codec("canny_edge").metrics(shifted, edge)["f1"] == pytest.approx(1.0)
    kelvin = np.array([[[300.0, 200.0]]], np.float32)
    assert get_codec("thermal").metrics(kelvin + 5, kelvin)["rel_error"] == pytest.approx(10 / 500)
    xray = np.array([[[0.0, 2.0]]], np.float32)  # relative to the total: rays through nothing count too
    assert get_codec("xray").metrics(xray + 1, xray)["rel_error"] == pytest.approx(1.0)
    # a spectrum at half the brightness has the same shape: no spectral angle
    bands = np.full((1, 1, 1, 8), 200, np.uint8)
    spectral = get_codec("hyperspectral", channels=8).metrics(np.round(bands / np.sqrt(2)).astype(np.uint8), bands)
    assert spectral["spectral_angle"] < 0.5 and spectral["psnr"] < 20


# ----------------------------------------------------------------------------- the tokenizer
@pytest.mark.parametrize("name", ["rgb", "depth", "normal", "semseg", "canny_edge", "mask", "clip", "xray", "thermal",
                                  "hyperspectral"])
def test_encode_decode_round_trip_in_corpus_units(name):
    model = tiny(name)
    values = sample_values(name)
    assert isinstance(model, ModalityTokenizer)
    ids = model.encode(list(values))
    assert ids.dtype == torch.long and ids.shape == (3, model.num_tokens) == (3, (SIDE // PATCH) ** 2)
    assert ids.min() >= 0 and ids.max() < model.vocab_size
    back = model.decode(ids)
    assert back.shape == values.shape and back.dtype == values.dtype
    assert model.training  # encode/decode run in eval mode and restore the caller's mode


@pytest.mark.parametrize("quantizer", ["vq", "fsq"])
def test_embed_ids_equals_the_quantized_latents(quantizer):
    """The VQP `test_vq_eval` idea: latents rebuilt from ids are exactly what the forward pass used."""
    model = tiny(quantizer=quantizer, fsq_levels=[4, 4, 3]).eval()
    x = model.to_input(sample_values("rgb"))
    with torch.no_grad():
        z_q, ids, _ = model.quantize(x)
        assert z_q.shape == (3, model.latent_dim, SIDE // PATCH, SIDE // PATCH)
        assert torch.allclose(model.embed_ids(ids), z_q, atol=1e-6)
        x_hat, ids2, _ = model(x)
        assert torch.equal(ids, ids2) and torch.allclose(model.decode_latents(z_q), x_hat)
    assert model.vocab_size == (48 if quantizer == "fsq" else 64)


@pytest.mark.parametrize("quantizer,window", [("vq", None), ("fsq", None), ("vq", 2 * PATCH)])
def test_training_step_has_gradients_and_no_nans(quantizer, window):
    model = tiny(quantizer=quantizer, decoder_window=window).train()
    x = model.to_input(sample_values("rgb", n=8))
    x_hat, ids, aux = model(x)
    assert x_hat.shape == x.shape
    loss, _ = model.codec.loss(x_hat, x)
    (loss + aux).backward()
    grads = [p.grad for p in model.encoder.parameters()]
    assert torch.isfinite(loss) and all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)  # gradients reach the encoder through the quantizer


@pytest.mark.parametrize("quantizer", ["vq", "fsq"])
def test_save_and_load_give_identical_tokens_and_values(tmp_path, quantizer):
    model = tiny("semseg", quantizer=quantizer)
    model.class_names = ["a", "b", "c", "d", "e", "f"]
    values = sample_values("semseg")
    model.save_pretrained(tmp_path / "tok")
    loaded = load_pretrained(tmp_path / "tok")
    assert type(loaded) is ImageVQVAE and loaded.class_names == model.class_names
    ids = model.encode(values)
    assert torch.equal(loaded.encode(values), ids)
    np.testing.assert_array_equal(loaded.decode(ids), model.decode(ids))


@pytest.mark.parametrize("mlp", ["gelu", "swiglu"])
def test_vit_blocks_are_the_models_and_start_as_the_identity(mlp):
    model = tiny(mlp=mlp)
    vit = model.encoder
    assert all(isinstance(b, EncoderBlock) for b in vit.blocks)
    x = torch.randn(2, 16, vit.proj_in.in_features)
    # zero-initialised residual branches: the blocks pass their input through untouched
    torch.testing.assert_close(vit(x), vit.proj_out(vit.norm(vit.norm_in(vit.proj_in(x)) + vit.pos)))


def test_checkpoints_from_before_the_mlp_setting_and_the_use_names_still_load(tmp_path):
    model = tiny()
    # the weight names of the tokenizer's former own blocks (Attention + Linear-GELU-Linear)
    assert {k.split(".", 3)[-1] for k in model.state_dict() if ".blocks." in k} == {
        f"{m}.{p}" for m in ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.0", "mlp.2") for p in ("weight", "bias")}
    model.save_pretrained(tmp_path / "tok")
    config = json.loads((tmp_path / "tok" / "config.json").read_text())
    del config["config"]["mlp"]  # as written before the setting existed
    config["config"]["kmeans_init"] = config["config"].pop("use_kmeans_init")  # and before the use_* names
    (tmp_path / "tok" / "config.json").write_text(json.dumps(config))
    values = sample_values("rgb")
    assert torch.equal(load_pretrained(tmp_path / "tok").encode(values), model.encode(values))


def test_wrong_inputs_give_clear_errors():
    model = tiny()
    with pytest.raises(ValueError, match=r"16x16 px\), got \(1, 3, 32, 32\)"):
        model.encode(sample_values("rgb", n=1, side=32))
    with pytest.raises(ValueError, match="expected ids"):
        model.decode(torch.zeros(1, 5, dtype=torch.long))
    with pytest.raises(ValueError, match=r"ids must lie in \[0, 64\)"):
        model.decode(torch.full((1, 16), 64))
    with pytest.raises(ValueError, match="decoder_window 7"):
        ImageVQConfig(patch_size=4, decoder_window=7)
    with pytest.raises(ValueError, match="multiple of patch_size"):
        ImageVQConfig(image_size=30, patch_size=8)
    with pytest.raises(ValueError, match="reads corpus 'depth'"):
        ImageVQConfig(modality="tok_depth", source="rgb")
    with pytest.raises(LookupError, match="no pixel codec"):
        get_codec("caption")


def test_a_many_band_image_trains_through_one_tokenizer():
    """The image family takes C input channels: 32 bands in, 32 out, gradients to the patch projection."""
    model = tiny("hyperspectral", channels=32).train()
    values = np.random.default_rng(0).integers(0, 256, (4, SIDE, SIDE, 32), dtype=np.uint8)
    x = model.to_input(values)
    assert x.shape == (4, 32, SIDE, SIDE) and model.encoder.proj_in.in_features == 32 * PATCH * PATCH
    x_hat, _, aux = model(x)
    loss, _ = model.codec.loss(x_hat, x)
    (loss + aux).backward()
    assert x_hat.shape == x.shape and model.encoder.proj_in.weight.grad.abs().sum() > 0
    assert model.decode(model.encode(values)).shape == values.shape
    with pytest.raises(ValueError, match=r"expected \(H, W, 32\) images"):
        model.encode(values[..., :8])
