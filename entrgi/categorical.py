"""Drawing a token from logits with nucleus (top-p) filtering and one given uniform per row.

Shared by the sampler's commit step and by guidance's hard-token draws. Randomness comes in
as explicit uniforms (from the counter-based streams of `entrgi.noise`), so a row's sample
does not depend on the batch it sits in.
"""

from __future__ import annotations

import torch
from torch import Tensor


def sample_nucleus(logits: Tensor, uniform: Tensor, top_p: float = 1.0, candidates: int | None = None) -> Tensor:
    """Token ids [...] drawn from softmax(logits) restricted to the top-p nucleus, by inverse CDF.

    The nucleus is the smallest set of most probable tokens with mass >= top_p (a token is
    kept iff the tokens strictly before it in descending order hold < top_p), renormalised.
    With top_p < 1 the CDF runs over the tokens in descending order, so the vocabulary is
    sorted once and the draw happens in sorted space; with top_p = 1 it runs in vocabulary
    order and nothing is sorted. `candidates` = k looks for the nucleus among the k most
    probable tokens only (top-k selection instead of a full sort): identical whenever those
    k tokens hold at least top_p of the mass, cut at k tokens otherwise. Zero-probability
    (-inf) tokens are never drawn.
    """
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    lead, vocab = logits.shape[:-1], logits.shape[-1]
    if uniform.shape != lead:
        raise ValueError(f"uniform must have shape {tuple(lead)}, got {tuple(uniform.shape)}")
    flat = logits.detach().float().reshape(-1, vocab)
    order = None
    if top_p == 1.0:
        probs = torch.softmax(flat, dim=-1)
    elif candidates is not None and candidates < vocab:
        top, order = torch.topk(flat, candidates, dim=-1, sorted=False)
        # Canonical order, as the stable sort gives: by value, ties by vocabulary index (topk
        # leaves ties in a shape-dependent order on CUDA, which would break batch invariance).
        order, by_index = torch.sort(order, dim=-1)
        top, by_value = torch.sort(top.gather(-1, by_index), dim=-1, descending=True, stable=True)
        order = order.gather(-1, by_value)
        probs = torch.exp(top - torch.logsumexp(flat, dim=-1, keepdim=True))
    else:
        top, order = torch.sort(flat, dim=-1, descending=True, stable=True)
        probs = torch.softmax(top, dim=-1)
    cdf = torch.cumsum(probs, dim=-1)
    if top_p < 1.0:
        keep = (cdf - probs) < top_p  # a prefix of the sorted tokens, never empty
        total = torch.where(keep, cdf, torch.zeros_like(cdf)).amax(dim=-1, keepdim=True)
        last = keep.sum(dim=-1) - 1
    else:
        total = cdf[:, -1:]
        last = (probs.shape[-1] - 1) - (probs > 0).flip(-1).int().argmax(dim=-1)  # last token with mass
    target = uniform.detach().reshape(-1, 1).to(cdf.dtype) * total
    index = torch.minimum(torch.searchsorted(cdf, target, right=True).squeeze(-1), last)
    if order is not None:
        index = order.gather(-1, index.unsqueeze(-1)).squeeze(-1)
    return index.reshape(lead)
