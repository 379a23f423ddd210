"""Hand-checked tests for entrgi.guidance.mix (soft / APS / EntRGi inputs, top-p, sampling)."""

from __future__ import annotations

import math

import pytest
import torch

from entrgi.guidance.mix import (
    MixOutput,
    entropy,
    entropy_weight,
    mix_weight,
    relaxed_embeddings,
    soft_distribution,
)

RULES = ("soft", "aps", "entrgi")

# Hand example, V = 4, d = 2.
# q = softmax(φ) = [1/2, 1/4, 1/8, 1/8]  ->  H = (1/2 + 2/4 + 6/8) ln 2 = 1.75 ln 2,
# log V = 2 ln 2, so w = 0.875.
# ẽ = 1/2·[1,0] + 1/4·[0,1] + 1/8·[1,1] + 1/8·[-1,2] = [0.5, 0.625]
# hard token x = 2: ē = [1, 1];  ē − ẽ = [0.5, 0.375], ‖ē − ẽ‖ = 0.625.
TABLE = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [-1.0, 2.0]])
PROBS = torch.tensor([0.5, 0.25, 0.125, 0.125])
HARD = torch.tensor(2)

# rule -> (ê, E = ‖ê − ẽ‖, D = ‖ê − ē‖, w), at τ = 1
EXPECTED_TAU1 = {
    "soft": ([0.5, 0.625], 0.0, 0.625, 0.0),
    "aps": ([1.0, 1.0], 0.625, 0.0, 1.0),
    # ẽ + 0.875·[0.5, 0.375]; E = 0.875·0.625, D = 0.125·0.625
    "entrgi": ([0.9375, 0.953125], 0.546875, 0.078125, 0.875),
}


def _phi(scale: float = 1.0) -> torch.Tensor:
    return (scale * PROBS.log()).clone().requires_grad_(True)


def _mix(rule: str, phi: torch.Tensor, tau: float, table: torch.Tensor = TABLE) -> MixOutput:
    hard = HARD.expand(phi.shape[:-1])
    return relaxed_embeddings(phi, table, hard, mix_weight(rule, phi), tau)


# --------------------------------------------------------------------------- entropy / weight


def test_entropy_hand_value() -> None:
    assert entropy(PROBS.log()).item() == pytest.approx(1.75 * math.log(2), abs=1e-6)
    assert entropy_weight(PROBS.log()).item() == pytest.approx(0.875, abs=1e-6)


def test_entropy_handles_minus_inf() -> None:
    logits = torch.tensor([0.0, float("-inf"), 0.0, float("-inf")])
    assert entropy(logits).item() == pytest.approx(math.log(2), abs=1e-6)
    assert entropy_weight(logits).item() == pytest.approx(0.5, abs=1e-6)


def test_weight_range_uniform_and_one_hot() -> None:
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 7, 50, generator=gen) * torch.tensor([0.1, 1.0, 5.0, 30.0, 1e3]).view(
        5, 1, 1
    )
    w = entropy_weight(logits)
    assert w.shape == (5, 7) and w.dtype == torch.float32
    assert bool(((w >= 0) & (w <= 1)).all())
    assert torch.allclose(entropy_weight(torch.zeros(3, 50)), torch.ones(3), atol=1e-6)
    near_one_hot = torch.tensor([[100.0, 0.0, 0.0, 0.0], [0.0, 0.0, -50.0, 60.0]])
    assert bool((entropy_weight(near_one_hot) < 1e-6).all())


def test_weight_is_detached_and_float32() -> None:
    phi = torch.randn(2, 6, dtype=torch.float64, requires_grad=True)
    for w in (entropy(phi), entropy_weight(phi), mix_weight("entrgi", phi)):
        assert not w.requires_grad and w.dtype == torch.float32


def test_mix_weight_rules() -> None:
    phi = PROBS.log().expand(2, 3, 4)
    assert torch.equal(mix_weight("soft", phi), torch.zeros(2, 3))
    assert torch.equal(mix_weight("aps", phi), torch.ones(2, 3))
    assert torch.allclose(mix_weight("entrgi", phi), torch.full((2, 3), 0.875))
    given = mix_weight("entrgi", phi, entropy_nats=entropy(phi))
    assert torch.allclose(given, torch.full((2, 3), 0.875))


def test_weight_rules_register_by_name() -> None:
    """A decorated function becomes a rule of mix_weight; a second function under a taken name is refused."""
    from entrgi.guidance.mix import WEIGHT_RULES, weight_rule

    assert list(WEIGHT_RULES)[:3] == ["soft", "aps", "entrgi"]
    phi = PROBS.log().expand(2, 3, 4)

    @weight_rule("quarter-test")
    def quarter(logits, entropy_nats):
        return entropy_nats / 4

    try:
        assert torch.allclose(mix_weight("quarter-test", phi), entropy(phi) / 4)
        with pytest.raises(ValueError, match="'soft' is registered twice"):
            weight_rule("soft")(quarter)
    finally:
        del WEIGHT_RULES["quarter-test"]


def test_mix_weight_unknown_rule() -> None:
    with pytest.raises(ValueError, match="'ste'.*'soft'.*'aps'.*'entrgi'"):
        mix_weight("ste", PROBS.log())


# --------------------------------------------------------------------------- forward values


@pytest.mark.parametrize("rule", RULES)
def test_forward_hand_values_tau1(rule: str) -> None:
    embeds, approx, ood, w = EXPECTED_TAU1[rule]
    out = _mix(rule, _phi(), 1.0)
    assert torch.allclose(out.embeds, torch.tensor(embeds), atol=1e-6)
    assert out.approx_error.item() == pytest.approx(approx, abs=1e-6)
    assert out.ood_distance.item() == pytest.approx(ood, abs=1e-6)
    assert out.weight.item() == pytest.approx(w, abs=1e-6)
    assert out.entropy.item() == pytest.approx(1.75 * math.log(2), abs=1e-6)


def test_forward_tempered_uses_untempered_entropy() -> None:
    # φ = 2·log q, τ = 2: the tempered softmax is still q, so ẽ = [0.5, 0.625], but the
    # untempered softmax is q²/Σq² = [16, 4, 1, 1]/22:
    # H = ln 22 − (16 ln 16 + 4 ln 4)/22 = 0.8225607715…, w = H / ln 4 = 0.5933521729…
    phi = _phi(scale=2.0)
    out = _mix("entrgi", phi, 2.0)
    assert out.entropy.item() == pytest.approx(0.8225607715, abs=1e-6)
    assert out.weight.item() == pytest.approx(0.5933521730, abs=1e-6)
    # ê = [0.5 + 0.5 w, 0.625 + 0.375 w]; E = 0.625 w; D = 0.625 (1 − w)
    assert torch.allclose(out.embeds, torch.tensor([0.7966760865, 0.8475070649]), atol=1e-6)
    assert out.approx_error.item() == pytest.approx(0.3708451081, abs=1e-6)
    assert out.ood_distance.item() == pytest.approx(0.2541548919, abs=1e-6)
    soft = _mix("soft", phi, 2.0)
    assert torch.allclose(soft.embeds, torch.tensor([0.5, 0.625]), atol=1e-6)


def test_entropy_passed_in_is_used() -> None:
    phi = _phi()
    sentinel = torch.tensor(0.123)
    out = relaxed_embeddings(phi, TABLE, HARD, torch.tensor(0.5), 1.0, entropy_nats=sentinel)
    assert out.entropy.item() == pytest.approx(0.123)


def test_batched_matches_rowwise() -> None:
    gen = torch.Generator().manual_seed(1)
    phi = torch.randn(2, 3, 4, generator=gen, requires_grad=True)
    hard = torch.randint(0, 4, (2, 3), generator=gen)
    w = mix_weight("entrgi", phi)
    out = relaxed_embeddings(phi, TABLE, hard, w, 0.7)
    assert out.embeds.shape == (2, 3, 2)
    for name in ("entropy", "weight", "approx_error", "ood_distance"):
        assert getattr(out, name).shape == (2, 3)
    for i in range(2):
        for j in range(3):
            row = relaxed_embeddings(phi[i, j], TABLE, hard[i, j], w[i, j], 0.7)
            assert torch.allclose(out.embeds[i, j], row.embeds, atol=1e-6)
            assert torch.allclose(out.approx_error[i, j], row.approx_error, atol=1e-6)


@pytest.mark.parametrize("rule", RULES)
def test_error_plus_distance_is_gap(rule: str) -> None:
    gen = torch.Generator().manual_seed(2)
    phi = torch.randn(4, 5, 4, generator=gen) * 3
    hard = torch.randint(0, 4, (4, 5), generator=gen)
    out = relaxed_embeddings(phi, TABLE, hard, mix_weight(rule, phi), 1.3)
    soft = torch.softmax(phi / 1.3, dim=-1) @ TABLE
    gap = torch.linalg.vector_norm(TABLE[hard] - soft, dim=-1)
    assert torch.allclose(out.approx_error + out.ood_distance, gap, atol=1e-5)
    for t in (out.approx_error, out.ood_distance, out.weight, out.entropy):
        assert not t.requires_grad and t.dtype == torch.float32
    if rule == "aps":
        assert torch.equal(out.ood_distance, torch.zeros(4, 5))
        assert torch.equal(out.embeds, TABLE[hard])
    if rule == "soft":
        assert torch.equal(out.approx_error, torch.zeros(4, 5))


# --------------------------------------------------------------------------- gradients


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("tau", [1.0, 0.5])
def test_gradient_is_soft_gradient(rule: str, tau: float) -> None:
    gen = torch.Generator().manual_seed(3)
    base = torch.randn(3, 4, generator=gen)
    hard = torch.randint(0, 4, (3,), generator=gen)
    coeff = torch.randn(3, 2, generator=gen)

    # Linear loss: the gradient through ê equals the plain soft-embedding gradient.
    phi = base.clone().requires_grad_(True)
    out = relaxed_embeddings(phi, TABLE, hard, mix_weight(rule, phi), tau)
    (grad_mix,) = torch.autograd.grad((coeff * out.embeds).sum(), phi)
    phi_ref = base.clone().requires_grad_(True)
    soft_ref = torch.softmax(phi_ref / tau, dim=-1) @ TABLE
    (grad_ref,) = torch.autograd.grad((coeff * soft_ref).sum(), phi_ref)
    assert torch.allclose(grad_mix, grad_ref, atol=1e-6)

    # Nonlinear loss: upstream gradient is taken at ê, then flows back through ẽ only.
    phi = base.clone().requires_grad_(True)
    out = relaxed_embeddings(phi, TABLE, hard, mix_weight(rule, phi), tau)
    loss = (out.embeds.sin() * coeff).sum()
    (grad_mix,) = torch.autograd.grad(loss, phi)
    upstream = out.embeds.detach().cos() * coeff
    phi_ref = base.clone().requires_grad_(True)
    soft_ref = torch.softmax(phi_ref / tau, dim=-1) @ TABLE
    (grad_ref,) = torch.autograd.grad(soft_ref, phi_ref, grad_outputs=upstream)
    assert torch.allclose(grad_mix, grad_ref, atol=1e-6)


def test_bf16_table() -> None:
    phi = _phi()
    out = relaxed_embeddings(phi, TABLE.bfloat16(), HARD, mix_weight("entrgi", phi), 1.0)
    assert out.embeds.dtype == torch.bfloat16
    # 0.9375 and 0.953125 are exact in bf16.
    assert torch.allclose(out.embeds.float(), torch.tensor([0.9375, 0.953125]), atol=1e-2)
    coeff = torch.tensor([1.0, -2.0])
    (grad,) = torch.autograd.grad((out.embeds.float() * coeff).sum(), phi)
    phi_ref = _phi()
    (grad_ref,) = torch.autograd.grad(
        ((torch.softmax(phi_ref, -1) @ TABLE) * coeff).sum(), phi_ref
    )
    assert grad.dtype == torch.float32
    assert torch.allclose(grad, grad_ref, atol=1e-2)


def test_shape_validation() -> None:
    phi = _phi()
    with pytest.raises(ValueError):
        relaxed_embeddings(phi, TABLE[:3], HARD, torch.tensor(0.0), 1.0)
    with pytest.raises(ValueError):
        relaxed_embeddings(phi, TABLE, HARD.view(1), torch.tensor(0.0), 1.0)
    with pytest.raises(ValueError):
        relaxed_embeddings(phi, TABLE, HARD, torch.tensor(0.0), 0.0)


def _entropy_definition(logits: torch.Tensor) -> torch.Tensor:
    """H(softmax(logits)) as first written: 0·log 0 = 0 by a `where` on the probabilities."""
    log_p = torch.log_softmax(logits.float(), dim=-1)
    p = log_p.exp()
    return -torch.where(p > 0, p * log_p, torch.zeros_like(p)).sum(-1)


@pytest.mark.parametrize("block", [1 << 20, 1])
def test_entropy_equals_its_definition_in_row_blocks(block, monkeypatch) -> None:
    """Bit for bit, on rows with -inf tokens, a one-hot row, a NaN row; in one block or row by row."""
    from entrgi import categorical

    monkeypatch.setattr(categorical, "BLOCK_ELEMENTS", block)
    logits = torch.randn(3, 5, 300, generator=torch.Generator().manual_seed(2)) * 4
    logits[0, :, ::3] = float("-inf")
    logits[1, 0] = float("-inf")
    logits[1, 0, 7] = 0.0
    logits[2, 1, 4] = float("nan")
    assert torch.equal(entropy(logits), _entropy_definition(logits))


@pytest.mark.parametrize("tau", [1.0, 0.7, 1.3])
def test_soft_distribution_is_the_tempered_softmax_and_the_untempered_entropy(tau) -> None:
    phi = (torch.randn(4, 50, generator=torch.Generator().manual_seed(3)) * 3).requires_grad_(True)
    q, ent = soft_distribution(phi, tau)
    assert torch.allclose(q, torch.softmax(phi / tau, dim=-1), rtol=1e-5, atol=1e-7)
    assert torch.allclose(ent, entropy(phi), rtol=1e-5, atol=1e-6) and not ent.requires_grad
    assert q.requires_grad
    table = torch.randn(50, 2, generator=torch.Generator().manual_seed(4))
    hard, w = torch.zeros(4, dtype=torch.long), torch.full((4,), 0.3)
    shared = relaxed_embeddings(phi, table, hard, w, tau, entropy_nats=ent, soft_probs=q)
    alone = relaxed_embeddings(phi, table, hard, w, tau)
    assert torch.allclose(shared.embeds, alone.embeds, atol=1e-6)
    assert torch.allclose(shared.entropy, alone.entropy, atol=1e-6)
    grads = [torch.autograd.grad(out.embeds.sum(), phi, retain_graph=True)[0] for out in (shared, alone)]
    assert torch.allclose(*grads, atol=1e-6)
