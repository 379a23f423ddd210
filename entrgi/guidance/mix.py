"""What the reward model sees at a masked position (SPEC §1, §2 step 3, §5).

Pure tensor functions, no model inside. The three input rules of the paper share one
code path: the RM input is ê = ẽ + sg(w·(ē − ẽ)) with a per-position weight w
(soft: w ≡ 0, APS/STE: w ≡ 1, EntRGi: w = normalised entropy).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from entrgi.categorical import row_blocks

__all__ = [
    "WEIGHT_RULES",
    "MixOutput",
    "entropy",
    "entropy_weight",
    "mix_weight",
    "relaxed_embeddings",
    "soft_distribution",
    "weight_rule",
]


# A weight rule maps the untempered logits φ [..., V] (and their entropy H [...] in nats) to the
# per-position weight w [...] in [0, 1], float32 and detached. Registered by name: the name is the
# value of `guidance.rule`, so a new rule is one decorated function plus one YAML file.
WeightRule = Callable[[Tensor, Tensor], Tensor]
WEIGHT_RULES: dict[str, WeightRule] = {}


def weight_rule(name: str) -> Callable[[WeightRule], WeightRule]:
    """Register `fn(logits, entropy_nats) -> w` as the weight rule `name` (usable as `guidance.rule=name`)."""

    def register(fn: WeightRule) -> WeightRule:
        if name in WEIGHT_RULES and WEIGHT_RULES[name] is not fn:
            raise ValueError(f"weight rule {name!r} is registered twice")
        WEIGHT_RULES[name] = fn
        return fn

    return register


@weight_rule("soft")
def soft_weight(logits: Tensor, entropy_nats: Tensor) -> Tensor:
    """w ≡ 0: continuous relaxation, exact gradient, off-distribution input."""
    return torch.zeros(logits.shape[:-1], dtype=torch.float32, device=logits.device)


@weight_rule("aps")
def aps_weight(logits: Tensor, entropy_nats: Tensor) -> Tensor:
    """w ≡ 1: straight-through, real tokens, gradient taken elsewhere."""
    return torch.ones(logits.shape[:-1], dtype=torch.float32, device=logits.device)


@weight_rule("entrgi")
def entrgi_weight(logits: Tensor, entropy_nats: Tensor) -> Tensor:
    """w = H / log V: the paper's entropy-aware interpolation."""
    return _normalise_entropy(entropy_nats.detach().float(), logits.shape[-1])


def lookup_rule(rule: str) -> WeightRule:
    """The registered weight rule `rule`; fail loudly with the allowed names."""
    try:
        return WEIGHT_RULES[rule]
    except KeyError:
        allowed = ", ".join(repr(r) for r in WEIGHT_RULES)
        raise ValueError(f"unknown mix rule {rule!r}; allowed: {allowed}") from None


@dataclass(frozen=True)
class MixOutput:
    """RM input at masked positions plus the per-position diagnostics of SPEC §5."""

    embeds: Tensor  # ê [..., d], dtype of the embedding table; gradient flows only via ẽ
    entropy: Tensor  # H of softmax(φ) (untempered), nats, float32, detached [...]
    weight: Tensor  # w, float32, detached [...]
    approx_error: Tensor  # E = ‖ê − ẽ‖₂, float32, detached [...]
    ood_distance: Tensor  # D = ‖ê − ē‖₂, float32, detached [...]


def _entropy_from_log_probs(log_probs: Tensor, probs: Tensor | None = None) -> Tensor:
    """Shannon entropy [...] from log-probabilities [..., V] (and their exp, when at hand), with 0·log 0 = 0
    so -inf logits are safe: 0·(-inf) is NaN, and the only NaN terms are those (or a NaN row's, read as 0)."""
    plogp = (log_probs.exp() if probs is None else probs) * log_probs
    return -plogp.nan_to_num_(nan=0.0).sum(dim=-1)


def entropy(logits: Tensor) -> Tensor:
    """H(softmax(logits)) in nats over the last dim, float32 and detached.

    Detached because it is a measurement and the EntRGi weight is stop-gradient anyway. On a CPU the
    rows go in blocks (`entrgi.categorical.row_blocks`), so no vocabulary-sized temporary is made.
    """
    flat = logits.detach().reshape(-1, logits.shape[-1])
    out = torch.empty(flat.shape[0], dtype=torch.float32, device=flat.device)
    for rows in row_blocks(*flat.shape, flat.device):
        out[rows] = _entropy_from_log_probs(torch.log_softmax(flat[rows].float(), dim=-1))
    return out.reshape(logits.shape[:-1])


def soft_distribution(logits: Tensor, temperature: float) -> tuple[Tensor, Tensor]:
    """(softmax(φ/τ) [..., V] float32, differentiable w.r.t. φ; H(softmax(φ)) [...] in nats, detached): what
    the soft embedding and the entropy weight read of logits φ [..., V]. At τ = 1 both come from one
    log-softmax; otherwise the entropy is of the untempered φ (`entropy`)."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if temperature == 1:
        log_q = torch.log_softmax(logits.float(), dim=-1)
        q = log_q.exp()
        return q, _entropy_from_log_probs(log_q.detach(), q.detach())
    return torch.softmax(logits.float() / temperature, dim=-1), entropy(logits)


def _normalise_entropy(ent: Tensor, vocab_size: int) -> Tensor:
    """Divide by the maximum entropy log V so the weight lies in [0, 1]."""
    if vocab_size < 2:
        raise ValueError(f"normalised entropy needs a vocabulary of >= 2 tokens, got {vocab_size}")
    return (ent / math.log(vocab_size)).clamp_(0.0, 1.0)


def entropy_weight(logits: Tensor) -> Tensor:
    """EntRGi weight w = H(softmax(φ)) / log V of the *untempered* logits, float32, detached.

    Clamped to [0, 1] only to absorb float rounding at the uniform distribution.
    """
    return _normalise_entropy(entropy(logits), logits.shape[-1])


def mix_weight(rule: str, logits: Tensor, *, entropy_nats: Tensor | None = None) -> Tensor:
    """Per-position weight w [logits.shape[:-1]] of the registered weight rule `rule`, float32 and detached.

    Pass `entropy_nats` (of the untempered logits) when already computed, to skip a softmax.
    Raises ValueError for a rule that is not registered.
    """
    fn = lookup_rule(rule)
    return fn(logits, entropy(logits) if entropy_nats is None else entropy_nats)


def relaxed_embeddings(
    logits: Tensor,
    embedding_table: Tensor,
    hard_tokens: Tensor,
    weight: Tensor,
    temperature: float,
    *,
    entropy_nats: Tensor | None = None,
    soft_probs: Tensor | None = None,
) -> MixOutput:
    """RM input ê = ẽ + sg(w·(ē − ẽ)) with ẽ = softmax(φ/τ) @ E and ē = E[x].

    Shapes: logits φ [..., V], embedding_table E [V, d] (RM rows in dLLM vocabulary
    order), hard_tokens x [...], weight w [...]. `entropy_nats` (of the untempered φ) and
    `soft_probs` (softmax(φ/τ), differentiable: `soft_distribution`) may be passed in to avoid
    recomputing them.

    Dtype: ẽ is computed in E's dtype (probabilities are cast, the table is not), because
    the RM consumes that dtype and a float32 copy of a 152k×d table per call would cost
    gigabytes; the cast is differentiable, so ∂ê/∂φ is exactly ∂ẽ/∂φ up to that rounding.
    The forward value is built as sg((1 − w)·ẽ + w·ē) + (ẽ − sg(ẽ)), which equals the
    formula above but makes w = 0 give exactly ẽ and w = 1 exactly ē. The table is
    detached: the RM is frozen and only φ is optimised.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    lead, vocab = logits.shape[:-1], logits.shape[-1]
    if embedding_table.dim() != 2 or embedding_table.shape[0] != vocab:
        raise ValueError(
            f"embedding_table must be [V={vocab}, d], got {tuple(embedding_table.shape)}"
        )
    if hard_tokens.shape != lead or weight.shape != lead:
        raise ValueError(
            f"hard_tokens {tuple(hard_tokens.shape)} and weight {tuple(weight.shape)} "
            f"must both have shape {tuple(lead)}"
        )
    table = embedding_table.detach()

    if soft_probs is not None:
        q, ent = soft_probs, entropy(logits) if entropy_nats is None else entropy_nats.detach().float()
    elif entropy_nats is None:
        q, ent = soft_distribution(logits, temperature)
    else:
        q, ent = torch.softmax(logits.float() / temperature, dim=-1), entropy_nats.detach().float()
    soft = q.to(table.dtype) @ table  # ẽ [..., d], differentiable w.r.t. φ
    hard = table[hard_tokens]  # ē [..., d]

    w = weight.detach().float().unsqueeze(-1)
    soft_value = soft.detach().float()
    hard_value = hard.float()
    mixed = (1.0 - w) * soft_value + w * hard_value
    embeds = mixed.to(table.dtype) + (soft - soft.detach())

    with torch.no_grad():
        fed = embeds.detach().float()
        approx_error = torch.linalg.vector_norm(fed - soft_value, dim=-1)
        ood_distance = torch.linalg.vector_norm(fed - hard_value, dim=-1)
    return MixOutput(
        embeds=embeds,
        entropy=ent,
        weight=w.squeeze(-1),
        approx_error=approx_error,
        ood_distance=ood_distance,
    )
