"""Drawing tokens from logits: nucleus filtering and inverse-CDF sampling.

Shared by the sampler's commit step and by guidance's hard-token draws.
"""

from __future__ import annotations

import torch
from torch import Tensor


def top_p_filter(logits: Tensor, top_p: float) -> Tensor:
    """Nucleus filter over the last dim: keep the smallest top set with mass ≥ top_p.

    A token is kept iff the mass of the strictly more probable tokens is < top_p, so the
    top-1 always survives; the rest become -inf. top_p = 1 returns the input itself.
    """
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if top_p == 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True, stable=True)
    sorted_probs = torch.softmax(sorted_logits.float(), dim=-1)
    mass_before = torch.cumsum(sorted_probs, dim=-1) - sorted_probs
    drop_sorted = mass_before >= top_p
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def sample_from_uniform(logits: Tensor, uniform: Tensor) -> Tensor:
    """Categorical sample from softmax(logits) by inverse CDF, one given uniform per row.

    Taking the uniform as input (instead of a generator) lets callers draw it from a
    counter-based stream, so a row's sample does not depend on the batch it sits in.
    Picks the first index whose CDF exceeds u·(total mass); zero-probability (-inf)
    tokens have a flat CDF there and are never chosen.
    """
    lead, vocab = logits.shape[:-1], logits.shape[-1]
    if uniform.shape != lead:
        raise ValueError(f"uniform must have shape {tuple(lead)}, got {tuple(uniform.shape)}")
    probs = torch.softmax(logits.detach().float(), dim=-1).reshape(-1, vocab)
    cdf = torch.cumsum(probs, dim=-1)
    target = uniform.detach().to(cdf.dtype).reshape(-1, 1) * cdf[:, -1:]
    index = torch.searchsorted(cdf, target, right=True).squeeze(-1)
    # u·total can round up to total; fall back to the last token with positive mass.
    last_positive = (vocab - 1) - (probs > 0).flip(-1).int().argmax(dim=-1)
    index = torch.minimum(index, last_positive)
    return index.reshape(lead)
