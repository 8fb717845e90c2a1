"""Attention masks and the KV cache, against a hand-written softmax attention."""

import pytest
import torch

from fourm.model import attention
from fourm.model.attention import KVCache, SelfAttention, attend, attention_mask
from fourm.model.blocks import DecoderBlock


def reference(q, k, v, allowed):
    scores = (q @ k.transpose(-1, -2)) / q.shape[-1] ** 0.5
    weights = scores.masked_fill(~allowed[:, None], float("-inf")).softmax(-1).nan_to_num(0.0)
    return torch.einsum("bhqk,bhkd->bqhd", weights, v).flatten(2)


@pytest.mark.parametrize("kernel", ["sdpa", "matmul"])
def test_attend_matches_softmax_and_zeroes_rows_without_keys(use_attention_kernel, kernel):
    use_attention_kernel(kernel, torch.float32)
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


def test_matmul_attentions_written_out_backward_is_the_true_gradient():
    """gradcheck in float64: the hand-written backward against finite differences, through a mask whose
    first query may attend a single key and a broadcast key mask."""
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, n, 4, generator=g, dtype=torch.float64, requires_grad=True) for n in (5, 6, 6))
    allowed = torch.rand(2, 1, 5, 6, generator=g) > 0.4
    allowed[..., 0] = True
    allowed[0, 0, 0] = torch.arange(6) == 3
    for mask in (allowed, allowed[:, :, :1]):
        bias = torch.zeros(mask.shape, dtype=torch.float64).masked_fill(~mask, float("-inf"))
        assert torch.autograd.gradcheck(attention.MatmulAttention.apply, (q, k, v, bias))
    assert torch.autograd.gradcheck(attention.MatmulAttention.apply, (q, k, v, None))


@pytest.mark.parametrize("kernel", ["sdpa", "sdpa_fp32", "matmul"])
def test_bf16_attention_under_autocast_is_bf16_and_near_fp32_with_each_kernel(use_attention_kernel, kernel):
    """Under autocast every kernel computes in bf16 terms and hands back bf16; the fp32-copies kernel is
    exactly fp32 attention rounded once, the others round inside (a different path ran)."""
    use_attention_kernel(kernel, torch.bfloat16)
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 16, 8).bfloat16().requires_grad_() for _ in range(3))
    mask = attention_mask(torch.rand(2, 16, 16) > 0.3)
    in_fp32 = attend(q.float(), k.float(), v.float(), mask).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = attend(q, k, v, mask)
    assert out.dtype == torch.bfloat16
    assert torch.equal(out, in_fp32) == (kernel == "sdpa_fp32")
    torch.testing.assert_close(out, in_fp32, atol=2e-2, rtol=2e-2)
    out.float().sum().backward()
    assert all(t.grad is not None and t.grad.dtype == torch.bfloat16 for t in (q, k, v))


def test_the_kernel_decision_is_timed_in_any_grad_mode(monkeypatch):
    """The first bf16 attention may come from generation (inference mode): the timing still runs."""
    monkeypatch.setattr(attention, "_KERNEL", {})
    timed = []
    timer = attention._time_kernels
    monkeypatch.setattr(attention, "_time_kernels", lambda *args: timed.append(timer(*args)) or timed[-1])
    q = torch.randn(1, 2, 4, 8).bfloat16()
    with torch.inference_mode():
        assert attend(q, q, q, None).dtype == torch.bfloat16
    with torch.no_grad():
        attend(q, q, q, None)
    assert set(attention._KERNEL) == {("cpu", torch.bfloat16, False)}
    assert len(timed) == 1 and set(timed[0]) == {"sdpa", "sdpa_fp32", "matmul"}
    q.requires_grad_()
    attend(q, q, q, None).float().sum().backward()
    assert ("cpu", torch.bfloat16, True) in attention._KERNEL and q.grad is not None
    assert attention.attention_kernel(torch.device("cpu"), torch.bfloat16, dropout=True) != "matmul"  # no dropout
    assert attention.attention_kernel(torch.device("cpu"), torch.float32) == "sdpa"  # not timed: reproducible
    assert len(timed) == 2


def test_the_kernel_timing_runs_fp32_copies_even_under_autocast(monkeypatch):
    """The first bf16 attention of a training step comes from a forward pass under autocast, which would
    cast the timed fp32 copies back to bf16: the timing must see fp32 kernels for its fp32 side."""
    monkeypatch.setattr(attention, "_KERNEL", {})
    seen = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def recording(*args, **kwargs):
        out = sdpa(*args, **kwargs)
        seen.append(out.dtype)  # what the kernel computed in (autocast casts inside the call)
        return out

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", recording)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        attention.attention_kernel(torch.device("cpu"), torch.bfloat16, backward=True)
    assert torch.float32 in seen and torch.bfloat16 in seen


@pytest.mark.parametrize("kernel", ["sdpa", "matmul"])
def test_cached_self_attention_equals_causal_attention(use_attention_kernel, kernel):
    use_attention_kernel(kernel, torch.float32)
    torch.manual_seed(0)
    attn = SelfAttention(32, 4).eval()
    x = torch.randn(2, 40, 32)
    causal = torch.ones(40, 40, dtype=torch.bool).tril().expand(2, 40, 40)
    full = attn(x, attention_mask(causal))
    cache, steps, start = KVCache(), [], 0
    for n in (1, 2, 2, 11, 3, 5, 16):  # the cache's buffers grow past 16 and 32 tokens, once by many at a time
        chunk = slice(start, start + n)
        steps.append(attn(x[:, chunk], attention_mask(causal[:, chunk, : chunk.stop]), cache))
        start += n
        assert len(cache) == start
    assert torch.allclose(torch.cat(steps, 1), full, atol=1e-5)


def test_a_cache_written_at_slots_overwrites_them_and_leaves_the_unwritten_ones_zero():
    """KVCache.write (FourM.encode_step's): a slot written again takes the new values, a row's slots that no
    token reached read zero (masked keys must stay finite: NaN times a zero softmax weight is NaN), and the
    buffers grow past their capacity keeping what they held."""
    cache = KVCache()
    k, v = torch.randn(2, 3, 4, 8), torch.randn(2, 3, 4, 8)
    cache.write(k, v, torch.tensor([[0, 1, 2, 3], [0, 1, 5, 5]]), 6)  # row 1: slots 3 and 4 left out
    k2 = torch.randn(2, 3, 20, 8)
    slots = torch.arange(20).expand(2, 20) + 6
    slots[0, 0] = 1  # row 0 writes slot 1 again
    keys, values = cache.write(k2, k2 * 2, slots, 26)
    assert keys.shape == (2, 3, 26, 8) and cache.k.shape[2] >= 26
    assert torch.equal(keys[0, :, 1], k2[0, :, 0]) and torch.equal(keys[0, :, 0], k[0, :, 0])
    assert torch.equal(keys[0, :, 6], torch.zeros(3, 8))  # row 0's slot 6: its token went to slot 1
    assert torch.equal(keys[1, :, 3:5], torch.zeros(3, 2, 8)) and torch.equal(values[1, :, 7:26], 2 * k2[1, :, 1:])


@pytest.mark.slow
def test_compiled_matmul_attention_in_a_decoder_block_gives_the_eager_output_and_gradients(use_attention_kernel):
    """Self- and cross-attention in one compiled graph, bf16 autocast, head width 64, padded queries, as
    many memory tokens as queries: inductor (torch 2.13, CPU) compiled this to NaN when the kernel was
    handed views of the fused qkv projection (head width 32, or 24 memory tokens, did not show it); the
    kernel copies them."""
    use_attention_kernel("matmul", torch.bfloat16)
    torch.manual_seed(0)
    block = DecoderBlock(128, 2)
    x, memory = torch.randn(2, 32, 128, requires_grad=True), torch.randn(2, 32, 128)
    valid = torch.rand(2, 32) > 0.3
    self_mask = attention_mask(valid[:, None, :] & valid[:, :, None])
    cross_mask = attention_mask(torch.rand(2, 1, 32) > 0.2)
    results = []
    for run in (block, torch.compile(block)):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = run(x, self_mask, cross_mask, memory=memory)
        grads = torch.autograd.grad(out.float().square().sum(), [x, *block.parameters()])
        results.append((out, grads))
    (eager, eager_grads), (compiled, compiled_grads) = results
    assert compiled.isfinite().all()
    torch.testing.assert_close(compiled, eager, rtol=2e-2, atol=2e-2)
    for a, b in zip(eager_grads, compiled_grads, strict=True):
        torch.testing.assert_close(b, a, rtol=5e-2, atol=5e-2 * a.abs().max().item())
