"""Clipping folded into the fused AdamW's pass updates the weights exactly as clip_grad_norm_ + step."""

import pytest
import torch
from torch import nn

from fourm.train.clipping import clip_gradients, takes_grad_scale
from fourm.train.loop import TrainConfig, build_optimizer


def _model_and_optimizer(fused: bool) -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 4))
    return model, torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1, fused=fused)


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("gain", [100.0, 1e-3])  # clipped on every step / never clipped
def test_clipping_updates_the_weights_as_clip_grad_norm_does(fused, gain):
    x = torch.randn(8, 16, generator=torch.Generator().manual_seed(1))
    ours, ours_opt = _model_and_optimizer(fused)
    ref, ref_opt = _model_and_optimizer(fused)
    for _ in range(4):
        for model in (ours, ref):
            (model(x).pow(2).sum() * gain).backward()
        assert takes_grad_scale(ours_opt, [p.grad for p in ours.parameters()]) == fused
        norm = clip_gradients(ours.parameters(), ours_opt, max_norm=1.0)
        ref_norm = torch.nn.utils.clip_grad_norm_(ref.parameters(), 1.0)
        assert norm.item() == pytest.approx(ref_norm.item(), rel=1e-6)
        assert (norm > 1.0) == (gain > 1.0)
        for opt in (ours_opt, ref_opt):
            opt.step()
            opt.zero_grad(set_to_none=True)
    for a, b in zip(ours.parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    start = _model_and_optimizer(fused)[0]
    moved = max((a - b).abs().max().item() for a, b in zip(ours.parameters(), start.parameters(), strict=True))
    assert moved > 1e-3  # the steps did update the weights


def test_the_training_loops_optimizer_on_a_cpu_takes_the_clipping_in_its_pass():
    model = nn.Linear(4, 4)
    optimizer = build_optimizer(model, TrainConfig())
    model(torch.randn(2, 4)).sum().backward()
    assert takes_grad_scale(optimizer, [p.grad for p in model.parameters()])


def test_clipping_folds_into_a_fused_adamw_over_bf16_weights():
    # bf16 gradients give a bf16 norm, and the fused kernel takes its divisor in fp32 only
    x = torch.randn(8, 16, generator=torch.Generator().manual_seed(1))
    ours, ours_opt = _model_and_optimizer(fused=True)
    ref, ref_opt = _model_and_optimizer(fused=True)
    for model in (ours, ref):
        model.to(torch.bfloat16)
        (model(x.bfloat16()).float().pow(2).sum() * 100.0).backward()
    norm = clip_gradients(ours.parameters(), ours_opt, max_norm=1.0)
    torch.nn.utils.clip_grad_norm_(ref.parameters(), 1.0)
    assert norm > 1.0  # clipped
    assert ours_opt.grad_scale.dtype == torch.float32
    assert ours_opt.grad_scale.item() == pytest.approx(norm.item(), rel=1e-5)
    for opt in (ours_opt, ref_opt):
        opt.step()
    for a, b in zip(ours.parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-2, atol=1e-2)
    assert all(a.dtype == torch.bfloat16 for a in ours.parameters())
