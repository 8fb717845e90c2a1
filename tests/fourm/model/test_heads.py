"""Codebook heads: what one code learns moves the codes whose vectors lie near it, the codebook is saved with
the model, and bad settings are named."""

import pytest
import torch
import torch.nn.functional as F

from fourm.model.fourm import FourM, FourMConfig
from fourm.model.heads import CodebookHead

pytestmark = pytest.mark.usefixtures("one_thread")


def codebook(vocab: int = 16, dim: int = 4) -> torch.Tensor:
    """Codes in pairs: code 2k+1 is code 2k turned by a few degrees (two codes that decode alike)."""
    torch.manual_seed(0)
    base = F.normalize(torch.randn(vocab // 2, dim), dim=-1)
    twin = F.normalize(base + 0.05 * torch.randn_like(base), dim=-1)
    return torch.stack([base, twin], 1).reshape(vocab, dim)


def trained_on_code_zero(head, steps: int = 30) -> torch.Tensor:
    """Train ``head`` to name code 0 for one state; return how far each code's logit rose."""
    torch.manual_seed(1)
    h = torch.randn(8, 32)
    before = head(h).detach().mean(0)
    opt = torch.optim.SGD(head.parameters(), lr=0.05)
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(head(h), torch.zeros(8, dtype=torch.long)).backward()
        opt.step()
    return head(h).detach().mean(0) - before


def test_what_one_code_learns_raises_its_neighbour_in_the_codebook():
    """Code 1 (code 0's twin) is never a target. A linear head lowers its logit with every other code's; a
    codebook head raises it with code 0's, above every code that lies far from code 0."""
    vocab = 16
    linear = trained_on_code_zero(torch.nn.Linear(32, vocab, bias=False))
    head = CodebookHead(32, vocab, 4)
    head.load_codebook(codebook(vocab))
    shared = trained_on_code_zero(head)
    assert linear[1] < 0 < linear[0]
    assert shared[1] > 0 and shared[1] > shared[2:].max() + 0.5


def test_an_empty_codebook_is_the_linear_head_and_a_wrong_one_is_named():
    head = CodebookHead(8, 16, 4)
    h = torch.randn(3, 8)
    torch.testing.assert_close(head(h), head.linear(h))
    with pytest.raises(ValueError, match=r"codebook of shape \(16, 5\) for a head over 16 codes of width 4"):
        head.load_codebook(torch.randn(16, 5))


def config(**extra) -> FourMConfig:
    return FourMConfig(modalities=["rgb", "tok_rgb", "tok_depth"], dim=32, heads=2, encoder_depth=1,
                       decoder_depth=1, **extra)


def test_the_codebook_is_saved_with_the_model(tmp_path):
    model = FourM(config(head_codebooks={"tok_rgb": 4}))
    vocab = model.specs["tok_rgb"].vocab_size
    assert isinstance(model.heads["tok_rgb"], CodebookHead) and not isinstance(model.heads["tok_depth"], CodebookHead)
    model.heads["tok_rgb"].load_codebook(torch.randn(vocab, 4))
    model.save_pretrained(tmp_path)
    loaded = FourM.from_pretrained(tmp_path)
    torch.testing.assert_close(loaded.heads["tok_rgb"].codebook, model.heads["tok_rgb"].codebook)
    h = torch.randn(5, 32)
    torch.testing.assert_close(loaded.heads["tok_rgb"](h), model.heads["tok_rgb"](h))


@pytest.mark.parametrize(("extra", "message"), [
    ({"head_codebooks": {"tok_rgb": 4}, "use_tied_heads": True}, "choose one"),
    ({"head_codebooks": {"tok_normal": 4}}, "modalities the model does not have: tok_normal"),
    ({"head_codebooks": {"rgb": 4}}, "'rgb' has no output head over codes"),
    ({"head_codebooks": {"tok_rgb": "wide"}}, "code widths"),
])
def test_bad_codebook_settings_are_named(extra, message):
    with pytest.raises(ValueError, match=message):
        config(**extra)
