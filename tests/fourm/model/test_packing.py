"""Packed rows (fourm.model.packing): the blocks run on a batch's valid tokens only, and nothing changes."""

import torch

from fourm.model.packing import Packing, pack, unpack


def test_unpack_of_pack_keeps_the_valid_tokens_and_zeroes_the_rest():
    g = torch.Generator().manual_seed(0)
    valid = torch.rand(4, 25, generator=g) < 0.5
    x = torch.randn(4, 25, 6, generator=g)
    with torch.no_grad():  # fp32 inference: exactly the valid rows
        p = Packing.of(valid, x)
        assert pack(x, p).shape == (int(valid.sum()), 6)
    torch.testing.assert_close(unpack(pack(x, p), p), x * valid[..., None], rtol=0, atol=0)
    assert torch.equal(pack(x, p), x[valid])  # row order: sample by sample, as the tokens lie


def test_bucket_rows_add_nothing_to_the_gradient():
    """Under gradients the rows are bucketed (here 51 valid -> 64); the extra rows copy the first token and
    land nowhere, so the gradient is that of the valid rows alone, the first token's included."""
    g = torch.Generator().manual_seed(1)
    valid = torch.zeros(3, 40, dtype=torch.bool)
    valid[0, :20], valid[1, 5:21], valid[2, 10:25] = True, True, True
    x = torch.randn(3, 40, 5, generator=g, requires_grad=True)
    weight = torch.randn(5, 5, generator=g)
    p = Packing.of(valid, x)
    assert p.gather.numel() == 64 and int(valid.sum()) == 51
    (unpack(pack(x, p) @ weight, p) ** 2).sum().backward()
    expected = torch.autograd.grad(((x @ weight * valid[..., None]) ** 2).sum(), x)[0]
    torch.testing.assert_close(x.grad, expected)


def test_no_packing_where_it_would_save_no_rows():
    x = torch.ones(1, requires_grad=True)
    assert Packing.of(torch.ones(2, 30, dtype=torch.bool), x) is None  # full
    almost = torch.ones(2, 32, dtype=torch.bool)
    almost[0, -3:] = False
    assert Packing.of(almost, x) is None  # 61 rows bucket back up to 64
    with torch.no_grad():
        assert Packing.of(almost, x).gather.numel() == 61


def test_a_compiled_block_gets_rows_of_any_batch_even_a_full_one():
    """``compiled``: one layout for every batch (a graph each would compile otherwise), so a full batch and one
    that buckets back up are packed too, and the list of padding never has 0 or 1 entries (each a graph)."""
    g = torch.Generator().manual_seed(2)
    almost = torch.ones(2, 32, dtype=torch.bool)
    almost[0, -3:] = False
    for valid in (torch.ones(2, 30, dtype=torch.bool), almost, torch.rand(2, 30, generator=g) < 0.5):
        x = torch.randn(*valid.shape, 4, generator=g, requires_grad=True)
        p = Packing.of(valid, x, compiled=True)
        assert p is not None and p.empty.numel() >= 2
        torch.testing.assert_close(unpack(pack(x, p), p), x * valid[..., None], rtol=0, atol=0)
