"""Modality kinds: every kind has one handler, and a new kind is one handler plus a registry entry.

The toy kind below is defined in this test alone (nothing in ``fourm`` knows it): a multichannel
time series (T, C) of floats, cut into patches of 4 steps that a linear map embeds, 1D positions,
input only. A modality of that kind goes through the whole training path (token corpus in memory,
masking, batches, embeddings) and a tiny FourM learns to read from it which of 8 classes it
holds (the channels' levels encode it). If the loader, masking or embeddings still tested kinds
themselves, this kind would fail there.
"""

import numpy as np
import pytest
import torch
from torch import nn

from fourm.data.loader import TokenDataset, make_batch
from fourm.data.masking import Masker, MaskingConfig
from fourm.kinds import KINDS, ContinuousKind, handler, register_kind, rgb_to_model
from fourm.modalities import CORPUS, MODALITIES, CorpusModality, Kind, Modality, ModalityScale, Storage, named_scale
from fourm.model.sizes import create_model

pytestmark = pytest.mark.usefixtures("one_thread")

STEPS, CHANNELS, PATCH = 32, 3, 4  # 8 tokens per series
CLASSES = 2**CHANNELS  # 8


class SeriesKind(ContinuousKind):
    """A (T, C) float series, one token per ``PATCH`` steps."""

    kind = "toy_series"
    array_key = "values"

    def store(self, m, value, key):
        if value.shape != (STEPS, CHANNELS):
            raise ValueError(f"{m.key} of {key} has shape {value.shape}")
        return value.astype(np.float32)

    def continuous_shape(self, m, arrays):
        return arrays["values"].shape[1:]

    def available(self, m, value):
        return m.tokens

    def input_projection(self, m, dim, image_size, pixel_stem, stem_options=None):
        return nn.Linear(PATCH * CHANNELS, dim)

    def check_continuous(self, m, value, batch_size, image_size):
        return None if tuple(value.shape) == (batch_size, STEPS, CHANNELS) else f"({batch_size}, {STEPS}, {CHANNELS})"

    def embed(self, projection, value, samples, ids):
        patches = value.reshape(value.shape[0], STEPS // PATCH, PATCH * CHANNELS)
        return projection(patches[samples, ids])


@pytest.fixture
def toy_series(monkeypatch):
    """The toy kind's handler and a modality of it, registered for this test only."""
    monkeypatch.setitem(KINDS, SeriesKind.kind, SeriesKind())
    monkeypatch.setitem(CORPUS, "series", CorpusModality("series", Storage("npy", "float32"), "vector", None,
                                                         "a toy multichannel time series (T, C)"))
    monkeypatch.setitem(MODALITIES, "series", Modality("series", "toy_series", "series", None, None,
                                                       max_tokens=STEPS // PATCH, input_only=True, dim=CHANNELS))
    return "series"


def series_samples(n: int, rng: np.random.Generator) -> tuple[np.ndarray, list[dict]]:
    """Series of one of 8 classes (bit c of the class sets channel c's level, +-1, under a wave of
    random frequency and phase and noise) and the class as two global tokens."""
    label = rng.integers(CLASSES, size=n)
    level = 2.0 * ((label[:, None] >> np.arange(CHANNELS)) & 1) - 1.0  # (n, C)
    t = np.arange(STEPS)[None, :, None]
    wave = np.sin(2 * np.pi * rng.integers(1, 5, (n, 1, 1)) * t / STEPS + rng.uniform(0, 2 * np.pi, (n, 1, CHANNELS)))
    series = level[:, None, :] + 0.5 * wave + rng.normal(0, 0.3, (n, STEPS, CHANNELS))
    return label, [{"__key__": str(i), "series": s, "tok_caption_global": np.array([k, k])}
                   for i, (s, k) in enumerate(zip(series, label, strict=True))]


def test_every_kind_has_one_handler():
    assert {handler(k).kind for k in Kind} == set(Kind)
    assert handler(Kind.IMAGE) is handler("image") is handler(MODALITIES["tok_rgb"])
    traits = {k: (handler(k).discrete, handler(k).continuous, handler(k).autoregressive, handler(k).grid) for k in Kind}
    assert traits[Kind.PIXELS] == (False, True, False, True)
    assert traits[Kind.SEQUENCE] == (True, False, True, False)
    with pytest.raises(ValueError, match="no handler for modality kind 'hologram'; known: "):
        handler("hologram")
    with pytest.raises(ValueError, match="kind 'image' already has a handler"):
        register_kind(type("Again", (ContinuousKind,), {"kind": Kind.IMAGE}))


def test_rgb_scaling_is_one_function():
    image = np.array([[[0, 127, 255]]], dtype=np.uint8)
    image.setflags(write=False)  # arrays read from a corpus may be read-only
    x = rgb_to_model(image)
    assert x.shape == (3, 1, 1)
    assert torch.allclose(x.flatten(), torch.tensor([-1.0, 127 / 127.5 - 1, 1.0]))


def test_named_scales_resolve_patches_and_token_counts():
    cpu = named_scale("cpu", patch_sizes={"tok_dinov2": 16})
    assert cpu.resolve("tok_rgb").num_tokens == 64 and cpu.resolve("tok_rgb").patch_size == 8
    assert cpu.resolve("tok_dinov2").num_tokens == 16 and cpu.resolve("tok_dinov2").patch_size == 16
    assert named_scale("full").resolve("rgb").num_tokens == 196
    assert cpu.resolve("caption").patch_size is None  # sequences have no patches
    assert ModalityScale.from_grids(64, {"tok_rgb": 64, "tok_depth": 64, "tok_dinov2": 16}) == cpu
    with pytest.raises(LookupError, match="unknown scale 'huge'; known: cpu, full"):
        named_scale("huge")


def test_a_new_kind_trains_with_no_other_code(toy_series):
    rng = np.random.default_rng(0)
    scale = ModalityScale(32, 8, vocab_sizes={"tok_caption_global": CLASSES})
    model = create_model("nano", [toy_series, "tok_caption_global"], scale, max_tokens={"tok_caption_global": 2})
    specs = model.specs
    assert specs["series"].tokens == STEPS // PATCH and isinstance(model.embed.projections["series"], nn.Linear)

    # the data path: a token dataset in memory, masking, batches with the raw series in batch.continuous
    _, samples = series_samples(512, rng)
    data = TokenDataset.from_samples(specs, samples)
    assert data.continuous_shapes == {"series": (STEPS, CHANNELS)}
    masker = Masker(specs, MaskingConfig(input_budget=8, target_budget=2, inputs=["series"],
                                         targets=["tok_caption_global"]))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    model.train()
    for step in range(150):
        positions = rng.integers(len(data), size=32)
        batch = make_batch(data, masker, positions, [[step, j] for j in range(32)])
        assert batch.continuous["series"].shape == (32, STEPS, CHANNELS)
        loss = model(batch).loss
        opt.zero_grad()
        loss.backward()
        opt.step()

    model.eval()
    label, heldout = series_samples(256, np.random.default_rng(1))
    test = TokenDataset.from_samples(specs, heldout)
    batch = make_batch(test, masker, np.arange(256), [[9, j] for j in range(256)])
    with torch.no_grad():
        index, logits = model(batch).logits["tok_caption_global"]
    predicted = logits.argmax(-1).reshape(256, 2)[:, 0].numpy()
    accuracy = float((predicted == label).mean())
    assert accuracy > 0.9, f"the class was read from the toy series in {accuracy:.2f} of the cases"


def test_point_clouds_imu_and_video_go_from_scenes_through_tokens_masking_and_a_fourm(tmp_path):
    """The registry's own point-cloud, time-series and video kinds, end to end: scenes with the three
    series, their tokenizers (untrained: any ids will do), `fourm tokenize`, the token corpus loader,
    masking and a tiny FourM's loss with each modality as input and as target, and generation."""
    from fourm.data.corpus import CorpusReader
    from fourm.data.tokenize import TokenizeConfig, tokenize_corpus
    from fourm.generation import Pipeline
    from fourm.tokenization.point_vqvae import PointVQVAE, PointVQVAEConfig
    from fourm.tokenization.series_vqvae import SeriesVQVAE, SeriesVQVAEConfig
    from fourm.tokenization.video import VideoTokenizer
    from fourm.tokenization.vqvae import ImageVQConfig, ImageVQVAE
    from pseudolabel.pipeline import PseudolabelConfig, run_pipeline

    corpus, tokenizers, tokens = tmp_path / "corpus", tmp_path / "tokenizers", tmp_path / "tokens"
    run_pipeline(PseudolabelConfig(source="scenes:8", out=str(corpus), image_size=32, labellers=[],
                                   series=["point_cloud", "imu", "video"]), progress=False)
    samples = list(CorpusReader(corpus, ["point_cloud", "imu", "video"]))
    vq = dict(codebook_size=16, codebook_dim=4, use_kmeans_init=False)
    points = PointVQVAE(PointVQVAEConfig(num_points=128, num_groups=8, group_size=16, grid_size=4, dim=16, **vq))
    points.fit_normalization(points.to_tensor([s["point_cloud"] for s in samples]))
    points.save_pretrained(tokenizers / "tok_point_cloud")
    imu = SeriesVQVAE(SeriesVQVAEConfig(dim=16, depth=1, **vq))
    imu.fit_normalization(imu.to_tensor([s["imu"] for s in samples]))
    imu.save_pretrained(tokenizers / "tok_imu")
    rgb = ImageVQVAE(ImageVQConfig(image_size=32, patch_size=16, dim=16, encoder_depth=1, decoder_depth=1, heads=2,
                                   codebook_size=16, codebook_dim=4))
    video = VideoTokenizer.wrap(rgb)  # 8 frames of 2 x 2 tokens
    video.save_pretrained(tokenizers / "tok_video")
    tokenize_corpus(TokenizeConfig(corpus=str(corpus), tokenizers=str(tokenizers), out=str(tokens)), progress=False)

    names = ["tok_point_cloud", "tok_imu", "tok_video"]
    data = TokenDataset.from_corpus(tokens, names)  # (the raw rgb copied beside them is not needed)
    specs = data.modalities
    assert (specs["tok_point_cloud"].tokens, specs["tok_point_cloud"].vocab_size) == (16, 16 + 64)
    assert (specs["tok_imu"].tokens, specs["tok_imu"].vocab_size) == (16, 16)
    assert (specs["tok_video"].tokens, specs["tok_video"].vocab_size) == (32, 16)
    assert np.array_equal(data[3]["tok_point_cloud"], points.encode([samples[3]["point_cloud"]])[0].numpy())

    scale = ModalityScale(32, 8, vocab_sizes={n: specs[n].vocab_size for n in names})
    model = create_model("nano", names, scale, max_tokens={n: specs[n].tokens for n in names})
    masker = Masker(model.specs, MaskingConfig(input_budget=24, target_budget=24))
    batch = make_batch(data, masker, np.arange(8), [[0, j] for j in range(8)])
    for name in names:  # each modality is an input of some samples and a target of others
        m = list(model.specs).index(name)
        assert (batch.enc_mod[batch.enc_valid] == m).any() and (batch.dec_mod[batch.dec_valid] == m).any()
    out = model(batch)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    for name in names:  # the ids reached their tables, the targets their heads
        grad = model.embed.tables[name].weight.grad
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0

    # any-to-any: a point cloud generated from an IMU signal, decoded back into a cloud, and back
    pipe = Pipeline(model.eval(), {"tok_point_cloud": points, "tok_imu": imu, "tok_video": video})
    out = pipe.generate({"imu": samples[0]["imu"]}, ["tok_point_cloud"], num_samples=2)
    assert out["tok_point_cloud"].tokens.shape == (2, 16) and out["tok_point_cloud"].values[0].shape == (128, 7)
    back = pipe.generate({"point_cloud": out["tok_point_cloud"].values[1], "video": samples[2]["video"]}, ["tok_imu"])
    assert back["tok_imu"].values[0].shape == (64, 6)
    clip = pipe.generate({"imu": samples[0]["imu"]}, ["tok_video"])["tok_video"].values[0]
    assert clip.shape == (8, 32, 32, 3) and clip.dtype == np.uint8


def test_speech_goes_from_scenes_through_tokens_masking_and_a_fourm(tmp_path):
    """The scenes' spoken captions, end to end: an (untrained) speech tokenizer, `fourm tokenize`, the
    token loader, masking and a tiny FourM's loss with speech as an input and a target beside the IMU;
    then speech generated from an IMU signal comes back as audio, and an IMU signal from that audio."""
    from fourm.data.corpus import CorpusReader
    from fourm.data.tokenize import TokenizeConfig, tokenize_corpus
    from fourm.generation import Pipeline
    from fourm.tokenization.series_vqvae import SeriesVQVAE, SeriesVQVAEConfig
    from fourm.tokenization.speech_vqvae import SpeechVQVAE, SpeechVQVAEConfig
    from pseudolabel.pipeline import PseudolabelConfig, run_pipeline

    corpus, tokenizers, tokens = tmp_path / "corpus", tmp_path / "tokenizers", tmp_path / "tokens"
    run_pipeline(PseudolabelConfig(source="scenes:8", out=str(corpus), image_size=16, labellers=[],
                                   series=["speech", "imu"]), progress=False)
    samples = list(CorpusReader(corpus, ["speech", "imu"]))
    vq = dict(codebook_size=16, codebook_dim=4, use_kmeans_init=False)
    speech = SpeechVQVAE(SpeechVQVAEConfig(max_samples=25_600, dim=16, depth=1, **vq))  # 1.6 s: 80 frames, 20 ids
    speech.fit_normalization(speech.to_tensor([s["speech"] for s in samples]))
    speech.save_pretrained(tokenizers / "tok_speech")
    imu = SeriesVQVAE(SeriesVQVAEConfig(dim=16, depth=1, **vq))
    imu.fit_normalization(imu.to_tensor([s["imu"] for s in samples]))
    imu.save_pretrained(tokenizers / "tok_imu")
    tokenize_corpus(TokenizeConfig(corpus=str(corpus), tokenizers=str(tokenizers), out=str(tokens)), progress=False)

    names = ["tok_speech", "tok_imu"]
    data = TokenDataset.from_corpus(tokens, names)
    specs = data.modalities
    assert (specs["tok_speech"].tokens, specs["tok_speech"].vocab_size) == (20, 16)
    assert np.array_equal(data[5]["tok_speech"], speech.encode([samples[5]["speech"]])[0].numpy())

    scale = ModalityScale(32, 8, vocab_sizes={n: specs[n].vocab_size for n in names})
    model = create_model("nano", names, scale, max_tokens={n: specs[n].tokens for n in names})
    masker = Masker(model.specs, MaskingConfig(input_budget=16, target_budget=16))
    batch = make_batch(data, masker, np.arange(8), [[0, j] for j in range(8)])
    m = list(model.specs).index("tok_speech")
    assert (batch.enc_mod[batch.enc_valid] == m).any() and (batch.dec_mod[batch.dec_valid] == m).any()
    out = model(batch)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    grad = model.embed.tables["tok_speech"].weight.grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0

    pipe = Pipeline(model.eval(), {"tok_speech": speech, "tok_imu": imu})
    said = pipe.generate({"imu": samples[0]["imu"]}, ["tok_speech"])["tok_speech"]
    assert said.tokens.shape == (1, 20) and said.values[0].dtype == np.int16 and 0 < len(said.values[0]) <= 25_600
    back = pipe.generate({"speech": said.values[0]}, ["tok_imu"])
    assert back["tok_imu"].values[0].shape == (64, 6)


def test_xray_thermal_and_hyperspectral_go_from_scenes_through_tokens_and_a_fourm(tmp_path):
    """The image-like bands, end to end: scenes with the three series, an image tokenizer each (untrained;
    the hyperspectral one takes its 32 bands in), `fourm tokenize`, the loader, masking and a tiny FourM's loss
    with each as input and target; then thermal generated from an X-ray and decoded in kelvin, and a
    hyperspectral image from a thermal one."""
    from fourm.data.corpus import CorpusReader
    from fourm.data.tokenize import TokenizeConfig, tokenize_corpus
    from fourm.generation import Pipeline
    from fourm.tokenization.vqvae import ImageVQConfig, ImageVQVAE
    from pseudolabel.pipeline import PseudolabelConfig, run_pipeline

    corpus, tokenizers, tokens = tmp_path / "corpus", tmp_path / "tokenizers", tmp_path / "tokens"
    bands = ["xray", "thermal", "hyperspectral"]
    run_pipeline(PseudolabelConfig(source="scenes:8", out=str(corpus), image_size=16, labellers=[], series=bands),
                 progress=False)
    samples = list(CorpusReader(corpus, bands))
    made = {}
    for band in bands:
        made[f"tok_{band}"] = ImageVQVAE(ImageVQConfig(
            modality=f"tok_{band}", source=band, image_size=16, patch_size=8, dim=16, encoder_depth=1,
            decoder_depth=1, heads=2, codebook_size=16, codebook_dim=4))
        made[f"tok_{band}"].save_pretrained(tokenizers / f"tok_{band}")
    tokenize_corpus(TokenizeConfig(corpus=str(corpus), tokenizers=str(tokenizers), out=str(tokens)), progress=False)

    names = list(made)
    data = TokenDataset.from_corpus(tokens, names)
    assert all((data.modalities[n].tokens, data.modalities[n].vocab_size) == (4, 16) for n in names)
    bands_3 = made["tok_hyperspectral"].encode([samples[3]["hyperspectral"]])[0]
    assert np.array_equal(data[3]["tok_hyperspectral"], bands_3)
    scale = ModalityScale(16, 8, vocab_sizes=dict.fromkeys(names, 16))
    model = create_model("nano", names, scale)
    batch = make_batch(data, Masker(model.specs, MaskingConfig(input_budget=6, target_budget=6)), np.arange(8),
                       [[0, j] for j in range(8)])
    out = model(batch)
    out.loss.backward()
    assert torch.isfinite(out.loss)
    for name in names:
        grad = model.embed.tables[name].weight.grad
        assert grad is not None and grad.abs().sum() > 0

    pipe = Pipeline(model.eval(), made)
    kelvin = pipe.generate({"xray": samples[0]["xray"]}, ["tok_thermal"])["tok_thermal"].values[0]
    assert kelvin.shape == (16, 16) and kelvin.dtype == np.float32 and 150 < kelvin.mean() < 450
    cube = pipe.generate({"thermal": samples[1]["thermal"]}, ["tok_hyperspectral"])["tok_hyperspectral"].values[0]
    assert cube.shape == (16, 16, 32) and cube.dtype == np.uint8
