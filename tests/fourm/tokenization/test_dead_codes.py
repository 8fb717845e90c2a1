"""The VQ-VAEs' dead-code threshold is an EMA count of a code's hits per step, as their configs document.

vector-quantize-pytorch 1.34 reads a threshold below 1 as a share of the mean hits per code instead: the
image VQ-VAE's 0.5 would re-seed every code used less than half as often as the mean, every step (what its
config warns costs PSNR). pyproject bounds the library below 1.34; these tests fail on a version that reads
the setting otherwise.
"""

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from fourm.tokenization.base import vector_quantizer
from fourm.tokenization.vqvae import VQ, ImageVQConfig

CODES = 4


# each builder -> the module a tokenizer calls, its VectorQuantize, whether its codes are directions (l2-normalised)
def image_vq():
    vq = VQ(ImageVQConfig(codebook_size=CODES, codebook_dim=8, ema_decay=0.0, dead_code_threshold=0.5))
    return vq, vq.vq, True


def shared_vq():  # the vector, point and series VQ-VAEs'
    c = SimpleNamespace(codebook_dim=8, codebook_size=CODES, use_cosine_sim=False, decay=0.0, use_kmeans_init=False,
                        threshold_ema_dead_code=0.5, commitment_weight=1.0)
    vq = vector_quantizer(c)
    return vq, vq, False


@pytest.mark.parametrize("build", [image_vq, shared_vq], ids=["image", "shared"])
def test_a_code_hit_twice_a_step_is_kept_and_an_unused_one_reseeded(build):
    torch.manual_seed(0)
    module, vq, directions = build()
    module.train()
    codes = vq.codebook.detach().clone()  # (CODES, D)
    # decay 0: a code's EMA count is its hits in this step: 61, 2, 1 and 0 of 64 (a mean of 16)
    hits = [61, 2, 1, 0]
    x = torch.cat([codes[i].expand(n, -1) for i, n in enumerate(hits)])
    x = x + 1e-3 * torch.randn_like(x)
    if directions:
        x = F.normalize(x, dim=-1)
    with torch.no_grad():
        _, ids, _ = module(x[None])  # (B, N, D)
    assert torch.bincount(ids.flatten(), minlength=CODES).tolist() == hits  # the step hit the codes as planned
    after = vq.codebook.detach()
    moved = (after - codes).norm(dim=-1)
    # 2 and 1 hits lie above the threshold of 0.5: those codes stay where their hits are
    assert moved[1] < 0.05 and moved[2] < 0.05, moved
    # the unused code is re-seeded from the batch: replacement is on, and it is the count that decides
    assert moved[3] > 0.1, moved
