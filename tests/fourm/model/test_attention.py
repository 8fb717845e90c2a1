"""Attention masks and the KV cache, against a hand-written softmax attention."""

import torch

from fourm.model import attention
from fourm.model.attention import KVCache, SelfAttention, attend, attention_mask


def reference(q, k, v, allowed):
    scores = (q @ k.transpose(-1, -2)) / q.shape[-1] ** 0.5
    weights = scores.masked_fill(~allowed[:, None], float("-inf")).softmax(-1).nan_to_num(0.0)
    return torch.einsum("bhqk,bhkd->bqhd", weights, v).flatten(2)


def test_attend_matches_softmax_and_zeroes_rows_without_keys():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, n, 8, generator=g) for n in (5, 7, 7))
    allowed = torch.rand(2, 5, 7, generator=g) > 0.5
    allowed[0, 2] = False  # a query with nothing to attend
    out = attend(q, k, v, attention_mask(allowed))
    assert torch.allclose(out, reference(q, k, v, allowed), atol=1e-5)
    assert (out[0, 2] == 0).all()
    # a broadcast key mask (B, 1, Nk), as the encoder and cross-attention use
    keys = torch.rand(2, 1, 7, generator=g) > 0.3
    assert torch.allclose(attend(q, k, v, attention_mask(keys)), reference(q, k, v, keys.expand(2, 5, 7)), atol=1e-5)


def test_cached_self_attention_equals_causal_attention():
    torch.manual_seed(0)
    attn = SelfAttention(32, 4).eval()
    x = torch.randn(2, 6, 32)
    causal = torch.ones(6, 6, dtype=torch.bool).tril().expand(2, 6, 6)
    full = attn(x, attention_mask(causal))
    cache, steps = KVCache(), []
    for t in range(6):  # one token, then the rest two at a time
        chunk = slice(t, t + 1) if t == 0 else slice(t, t + 2) if t % 2 else None
        if chunk is None:
            continue
        steps.append(attn(x[:, chunk], attention_mask(causal[:, chunk, : chunk.stop]), cache))
    assert len(cache) == 6
    assert torch.allclose(torch.cat(steps, 1), full, atol=1e-5)


def test_bf16_attention_upcast_runs_in_fp32_under_autocast(monkeypatch):
    """Where timing finds SDPA faster on fp32 copies (CPU), bf16 attention under autocast is computed
    on fp32 copies of its inputs and handed back in bf16; otherwise the bf16 kernel runs."""
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 16, 8).bfloat16() for _ in range(3))
    mask = attention_mask(torch.rand(2, 16, 16) > 0.3)
    in_fp32 = attend(q.float(), k.float(), v.float(), mask).bfloat16()
    outs = {}
    for upcast in (False, True):
        monkeypatch.setitem(attention._SDPA_UPCAST, ("cpu", torch.bfloat16, False), upcast)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            outs[upcast] = attend(q, k, v, mask)
        assert outs[upcast].dtype == torch.bfloat16
    assert torch.equal(outs[True], in_fp32)
    assert not torch.equal(outs[False], in_fp32)  # the bf16 kernel rounds inside: a different path ran
    assert not attention.sdpa_upcast(torch.device("cpu"), torch.float32)  # fp32 has nothing to gain


def test_the_upcast_decision_is_timed_in_any_grad_mode(monkeypatch):
    """The first bf16 attention may come from generation (inference mode): the timing still runs."""
    monkeypatch.setattr(attention, "_SDPA_UPCAST", {})
    q = torch.randn(1, 2, 4, 8).bfloat16()
    with torch.inference_mode():
        assert attend(q, q, q, None).dtype == torch.bfloat16
    with torch.no_grad():
        attend(q, q, q, None)
    assert set(attention._SDPA_UPCAST) == {("cpu", torch.bfloat16, False)}
    q.requires_grad_()
    attend(q, q, q, None).float().sum().backward()
    assert ("cpu", torch.bfloat16, True) in attention._SDPA_UPCAST and q.grad is not None


def test_the_upcast_timing_runs_fp32_copies_even_under_autocast(monkeypatch):
    """The first bf16 attention of a training step comes from a forward pass under autocast, which would
    cast the timed fp32 copies back to bf16: the timing must see fp32 kernels for its fp32 side."""
    monkeypatch.setattr(attention, "_SDPA_UPCAST", {})
    seen = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def recording(*args, **kwargs):
        out = sdpa(*args, **kwargs)
        seen.append(out.dtype)  # what the kernel computed in (autocast casts inside the call)
        return out

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", recording)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        attention.sdpa_upcast(torch.device("cpu"), torch.bfloat16, backward=True)
    assert torch.float32 in seen and torch.bfloat16 in seen
