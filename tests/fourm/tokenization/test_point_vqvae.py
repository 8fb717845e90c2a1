"""Point-cloud tokenizer: ids in order and in range, a deterministic and order-free encoding, round-trip
shapes and units, save/load, learning (Chamfer falls), bad input."""

import numpy as np
import pytest
import torch

from fourm.pretrained import load_pretrained
from fourm.tokenization.base import ModalityTokenizer, check_tokenizer
from fourm.tokenization.point_vqvae import PointVQVAE, PointVQVAEConfig
from pseudolabel.sources.scenes import render_scene
from tokenizers_train.points import evaluate_clouds

TINY = dict(num_points=128, num_groups=16, group_size=16, grid_size=4, dim=32, codebook_size=32, codebook_dim=8)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def clouds() -> list[np.ndarray]:
    return [render_scene(seed, 32, ("point_cloud",))["point_cloud"] for seed in range(40)]


def make(clouds, **changes) -> PointVQVAE:
    torch.manual_seed(0)
    model = PointVQVAE(PointVQVAEConfig(**{**TINY, **changes}))
    x = model.to_tensor(clouds)
    model.fit_normalization(x)
    model.train()(x[:16])  # k-means init of the codebook
    return model.eval()


def test_ids_are_cell_code_pairs_in_raster_order(clouds):
    model = make(clouds)
    assert isinstance(model, ModalityTokenizer) and model.num_tokens == 32 and model.vocab_size == 32 + 64
    ids = model.encode(clouds[:6])
    cells, codes = ids[:, 0::2], ids[:, 1::2]
    assert ids.shape == (6, 32) and ((cells >= 32) & (cells < 96)).all() and (codes < 32).all()
    assert (cells.diff(dim=1) >= 0).all()  # groups sorted by cell
    assert torch.equal(model.encode(clouds[:6]), ids)
    shuffled = [c[np.random.default_rng(i).permutation(len(c))] for i, c in enumerate(clouds[:6])]
    x = model.to_tensor(clouds[:6])
    perm = torch.randperm(128, generator=torch.Generator().manual_seed(0))
    assert torch.equal(model.encode(x[:, perm]), ids)  # a set: the order of the points does not matter
    assert model.encode(shuffled).shape == ids.shape


def test_decode_gives_clouds_in_corpus_units(clouds):
    model = make(clouds)
    ids = model.encode(clouds[:4])
    out = model.decode(ids)
    assert len(out) == 4 and all(c.shape == (128, 7) and c.dtype == np.float32 for c in out)
    assert all(((c[:, 3:6] >= 0) & (c[:, 3:6] <= 255)).all() and set(np.unique(c[:, 6])) <= set(range(6)) for c in out)
    # each group lands in its cell: the cell centres of the ids are where the rebuilt points gather
    cells, _ = model.split_ids(ids)
    centres = model.cell_centres(cells) * model.scale + model.centre
    points = model.decode_points(ids).reshape(4, 16, 16, 7)[..., :3]
    assert points.shape == (4, 16, 16, 3) and torch.isfinite(centres).all()
    # generated ids of the wrong half fold into range instead of failing
    swapped = torch.stack([ids[:, 1::2], ids[:, 0::2]], dim=-1).reshape(4, 32)
    assert len(model.decode(swapped)) == 4


def test_save_load_round_trip(clouds, tmp_path):
    model = make(clouds)
    model.save_pretrained(tmp_path / "tok")
    loaded = load_pretrained(tmp_path / "tok")
    assert isinstance(loaded, PointVQVAE) and torch.equal(loaded.scale, model.scale)
    ids = model.encode(clouds[:3])
    assert torch.equal(loaded.encode(clouds[:3]), ids)
    assert all(np.array_equal(a, b) for a, b in zip(loaded.decode(ids), model.decode(ids), strict=True))


def test_training_lowers_the_chamfer_distance(clouds):
    model = make(clouds, class_weight=0.1)  # 40 steps: mostly spent on the geometry
    x = model.to_tensor(clouds)
    train, held = x[:32], x[32:]
    with torch.no_grad():
        before = model(held).chamfer  # eval mode: the codebook stays as it is
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    for step in range(40):
        batch = train[torch.randperm(32, generator=torch.Generator().manual_seed(step))[:16]]
        loss = model(batch).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        after = model(held).chamfer
    assert after < 0.85 * before, (float(before), float(after))
    scores = evaluate_clouds(model, held)
    assert scores["class_acc"] > 0.5 and 0 < scores["usage"] <= 1 and scores["chamfer"] > 0


def test_bad_input_is_a_one_line_error(clouds):
    model = make(clouds)
    with pytest.raises(ValueError, match=r"cloud 0: expected points \(N, 7\)"):
        model.encode([np.zeros((50, 3))])
    with pytest.raises(ValueError, match=r"ids must lie in \[0, 96\)"):
        model.decode(torch.full((1, 32), 96))
    with pytest.raises(ValueError, match="must not exceed num_points"):
        PointVQVAEConfig(num_points=16, num_groups=32)


def test_registry_modality_fits_the_shipped_config():
    from fourm.config import load_config
    from fourm.modalities import named_scale
    from tokenizers_train import points

    cfg = load_config(points.Config, "configs/tokenizers/point_cloud.yaml")
    check_tokenizer(PointVQVAE(cfg.model), named_scale("cpu").resolve("tok_point_cloud"))
