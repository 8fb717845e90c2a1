"""A nano FourM over every kind of modality and random batches of it, shared by the model's tests."""

import dataclasses

import pytest
import torch

from fourm.modalities import Kind, ModalityScale
from fourm.model import FourM
from fourm.model.batch import Batch
from fourm.model.sizes import model_config


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Every model test on one torch thread (tests/conftest.py says why)."""


MODALITIES = ["rgb", "tok_rgb", "tok_depth", "tok_dinov2_global", "caption", "det", "t5_caption"]
SCALE = ModalityScale(32, 8, vocab_sizes={"tok_rgb": 64, "tok_depth": 48, "tok_dinov2_global": 32,
                                          "caption": 100, "det": 100})
T5_LENGTH = 12  # vectors per sample in continuous["t5_caption"]


def tiny_config(**overrides):
    """nano (2+2 x 64) over every kind of modality, 32 px images in 8 px patches (16 tokens)."""
    max_tokens = {"caption": 24, "det": 24, "t5_caption": T5_LENGTH}
    return model_config("nano", MODALITIES, SCALE, max_tokens=max_tokens, **overrides)


def random_batch(cfg, batch_size=3, ne=40, nd=40, seed=0) -> Batch:
    """Every sample: rgb patches, tok_rgb tokens, a caption and t5_caption vectors as inputs; tok_depth,
    tok_dinov2_global, caption and det targets, each its own decoder group (shuffled numbers). Token
    order is shuffled and the padding is garbage (random tags), so nothing may rely on either."""
    g = torch.Generator().manual_seed(seed)
    names, specs = cfg.modalities, cfg.specs()

    def randint(high, size=(), low=0):
        return torch.randint(low, high, size, generator=g)

    def segment(name, positions, ids):
        return [torch.full_like(positions, names.index(name)), positions, ids]

    enc, dec = [], []
    for _ in range(batch_size):
        parts = []
        for name in ("rgb", "tok_rgb"):
            pos = torch.randperm(specs[name].tokens, generator=g)[: int(randint(7, low=2))]
            ids = pos if name == "rgb" else randint(specs[name].vocab_size, pos.shape)  # rgb ids = patch index
            parts.append(segment(name, pos, ids))
        pos = torch.arange(int(randint(9, low=1)))
        parts.append(segment("caption", pos, randint(100, pos.shape)))
        pos = torch.arange(int(randint(T5_LENGTH + 1, low=1)))
        parts.append(segment("t5_caption", pos, pos))
        enc.append(torch.cat([torch.stack(p) for p in parts], dim=1))  # (3, n): mod, pos, ids

        groups, parts = torch.randperm(50, generator=g)[:4], []
        for group, name in zip(groups.tolist(), ("tok_depth", "tok_dinov2_global", "caption", "det"), strict=True):
            spec = specs[name]
            if spec.kind == Kind.SEQUENCE:
                pos = torch.arange(int(randint(11 if name == "caption" else 9, low=2)))
                target = randint(spec.vocab_size, pos.shape)
                ids = torch.cat([torch.tensor([1]), target[:-1]])  # teacher forcing: the previous token
            else:
                pos = torch.randperm(spec.tokens, generator=g)[: int(randint(7, low=1))]
                target, ids = randint(spec.vocab_size, pos.shape), torch.zeros_like(pos)
            parts.append([*segment(name, pos, ids), target, torch.full_like(pos, group)])
        dec.append(torch.cat([torch.stack(p) for p in parts], dim=1))  # (5, n): mod, pos, ids, target, group

    def pack(samples, budget):
        out = []
        for s in samples:
            s = s[:, torch.randperm(s.shape[1], generator=g)]
            pad = randint(3, (s.shape[0], budget - s.shape[1]))  # garbage tags on padding
            valid = torch.arange(budget) < s.shape[1]
            out.append((torch.cat([s, pad], dim=1), valid))
        return torch.stack([o[0] for o in out], 1), torch.stack([o[1] for o in out])

    (e_mod, e_pos, e_ids), e_valid = pack(enc, ne)
    (d_mod, d_pos, d_ids, d_target, d_group), d_valid = pack(dec, nd)
    continuous = {"rgb": torch.rand(batch_size, 3, 32, 32, generator=g) * 2 - 1,
                  "t5_caption": torch.randn(batch_size, T5_LENGTH, 384, generator=g)}
    return Batch(enc_ids=e_ids, enc_mod=e_mod, enc_pos=e_pos, enc_valid=e_valid,
                 dec_ids=d_ids, dec_target=d_target.masked_fill(~d_valid, -100), dec_mod=d_mod, dec_pos=d_pos,
                 dec_group=d_group, dec_valid=d_valid, continuous=continuous)


def make_model(cfg=None, seed=0, **overrides) -> FourM:
    torch.manual_seed(seed)
    return FourM(cfg if cfg is not None else tiny_config(**overrides)).eval()


def dense(per_mod, name, shape) -> torch.Tensor:
    """One modality's logits back on the (B, N) grid; NaN where it has none."""
    idx, logits = per_mod[name]
    out = torch.full((shape[0] * shape[1], logits.shape[1]), float("nan"))
    out[idx] = logits
    return out.view(*shape, -1)


def assert_same_gradients(expected, actual, rtol=1e-5, atol=1e-7):
    """Every parameter's gradient of ``actual`` equals ``expected``'s (a missing one must be missing in both)."""
    for (name, a), b in zip(expected.named_parameters(), actual.parameters(), strict=True):
        torch.testing.assert_close(b.grad, a.grad, rtol=rtol, atol=atol, msg=name)


def run(model, batch):
    with torch.no_grad():
        memory, valid = model.encode(batch)
        hidden = model.decode(batch, memory, valid)
        return memory, model.logits(hidden, batch.dec_mod, batch.dec_valid), model.loss(hidden, batch)


def replace(batch, **fields) -> Batch:
    return dataclasses.replace(batch, **fields)


def same(a, b):
    return torch.allclose(a, b, atol=1e-5, rtol=1e-5, equal_nan=True)
