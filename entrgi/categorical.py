"""Drawing tokens from logits: nucleus filtering and inverse-CDF sampling.

Shared by the sampler's commit step and by guidance's hard-token draws.
"""

from __future__ import annotations

import torch
from torch import Tensor


def top_p_filter(logits: Tensor, top_p: float, candidates: int | None = None) -> Tensor:
    """Nucleus filter over the last dim: keep the smallest top set with mass ≥ top_p.

    A token is kept iff the mass of the strictly more probable tokens is < top_p, so the
    top-1 always survives; the rest become -inf. top_p = 1 returns the input itself.

    `candidates` = k looks for the nucleus among the k most probable tokens only (a top-k
    selection instead of sorting the whole vocabulary). The result is the same whenever
    those k tokens hold at least top_p of the mass; where they do not, the nucleus is cut
    at k tokens.
    """
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if top_p == 1.0:
        return logits
    if candidates is not None and candidates < logits.shape[-1]:
        top_logits, order = torch.topk(logits, candidates, dim=-1, sorted=True)
        top_probs = torch.exp(top_logits.float() - torch.logsumexp(logits.float(), dim=-1, keepdim=True))
        keep = (torch.cumsum(top_probs, dim=-1) - top_probs) < top_p
        kept = torch.where(keep, top_logits, torch.full_like(top_logits, float("-inf")))
        return torch.full_like(logits, float("-inf")).scatter(-1, order, kept)
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
