"""Nucleus sampling from explicit uniforms, against hand-computed draws; the log-probability of a draw."""

from __future__ import annotations

import math

import pytest
import torch

from entrgi import categorical
from entrgi.categorical import MASS_BITS, draw_log_prob, nucleus_mask, sample_filtered, sample_nucleus

NINF = float("-inf")


def test_hand_uniforms_without_top_p_follow_vocabulary_order():
    logits = torch.tensor([0.2, 0.5, 0.3]).log().expand(5, 3)
    u = torch.tensor([0.1, 0.6, 0.95, 0.19, 0.71])
    assert sample_nucleus(logits, u).tolist() == [0, 1, 2, 0, 2]  # cdf 0.2, 0.7, 1.0


def test_hand_uniforms_in_the_nucleus_follow_vocabulary_order():
    # probs [0.05, 0.5, 0.15, 0.3]: descending t1 0.5, t3 0.3, t2 0.15, t0 0.05; mass before: 0, .5, .8, .95
    logits = torch.tensor([0.05, 0.5, 0.15, 0.3]).log()
    cases = {  # top_p -> (uniforms, expected tokens)
        0.7: ([0.1, 0.62, 0.63, 0.99], [1, 1, 3, 3]),  # nucleus {1, 3}: cdf 0.625, 1
        0.85: ([0.5, 0.6, 0.95], [1, 2, 3]),  # nucleus {1, 2, 3}: cdf 0.5, 0.65, 0.95 over 0.95
        0.3: ([0.01, 0.99], [1, 1]),
    }
    for top_p, (uniforms, expected) in cases.items():
        u = torch.tensor(uniforms)
        assert sample_nucleus(logits.expand(len(u), 4), u, top_p).tolist() == expected, top_p


def test_ties_at_the_boundary_are_kept_in_vocabulary_order():
    probs = torch.tensor([0.1, 0.2, 0.2, 0.2, 0.2, 0.1])
    mass = (probs * float(1 << MASS_BITS)).long()
    # descending: t1 t2 t3 t4 (0.2 each, by index), then t0 t5; mass before t3 is 0.4, before t4 0.6
    assert nucleus_mask(probs[None], mass[None], 0.5).tolist() == [[False, True, True, True, False, False]]
    assert nucleus_mask(probs[None], mass[None], 0.4).tolist() == [[False, True, True, False, False, False]]
    assert nucleus_mask(probs[None], mass[None], 0.9).tolist() == [[True, True, True, True, True, False]]


def _sorted_nucleus(probs: torch.Tensor, mass: torch.Tensor, top_p: float) -> torch.Tensor:
    """The definition, by a stable descending sort: kept iff the mass before < top_p (clamped to the total)."""
    order = torch.sort(probs, dim=-1, descending=True, stable=True).indices
    ordered = mass.gather(-1, order)
    need = torch.clamp(ordered.sum(-1, keepdim=True), max=int(top_p * (1 << MASS_BITS)))
    keep = (ordered.cumsum(-1) - ordered) < need
    return torch.zeros_like(keep).scatter(-1, order, keep)


def test_boundary_search_equals_the_sorted_definition():
    gen = torch.Generator().manual_seed(3)
    for scale, levels in ((6.0, None), (1.0, None), (0.01, None), (3.0, 4)):
        logits = torch.randn(300, 257, generator=gen) * scale
        if levels is not None:  # many exact ties
            logits = torch.round(logits * levels) / levels
        probs = torch.softmax(logits, dim=-1)
        mass = (probs * float(1 << MASS_BITS)).long()
        for top_p in (0.05, 0.5, 0.9, 0.95, 0.999999):
            expected = _sorted_nucleus(probs, mass, top_p)
            assert torch.equal(nucleus_mask(probs, mass, top_p), expected), (scale, levels, top_p)


def test_a_row_draws_the_same_token_in_any_batch():
    logits = torch.randn(64, 300, generator=torch.Generator().manual_seed(5)) * 4
    u = torch.rand(64, generator=torch.Generator().manual_seed(6))
    together = sample_nucleus(logits, u, 0.9)
    alone = torch.stack([sample_nucleus(logits[i : i + 1], u[i : i + 1], 0.9)[0] for i in range(0, 64, 7)])
    assert torch.equal(together[::7], alone)


def test_frequencies_match_the_renormalised_nucleus():
    probs = torch.tensor([0.1, 0.0, 0.2, 0.3, 0.4])
    n = 200_000
    u = torch.rand(n, generator=torch.Generator().manual_seed(4))
    for top_p, expected in ((1.0, probs), (0.65, torch.tensor([0, 0, 0, 0.3, 0.4]) / 0.7)):
        idx = sample_nucleus(probs.log().expand(n, 5), u, top_p)
        freq = torch.bincount(idx, minlength=5).float() / n
        assert torch.allclose(freq, expected, atol=5e-3), top_p


def test_minus_inf_tokens_are_never_drawn():
    logits = torch.tensor([NINF, 0.0, NINF, 0.0, NINF])
    u = torch.cat([torch.tensor([1e-12, 0.5, 1 - 1e-7]), torch.linspace(1e-6, 1 - 1e-6, 999)])
    for top_p in (1.0, 0.999, 0.5):
        assert set(sample_nucleus(logits.expand(len(u), 5), u, top_p).tolist()) <= {1, 3}


def test_batched_shape_dtype_and_errors():
    logits = torch.tensor([0.2, 0.5, 0.3]).log().expand(2, 3, 3)
    u = torch.tensor([[0.1, 0.6, 0.95], [0.95, 0.6, 0.1]])
    idx = sample_nucleus(logits, u)
    assert idx.dtype == torch.long and idx.tolist() == [[0, 1, 2], [2, 1, 0]]
    with pytest.raises(ValueError):
        sample_nucleus(logits, u[0])
    with pytest.raises(ValueError):
        sample_nucleus(logits, u, top_p=0.0)


NAN, INF = float("nan"), float("inf")
# Rows of 6 logits a forward gone wrong may give, and the tokens a draw may pick (None: any id; the row has no softmax).
ROWS = {
    "all NaN": ([NAN] * 6, None),
    "one NaN": ([0.0, 1.0, NAN, 0.5, -1.0, 2.0], None),
    "one +inf": ([0.0, INF, 0.0, 1.0, 0.0, 0.0], None),
    "two +inf": ([INF, 0.0, 0.0, 0.0, INF, 0.0], None),
    "-inf everywhere": ([NINF] * 6, None),
    "+inf and -inf": ([NINF, INF, NINF, 0.0, 0.0, 0.0], None),
    "NaN and +inf": ([NAN, INF, 0.0, 0.0, 0.0, 0.0], None),
    "one finite": ([NINF, NINF, NINF, 3.0, NINF, NINF], {3}),
    "finite": ([0.5, -2.0, 1.0, 0.0, 4.0, -1.0], set(range(6))),
}


@pytest.mark.parametrize("top_k", [None, 1, 3])
@pytest.mark.parametrize("top_p", [1.0, 0.95, 0.5, 1e-13])
def test_ids_stay_in_the_vocabulary_on_non_finite_logits(top_p, top_k):
    """Every kind of row, mixed in one batch, drawn and taken greedily: ids in [0, V), a finite distribution."""
    logits = torch.tensor([row for row, _ in ROWS.values()])
    u = torch.tensor([1e-12, 0.2, 0.5, 0.8, 1 - 1e-7])
    batch = logits[:, None, :].expand(-1, len(u), -1)  # [rows, draws, V]
    for uniform in (u.expand(len(logits), -1), None):
        ids, probs = sample_filtered(batch, uniform, top_p, top_k)
        assert ids.dtype == torch.long and ids.shape == batch.shape[:-1]
        assert ((ids >= 0) & (ids < 6)).all(), ids
        assert torch.isfinite(probs).all() and torch.allclose(probs.sum(-1), torch.ones(ids.shape))
        for (name, (_, allowed)), row_ids in zip(ROWS.items(), ids.tolist(), strict=True):
            if allowed is not None:
                assert set(row_ids) <= allowed, name


def test_a_row_without_a_softmax_is_read_as_uniform():
    vocab = 10
    u = (torch.arange(vocab) + 0.5) / vocab  # the middle of each token's 1/V of the CDF
    for value in (NAN, INF, NINF):
        assert sample_nucleus(torch.full((vocab, vocab), value), u).tolist() == list(range(vocab)), value


def test_the_top_token_is_kept_however_tiny_top_p_is():
    gen = torch.Generator().manual_seed(8)
    logits = torch.randn(200, 50, generator=gen) * 3
    u = torch.rand(200, generator=gen)
    for top_p in (1e-13, 1e-9, 2.0**-41):
        assert torch.equal(sample_nucleus(logits, u, top_p), logits.argmax(-1)), top_p
        assert torch.equal(sample_nucleus(logits, u, top_p, top_k=5), logits.argmax(-1)), top_p
    ties = torch.tensor([0.0, 2.0, 1.0, 2.0]).expand(3, 4)  # two top tokens: the first in vocabulary order
    assert sample_nucleus(ties, torch.tensor([0.01, 0.5, 0.99]), 1e-13).tolist() == [1, 1, 1]


@pytest.mark.parametrize("top_p,top_k", [(1.0, None), (0.9, None), (0.5, None), (0.95, 20), (1.0, 3)])
def test_draw_log_prob_is_the_log_of_the_filtered_distribution(top_p, top_k):
    """For every token: exp(log-probability) equals the distribution the draw uses, 0 (−inf) off its support."""
    logits = torch.randn(40, 64, generator=torch.Generator().manual_seed(8)) * 3
    logits[:, 5] = NINF
    filtered = sample_filtered(logits, None, top_p, top_k)[1]
    tokens = torch.arange(64).expand(40, 64)
    log_prob = draw_log_prob(logits[:, None, :].expand(40, 64, 64), tokens, False, top_p, top_k)
    assert torch.equal(log_prob == NINF, filtered == 0)
    assert torch.allclose(log_prob.exp(), filtered, rtol=1e-5, atol=1e-7)


def test_draw_log_prob_by_hand_and_greedy():
    # probs [0.05, 0.5, 0.15, 0.3], nucleus at top_p 0.7: {1, 3}, renormalised 0.5/0.8 and 0.3/0.8
    logits = torch.tensor([0.05, 0.5, 0.15, 0.3]).log().expand(4, 4)
    tokens = torch.tensor([0, 1, 2, 3])
    expected = [NINF, math.log(0.625), NINF, math.log(0.375)]
    assert draw_log_prob(logits, tokens, False, 0.7).tolist() == pytest.approx(expected)
    assert draw_log_prob(logits, tokens, True, 0.7).tolist() == [NINF, 0.0, NINF, NINF]  # the argmax, surely


def _reference_draw(logits: torch.Tensor, u: torch.Tensor, top_p: float, top_k: int | None):
    """The definition, written out with a stable index sort and int64 masses: (token ids, kept [R, V])."""
    vocab = logits.shape[-1]
    probs = torch.softmax(logits.float(), dim=-1).nan_to_num(nan=1.0 / vocab)
    mass = (probs * float(1 << MASS_BITS)).long()
    if top_p < 1.0:
        order = torch.sort(probs, dim=-1, descending=True, stable=True).indices  # ties by vocabulary index
        ordered = mass.gather(-1, order)
        need = torch.clamp(ordered.sum(-1, keepdim=True), max=max(1, int(top_p * (1 << MASS_BITS))))
        mass = mass * torch.zeros_like(probs, dtype=torch.bool).scatter(-1, order, ordered.cumsum(-1) - ordered < need)
    if top_k is not None and top_k < vocab:
        mass = mass * (probs >= probs.topk(top_k, dim=-1).values[:, -1:])
    cdf = mass.cumsum(-1)
    target = (u.double()[:, None] * cdf[:, -1:]).long()
    return torch.searchsorted(cdf, target, right=True).squeeze(-1), mass > 0


def _hard_rows(gen: torch.Generator, rows: int, vocab: int) -> torch.Tensor:
    """Instruct-like rows (Zipf over a random ranking), rounded ones (exact ties), -inf tokens and a NaN row."""
    ranks = torch.argsort(torch.rand(rows, vocab, generator=gen), dim=-1).float() + 1
    logits = -(0.8 + 2 * torch.rand(rows, 1, generator=gen)) * ranks.log() + torch.randn(rows, vocab, generator=gen)
    logits[rows // 4 : rows // 2] = torch.round(logits[rows // 4 : rows // 2] * 2) / 2
    logits[rows // 2 :: 3, :: max(2, vocab // 7)] = NINF
    logits[-1, 0] = NAN
    return logits


@pytest.mark.parametrize("vocab", [2, 3, 17, 424, 4999])
@pytest.mark.parametrize("top_p,top_k", [(0.95, None), (0.5, None), (1e-13, None), (0.9, 5), (1.0, 3), (0.999, None)])
def test_draws_and_nucleus_equal_the_reference_definition(vocab, top_p, top_k, monkeypatch):
    """Token for token and kept set for kept set, over row blocks of several sizes (one block, many)."""
    gen = torch.Generator().manual_seed(vocab)
    logits = _hard_rows(gen, 64, vocab)
    u = torch.rand(64, generator=gen)
    ids, kept = _reference_draw(logits, u, top_p, top_k)
    tokens = torch.cat([ids[:, None], torch.randint(vocab, (64, 7), generator=gen)], dim=1)
    for block in (1 << 20, 3 * vocab):
        monkeypatch.setattr(categorical, "BLOCK_ELEMENTS", block)
        drawn, filtered = sample_filtered(logits, u, top_p, top_k)
        assert torch.equal(drawn, ids), block
        assert torch.equal(filtered > 0, kept), block
        assert torch.equal(sample_nucleus(logits, u, top_p, top_k), ids), block
        log_prob = draw_log_prob(logits[:, None, :].expand(-1, 8, -1), tokens, False, top_p, top_k)
        # (the NaN row has no log-probabilities: NaN there)
        assert torch.equal(log_prob[:-1] > NINF, kept.gather(1, tokens)[:-1]), block


def test_draws_equal_the_reference_at_dreams_vocabulary():
    gen = torch.Generator().manual_seed(152064)
    logits = _hard_rows(gen, 4, 152064) / 0.7
    u = torch.rand(4, generator=gen)
    for top_p in (0.95, 0.5):
        assert torch.equal(sample_nucleus(logits, u, top_p), _reference_draw(logits, u, top_p, None)[0]), top_p
