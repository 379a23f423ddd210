"""Nucleus sampling from explicit uniforms, against hand-computed draws."""

from __future__ import annotations

import pytest
import torch

from entrgi.categorical import sample_nucleus

NINF = float("-inf")


def test_hand_uniforms_without_top_p_follow_vocabulary_order():
    logits = torch.tensor([0.2, 0.5, 0.3]).log().expand(5, 3)
    u = torch.tensor([0.1, 0.6, 0.95, 0.19, 0.71])
    assert sample_nucleus(logits, u).tolist() == [0, 1, 2, 0, 2]  # cdf 0.2, 0.7, 1.0


def test_hand_uniforms_in_the_nucleus_follow_descending_order():
    # probs [0.05, 0.5, 0.15, 0.3]: sorted t1 0.5, t3 0.3, t2 0.15, t0 0.05; mass before: 0, .5, .8, .95
    logits = torch.tensor([0.05, 0.5, 0.15, 0.3]).log()
    cases = {  # top_p -> (nucleus in order, uniforms, expected tokens)
        0.7: ([1, 3], [0.1, 0.62, 0.63, 0.99], [1, 1, 3, 3]),  # renormalised 0.625 / 0.375
        0.85: ([1, 3, 2], [0.5, 0.6, 0.95], [1, 3, 2]),  # u·0.95 against cdf 0.5, 0.8, 0.95
        0.3: ([1], [0.01, 0.99], [1, 1]),
    }
    for top_p, (_, uniforms, expected) in cases.items():
        u = torch.tensor(uniforms)
        assert sample_nucleus(logits.expand(len(u), 4), u, top_p).tolist() == expected, top_p


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


def test_candidates_equal_the_full_sort_when_they_cover_the_nucleus():
    logits = torch.randn(64, 500, generator=torch.Generator().manual_seed(0)) * 6
    u = torch.rand(64, generator=torch.Generator().manual_seed(1))
    assert torch.equal(sample_nucleus(logits, u, 0.9, candidates=64), sample_nucleus(logits, u, 0.9))


def test_candidates_cut_a_wider_nucleus_at_k():
    logits = torch.zeros(1000, 100)  # uniform: the 0.9 nucleus holds 90 tokens
    u = torch.rand(1000, generator=torch.Generator().manual_seed(2))
    drawn = sample_nucleus(logits, u, 0.9, candidates=10)
    assert len(set(drawn.tolist())) == 10
    assert len(set(sample_nucleus(logits, u, 0.9).tolist())) == 90
