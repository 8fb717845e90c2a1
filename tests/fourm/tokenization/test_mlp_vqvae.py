"""MLP VQ-VAE over one vector: shapes and units, ids, codes from ids, save/load, learning, pose vectors."""

import json

import numpy as np
import pytest
import torch

from fourm.modalities import ModalityScale
from fourm.pretrained import load_pretrained
from fourm.tokenization.base import ModalityTokenizer, check_tokenizer
from fourm.tokenization.coders import NUM_KEYPOINTS, POSE_DIM, pose_to_vector, vector_to_keypoints
from fourm.tokenization.mlp_vqvae import VectorVQVAE, VectorVQVAEConfig
from tokenizers_train.vector import synthetic_people

DIM = 24
TINY = dict(input_dim=DIM, num_tokens=4, dim=32, depth=1, mlp_ratio=2, codebook_size=64, codebook_dim=8,
            levels=[4, 4, 4])
POSE = dict(TINY, modality="pose_vqvae", source="human_poses", input_dim=POSE_DIM, loss="smooth_l1")
QUANTIZERS = ["vq", "fsq"]


pytestmark = pytest.mark.usefixtures("one_thread")


def clustered(n: int, seed: int = 0, clusters: int = 8) -> torch.Tensor:
    """Vectors around a few directions, stored like the corpus does (float16)."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(clusters, DIM, generator=torch.Generator().manual_seed(123))
    x = centres[torch.randint(clusters, (n,), generator=g)] + 0.1 * torch.randn(n, DIM, generator=g)
    return torch.nn.functional.normalize(x, dim=-1).half().float()


def make(quantizer: str, pose: bool = False, fit=None) -> VectorVQVAE:
    torch.manual_seed(0)
    model = VectorVQVAE(VectorVQVAEConfig(**(POSE if pose else TINY), quantizer=quantizer))
    x = fit if fit is not None else (pose_batch(64) if pose else clustered(64))
    model.fit_normalization(x)
    model.train()(x)  # a training forward: k-means init and one EMA update of the vq codebook
    return model.eval()


def pose_batch(n: int, seed: int = 0) -> torch.Tensor:
    return torch.from_numpy(np.stack([pose_to_vector(p) for p in synthetic_people(n, seed)]))


def train_steps(model: VectorVQVAE, x: torch.Tensor, steps: int, lr: float = 3e-3) -> list[float]:
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    losses = []
    for step in range(steps):
        batch = x[torch.randperm(len(x), generator=torch.Generator().manual_seed(step))[:64]]
        out = model(batch)
        out.loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(out.recon_loss.item())
    model.eval()
    return losses


@pytest.mark.parametrize("quantizer", QUANTIZERS)
def test_embeddings_encode_decode_shapes_ids_and_units(quantizer):
    model = make(quantizer)
    values = list(clustered(5, seed=1).half().numpy())  # as the corpus stores them: float16 (C,)
    ids = model.encode(values)
    assert ids.dtype == torch.long and ids.shape == (5, 4)
    assert int(ids.min()) >= 0 and int(ids.max()) < model.vocab_size == 64
    decoded = model.decode(ids)
    assert len(decoded) == 5 and all(v.dtype == np.float16 and v.shape == (DIM,) for v in decoded)
    np.testing.assert_allclose(np.linalg.norm(np.stack(decoded).astype(np.float64), axis=1), 1.0, atol=2e-3)
    assert torch.equal(model.encode(np.stack(values)), ids)  # a (B, C) array works too
    assert model.encode([]).shape == (0, 4)


@pytest.mark.parametrize("quantizer", QUANTIZERS)
def test_pose_encode_decode_shapes_and_units(quantizer):
    model = make(quantizer, pose=True)
    people = synthetic_people(3, seed=5)
    ids = model.encode(people)  # one person per row
    assert ids.shape == (3, 4) and int(ids.max()) < model.vocab_size
    relative = model.decode(ids)
    assert len(relative) == 3 and all(len(p) == NUM_KEYPOINTS and len(p[0]) == 3 for p in relative)
    assert all(0 <= v <= 1 for p in relative for _, _, v in p)  # visibility stays a probability
    absolute = model.decode(ids, boxes=[p["box"] for p in people])
    for rel, ab, person in zip(relative, absolute, people, strict=True):
        np.testing.assert_allclose(ab, vector_to_keypoints(np.ravel(rel), person["box"]), atol=1e-6)


@pytest.mark.parametrize("quantizer", QUANTIZERS)
def test_embed_ids_gives_the_quantized_latents_of_forward(quantizer):
    model = make(quantizer)
    x = clustered(32, seed=2)
    out = model(x)
    torch.testing.assert_close(model.embed_ids(out.ids), out.quantized, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(model.decode_vectors(out.ids), out.recon)
    # in training mode a frozen quantize (what encode does) gives the codes of the ids too; a
    # training forward then moves the codebook (EMA, dead-code replacement), so compare before it
    model.train()
    quantized, ids, _ = model.quantize(model.encode_latents(x), update=False)
    assert torch.equal(ids, out.ids)
    torch.testing.assert_close(model.embed_ids(ids), quantized, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("quantizer", QUANTIZERS)
@pytest.mark.parametrize("pose", [False, True])
def test_save_then_load_gives_identical_outputs(tmp_path, quantizer, pose):
    model = make(quantizer, pose=pose)
    x = pose_batch(8, seed=3) if pose else clustered(8, seed=3)
    model.save_pretrained(tmp_path / "tok")
    loaded = load_pretrained(tmp_path / "tok")  # by the class name in config.json
    assert type(loaded) is VectorVQVAE and loaded.config == model.config
    assert torch.equal(loaded.encode(x), model.encode(x))
    ids = model.encode(x)
    torch.testing.assert_close(loaded.decode_vectors(ids), model.decode_vectors(ids), rtol=0, atol=0)
    for a, b in zip(loaded.state_dict().values(), model.state_dict().values(), strict=True):
        assert torch.equal(a, b)  # normalisation and codebook buffers included


def test_a_config_json_with_the_old_flag_name_loads(tmp_path):
    """Tokenizers saved before the use_* names: ``kmeans_init`` is read as ``use_kmeans_init``."""
    torch.manual_seed(0)
    model = VectorVQVAE(VectorVQVAEConfig(**TINY, quantizer="vq", use_kmeans_init=False))
    model.fit_normalization(clustered(64))
    model.eval().save_pretrained(tmp_path / "tok")
    path = tmp_path / "tok" / "config.json"
    record = json.loads(path.read_text())
    record["config"]["kmeans_init"] = record["config"].pop("use_kmeans_init")
    path.write_text(json.dumps(record))
    loaded = load_pretrained(tmp_path / "tok")
    assert loaded.config == model.config and loaded.config.use_kmeans_init is False
    x = clustered(8, seed=3)
    assert torch.equal(loaded.encode(x), model.encode(x))


def test_is_a_modality_tokenizer_that_fits_its_modality():
    tok = VectorVQVAE(VectorVQVAEConfig(**TINY, quantizer="fsq"))
    assert isinstance(tok, ModalityTokenizer)
    scale = ModalityScale(vocab_sizes={"tok_caption_global": tok.vocab_size})
    check_tokenizer(tok, scale.resolve("tok_caption_global"))  # 4 tokens: within the modality's 16


@pytest.mark.parametrize("quantizer", QUANTIZERS)
def test_training_reduces_loss_and_reconstructs_clustered_vectors(quantizer):
    x = clustered(512)
    model = make(quantizer, fit=x)
    losses = train_steps(model, x, 80)
    assert np.mean(losses[-10:]) < 0.3 * np.mean(losses[:10])
    held_out = clustered(128, seed=9)
    decoded = torch.from_numpy(np.stack(model.decode(model.encode(held_out))).astype(np.float32))
    cos = torch.nn.functional.cosine_similarity(decoded, held_out).mean()
    assert cos > 0.95, f"held-out cosine {cos:.3f}"


def test_pose_vector_and_keypoints_are_inverses():
    for person in [*synthetic_people(20, seed=7), {"box": [0.5, 0.5, 0.5, 0.6],  # degenerate width
                                                    "keypoints": [[0.5, 0.55, 1.0]] * NUM_KEYPOINTS}]:
        vec = pose_to_vector(person)
        assert vec.shape == (POSE_DIM,) and vec.dtype == np.float32
        np.testing.assert_allclose(vector_to_keypoints(vec, person["box"]), person["keypoints"], atol=1e-6)
    # box-relative: the box corners are 0 and 1
    person = {"box": [0.2, 0.4, 0.6, 0.8], "keypoints": [[0.2, 0.4, 1.0], [0.6, 0.8, 0.5]] + [[0.4, 0.6, 0.0]] * 31}
    np.testing.assert_allclose(pose_to_vector(person)[:6], [0, 0, 1, 1, 1, 0.5], atol=1e-6)


def test_wrong_inputs_are_clear_errors():
    model = make("fsq")
    with pytest.raises(ValueError, match=f"dim {DIM}"):
        model.encode(np.zeros((2, DIM + 1), np.float16))
    with pytest.raises(ValueError, match="one .* vector per sample"):
        model.encode([np.zeros((3, DIM))])
    with pytest.raises(ValueError, match=r"ids must lie in \[0, 64\)"):
        model.decode(torch.full((1, 4), 64))
    with pytest.raises(ValueError, match=r"expected ids \(B, 4\)"):
        model.decode(torch.zeros(1, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="NaN"):
        model.encode([np.full(DIM, np.nan)])
    pose = make("fsq", pose=True)
    with pytest.raises(ValueError, match="33 keypoints"):
        pose.encode([{"box": [0, 0, 1, 1], "keypoints": [[0.5, 0.5, 1.0]] * 17}])
    with pytest.raises(ValueError, match="cosine|mse"):
        VectorVQVAEConfig(**{**POSE, "loss": "cosine"})
    with pytest.raises(ValueError, match="99 values"):
        VectorVQVAEConfig(**{**POSE, "input_dim": 34})
    with pytest.raises(ValueError, match="quantizer"):
        VectorVQVAEConfig(quantizer="lfq")
