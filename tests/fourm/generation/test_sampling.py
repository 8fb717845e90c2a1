"""Step schedules and token draws: exact counts, filters that keep only allowed tokens, greedy, seeds."""

import math

import pytest
import torch

from fourm.generation import sampling
from fourm.generation.sampling import CDF_BLOCK, nucleus_threshold, sample, temperature_at, tokens_per_step


@pytest.mark.parametrize("schedule", ["cosine", "cosine_annealing", "linear"])
@pytest.mark.parametrize("total,steps", [(196, 8), (16, 8), (5, 8), (1, 1), (0, 4), (64, 1), (100, 12)])
def test_steps_decide_exactly_the_total_and_at_least_one_each_while_possible(schedule, total, steps):
    counts = tokens_per_step(total, steps, schedule)
    assert len(counts) == steps and sum(counts) == total and min(counts) >= 0
    assert all(c >= 1 for c in counts[: min(total, steps)])


def test_cosine_decides_few_tokens_first_and_many_last():
    counts = tokens_per_step(196, 8, "cosine")
    assert counts[0] < counts[-1] and counts == sorted(counts)
    linear = tokens_per_step(196, 8, "linear")
    assert max(linear) - min(linear) <= 1


def test_cosine_annealing_decides_most_in_the_middle_as_4m_does():
    counts = tokens_per_step(196, 8, "cosine_annealing")
    # 4M's cosine_schedule(8, 196) (fourm/utils/generation.py of apple/ml-4m) decides 7, 21, 32, 38, 38, 32, 21, 7;
    # the goals here are floored where it rounds each step's share, so a token may move to the next step
    assert counts == [8, 21, 32, 37, 38, 32, 21, 7]
    assert counts[:4] == sorted(counts[:4]) and counts[4:] == sorted(counts[4:], reverse=True)


def test_unknown_schedule_is_an_error():
    with pytest.raises(ValueError, match="unknown mask schedule 'square'"):
        tokens_per_step(10, 2, "square")
    with pytest.raises(ValueError, match="temperature schedule"):
        temperature_at(0, 2, 1.0, "square")
    assert temperature_at(4, 8, 2.0, "linear") == 1.0 and temperature_at(4, 8, 2.0, "constant") == 2.0


def test_top_k_draws_only_the_k_best_and_greedy_takes_the_best():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(500, 50, generator=g)
    ids, logp = sample(logits, 1.0, top_k=3, generator=g)
    best3 = logits.topk(3).indices
    assert (best3 == ids[:, None]).any(1).all()
    assert torch.allclose(logp.exp().clamp(max=1), logp.exp()) and (logp <= 0).all()
    greedy, _ = sample(logits, 0.0)
    assert torch.equal(greedy, logits.argmax(-1))


@pytest.mark.parametrize("vocab", [50, 768])
def test_top_p_draws_only_from_the_nucleus_of_peaked_and_flat_rows(vocab):
    g = torch.Generator().manual_seed(1)
    peaked = torch.randn(200, vocab, generator=g) * 4
    flat = torch.randn(200, vocab, generator=g) * 0.01  # nucleus of ~90% of the vocabulary
    logits = torch.cat([peaked, flat])
    ids, _ = sample(logits, 1.0, top_p=0.9, generator=g)
    probs = logits.softmax(-1)
    sorted_p, order = probs.sort(-1, descending=True)
    rank = order.argsort(-1).gather(1, ids[:, None]).squeeze(1)
    mass_before = (sorted_p.cumsum(-1) - sorted_p).gather(1, rank[:, None]).squeeze(1)
    assert (mass_before < 0.9 + 1e-5).all()
    assert (rank[200:] >= 0.5 * vocab).any()  # the flat rows' nucleus is most of the vocabulary


@pytest.mark.parametrize("top_p", [0.05, 0.5, 0.9, 0.999])
def test_the_nucleus_is_the_fewest_best_tokens_holding_top_p(top_p):
    g = torch.Generator().manual_seed(2)
    # rows of a wide spread too (past NUCLEUS_SPAN: their tail shares the last bucket)
    logits = torch.cat([torch.randn(50, 3000, generator=g) * scale for scale in (3, 0.05, 12)])
    kept = logits >= nucleus_threshold(logits, top_p)
    # by the definition: sorted best first, a token stays while the better ones hold less than top_p
    sorted_p, order = logits.softmax(-1).sort(-1, descending=True)
    before = torch.zeros_like(logits).scatter_(1, order, sorted_p.cumsum(-1) - sorted_p)
    differ = kept != (before < top_p)
    # fp32 sums in another order may disagree only on a token at the boundary itself: one per row at most (how
    # many rows land a rounding away from top_p depends on the CPU's summation order)
    assert ((before[differ] - top_p).abs() < 1e-5).all()
    assert differ.sum(1).max() <= 1 and kept.sum(1).min() >= 1


def test_the_nucleus_keeps_ties_with_its_last_token_and_never_an_excluded_one():
    row = torch.full((1, 2000), -math.inf)
    row[0, [5, 700, 1999]] = 0.0  # three equal tokens: a third of the mass each
    row[0, 300] = -50.0  # far below the others, but finite
    for top_p in (0.2, 0.5, 0.9):
        kept = row >= nucleus_threshold(row, top_p)
        assert kept.nonzero()[:, 1].tolist() == [5, 700, 1999]  # a tie with the last token kept stays
    flat = torch.zeros(3, 3000)  # every token equal: all in one bucket, all kept
    assert (flat >= nucleus_threshold(flat, 0.3)).all()


@pytest.mark.parametrize("top_p", [1.0, 0.7])
def test_blocks_of_rows_draw_what_one_block_draws(monkeypatch, top_p):
    # the draw handles rows in blocks of ROW_BLOCK logits, reusing its buffers: 3 + 3 + 3 + 1 rows here
    logits = torch.randn(10, 1000, generator=torch.Generator().manual_seed(5)) * 3
    whole = sample(logits, 1.5, top_p=top_p, generator=torch.Generator().manual_seed(6))
    monkeypatch.setattr(sampling, "ROW_BLOCK", 3 * 1000)
    blocks = sample(logits, 1.5, top_p=top_p, generator=torch.Generator().manual_seed(6))
    assert torch.equal(whole[0], blocks[0]) and torch.equal(whole[1], blocks[1])
    first = sample(logits[:1], 1.5, top_p=top_p, generator=torch.Generator().manual_seed(6))[0]
    assert first.item() == whole[0][0].item()  # the first row draws the first uniform, alone or not


def test_a_row_draws_the_same_token_alone_or_with_others_of_any_shape():
    # peaked rows look among their best candidates first, flat ones search the histogram, and some peaked
    # ones fall back to it: which path a row takes depends on that row alone
    g = torch.Generator().manual_seed(11)
    peaked = torch.randn(6, 3000, generator=g) * 6
    flat = torch.randn(6, 3000, generator=g) * 0.5
    wide = torch.cat([torch.zeros(6, 1), torch.full((6, 100), -3.0), torch.full((6, 2899), -30.0)], 1)
    logits = torch.cat([peaked, flat, wide])
    for i in range(len(logits)):
        alone = sample(logits[i:i + 1], 0.8, top_p=0.9, generator=torch.Generator().manual_seed(i))
        first = sample(torch.cat([logits[i:i + 1], logits]), 0.8, top_p=0.9, generator=torch.Generator().manual_seed(i))
        assert alone[0].item() == first[0][0].item()
        torch.testing.assert_close(alone[1][0], first[1][0])


def test_threads_drawing_at_once_each_draw_what_one_thread_draws():
    # the draws keep their buffers per thread between calls: two threads at once must not share them
    from concurrent.futures import ThreadPoolExecutor

    g = torch.Generator().manual_seed(12)
    batches = [torch.randn(40, 2000, generator=g) * s for s in (0.3, 1.0, 3.0, 0.5)]

    def draw(i):
        return [sample(logits, 1.0 + i % 2, top_p=0.8, generator=torch.Generator().manual_seed(i))[0]
                for logits in batches for _ in range(5)]

    alone = [draw(i) for i in range(4)]
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(draw, range(4)))
    for a, b in zip(alone, together, strict=True):
        assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def test_same_generator_seed_draws_the_same_tokens():
    logits = torch.randn(64, 100)
    a = sample(logits, 1.0, top_p=0.8, generator=torch.Generator().manual_seed(3))[0]
    b = sample(logits, 1.0, top_p=0.8, generator=torch.Generator().manual_seed(3))[0]
    c = sample(logits, 1.0, top_p=0.8, generator=torch.Generator().manual_seed(4))[0]
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert math.isfinite(float(sample(logits, 0.5, top_k=5, top_p=0.5)[1].sum()))


def test_draws_follow_the_distribution_and_never_pick_an_excluded_token():
    probs = torch.tensor([0.5, 0.3, 0.2, 0.0])
    logits = probs.log().expand(40000, 4)
    ids, logp = sample(logits, 1.0, generator=torch.Generator().manual_seed(0))
    freq = torch.bincount(ids, minlength=4).float() / len(ids)
    assert freq[3] == 0 and torch.allclose(freq, probs, atol=0.01)
    torch.testing.assert_close(logp, probs.log()[ids])


def _nucleus_by_sorting(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """The definition, by a sort: the best tokens while the better ones hold less than top_p, and ties with
    the last of them -> the distribution renormalised over them."""
    sorted_p, order = probs.sort(descending=True)
    inside = (sorted_p.cumsum(0) - sorted_p) < top_p
    last = sorted_p[inside][-1]
    kept = probs >= last
    return torch.where(kept, probs, 0.0) / probs[kept].sum()


@pytest.mark.parametrize("scale,temperature,top_p", [(2.0, 1.0, 0.6), (4.0, 1.5, 0.8), (1.0, 0.7, 0.3),
                                                     (2.0, 0.5, 0.9)])
def test_top_p_draws_follow_the_renormalised_nucleus(scale, temperature, top_p):
    # a 2000-token row whose nucleus is tens of tokens: the draw inverts its CDF bucket by bucket, then
    # inside the crossing bucket; a peaked row (the last case) among its best candidates, and one peaked
    # but with a nucleus beyond them (the second) falls back; the frequencies and the returned
    # log-probabilities are the nucleus's
    logits = torch.randn(2000, generator=torch.Generator().manual_seed(7)) * scale
    expected = _nucleus_by_sorting((logits / temperature).softmax(0).double(), top_p).float()
    assert 5 < (expected > 0).sum() < 300
    ids, logp = sample(logits.expand(30000, -1), temperature, top_p=top_p, generator=torch.Generator().manual_seed(8))
    assert (expected[ids] > 0).all()
    freq = torch.bincount(ids, minlength=2000).float() / len(ids)
    torch.testing.assert_close(freq, expected, atol=0.01, rtol=0)
    torch.testing.assert_close(logp, expected.log()[ids], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("tail", [1e-12, 0.0])
def test_top_p_keeps_ties_in_the_draw_and_draws_them_evenly(tail):
    # 0.3, 0.2, then three tokens of 0.1: at top_p 0.65 the third 0.1 would not be needed, but ties stay;
    # the rest of a 600-token row is a tiny tail (its log-weights within the histogram's span) or excluded
    probs = torch.full((600,), tail)
    probs[[4, 90, 91, 300, 599, 7, 8, 9, 10]] = torch.tensor([0.3, 0.2, 0.1, 0.1, 0.1, 0.05, 0.05, 0.05, 0.05])
    ids, logp = sample(probs.log().expand(40000, -1), 1.0, top_p=0.65, generator=torch.Generator().manual_seed(9))
    freq = torch.bincount(ids, minlength=600).float() / len(ids)
    expected = torch.zeros(600)
    expected[[4, 90, 91, 300, 599]] = torch.tensor([0.375, 0.25, 0.125, 0.125, 0.125])
    torch.testing.assert_close(freq, expected, atol=0.01, rtol=0)
    torch.testing.assert_close(logp, expected.log()[ids], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_a_wide_vocabulary_is_drawn_by_its_distribution_across_blocks_and_the_padded_last_one(temperature):
    # 1000 tokens: the draw's two-level CDF (blocks of CDF_BLOCK, the last one padded with zero weights)
    probs = torch.zeros(1000)
    probs[[0, 127, 128, 500, 999]] = torch.tensor([0.1, 0.2, 0.3, 0.15, 0.25])
    assert 2 * CDF_BLOCK < 1000 and 1000 % CDF_BLOCK
    ids, logp = sample(probs.log().expand(40000, -1), temperature, generator=torch.Generator().manual_seed(0))
    tempered = probs ** (1 / temperature) / (probs ** (1 / temperature)).sum()
    freq = torch.bincount(ids, minlength=1000).float() / len(ids)
    assert freq[tempered == 0].sum() == 0  # no excluded token, no padding
    torch.testing.assert_close(freq, tempered, atol=0.01, rtol=0)
    torch.testing.assert_close(logp, tempered.log()[ids])
