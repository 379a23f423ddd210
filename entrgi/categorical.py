"""Drawing a token from logits with nucleus (top-p) filtering and one given uniform per row.

Shared by the sampler's commit step and by guidance's hard-token draws, which together run it
M + 1 times per denoising step over every masked position: it must cost a few passes over the
vocabulary, not a sort. `draw_log_prob` gives the probability of a draw under the same filtering
(the importance weights of `guidance=entrgi-smc`). Randomness comes in as explicit uniforms (from the counter-based
streams of `entrgi.noise`), so a row's sample does not depend on the batch it sits in.

Probability mass is counted in integers (`MASS_BITS` fractional bits): integer sums are exact
and order-free, so the nucleus and the draw are the same on every device, batch size and
thread count, where float sums in a different order could move a token across the boundary.

Logits with a NaN or +inf in a row, or -inf everywhere, have no softmax (it is NaN throughout);
such a row is read as the uniform distribution, so a draw is always a token id in [0, V). The
sampler detects such logits itself and stops the job (`entrgi.nonfinite`).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

MASS_BITS = 40  # 2^-40 resolution; a vocabulary of up to 2^23 tokens still sums inside int64


def sample_nucleus(logits: Tensor, uniform: Tensor, top_p: float = 1.0, top_k: int | None = None) -> Tensor:
    """Token ids [...] drawn from softmax(logits) restricted to the top-p nucleus (and top-k), by inverse CDF.

    The nucleus is the smallest set of most probable tokens with mass >= top_p (a token is kept
    iff the tokens before it in descending order, ties broken by vocabulary index, hold < top_p),
    renormalised. With `top_k`, only tokens at least as probable as the k-th most probable stay
    (ties at it kept, as Dream's `top_k_logits`). The CDF runs over the kept tokens in vocabulary
    order, so a uniform picks the same token whichever way the nucleus was found. Zero-probability
    (-inf) tokens are never drawn. However tiny top_p is, the most probable token is kept. A row
    without a softmax (NaN, +inf, or -inf everywhere) is read as uniform: ids stay in [0, V).
    """
    return sample_filtered(logits, uniform, top_p, top_k, distribution=False)[0]


def sample_filtered(
    logits: Tensor, uniform: Tensor | None, top_p: float = 1.0, top_k: int | None = None, distribution: bool = True
) -> tuple[Tensor, Tensor | None]:
    """(token ids [...], filtered distribution [..., V]) of `sample_nucleus`.

    The distribution is softmax(logits) restricted to the top-p / top-k set and renormalised (float32),
    the one Dream's `sample_tokens` computes its confidences from. `uniform=None` takes its argmax
    (greedy decoding; ties to the lowest id) instead of drawing. `distribution=False` skips
    building the distribution (returned as None).
    """
    lead, vocab = logits.shape[:-1], logits.shape[-1]
    if uniform is not None and uniform.shape != lead:
        raise ValueError(f"uniform must have shape {tuple(lead)}, got {tuple(uniform.shape)}")
    probs, mass = _filtered_mass(logits, top_p, top_k)
    filtered = None
    if distribution or uniform is None:
        kept = torch.where(mass > 0, probs, torch.zeros_like(probs))
        filtered = (kept / kept.sum(dim=-1, keepdim=True)).reshape(*lead, vocab)
    if uniform is None:
        return kept.argmax(dim=-1).reshape(lead), filtered
    cdf = torch.cumsum(mass, dim=-1)
    target = (uniform.detach().reshape(-1, 1).double() * cdf[:, -1:]).long()  # in [0, total) for u in (0, 1)
    return torch.searchsorted(cdf, target, right=True).squeeze(-1).reshape(lead), filtered


def draw_logits(logits: Tensor, temperature: float, excluded: int) -> Tensor:
    """What the sampler's commit step draws from: logits / τ (τ = 0, greedy: / 1), in their dtype, with the
    token `excluded` (<mask>: committing it would re-mask) at -inf. A new tensor; `logits` [..., V] is not changed."""
    scaled = logits / (temperature or 1.0)
    scaled[..., excluded] = float("-inf")
    return scaled


def draw_log_prob(
    logits: Tensor, tokens: Tensor, greedy: bool, top_p: float = 1.0, top_k: int | None = None
) -> Tensor:
    """log P(`sample_filtered(logits, u, top_p, top_k)` returns `tokens`) [...], float32, for logits [..., V].

    Drawn (u uniform in (0, 1), `greedy=False`): the log of the filtered, renormalised distribution
    at the token, computed in log space (log-softmax minus the log-sum-exp over the kept tokens), and
    -inf for a token outside the top-p / top-k set, which is never drawn. The draw itself runs on
    integer masses truncated at 2^-`MASS_BITS`, which move each probability by less than that.
    Greedy (u = None): 0 at the argmax of the filtered distribution, -inf elsewhere.
    """
    lead, vocab = logits.shape[:-1], logits.shape[-1]
    token = tokens.reshape(-1, 1)
    probs, mass = _filtered_mass(logits, top_p, top_k)
    kept = mass > 0
    if greedy:
        chosen = torch.where(kept, probs, torch.zeros_like(probs)).argmax(dim=-1, keepdim=True)
        log_prob = torch.where(chosen == token, 0.0, float("-inf"))
    else:
        log_probs = torch.log_softmax(logits.detach().float().reshape(-1, vocab), dim=-1)
        total = torch.logsumexp(log_probs.masked_fill(~kept, float("-inf")), dim=-1, keepdim=True)
        log_prob = torch.where(kept.gather(-1, token), log_probs.gather(-1, token) - total, float("-inf"))
    return log_prob.reshape(lead)


def _filtered_mass(logits: Tensor, top_p: float, top_k: int | None) -> tuple[Tensor, Tensor]:
    """(probabilities, integer masses) [R, V] of logits [..., V] flattened to rows: the masses are
    zero outside the top-p nucleus and the top-k set, so a token is kept iff its mass is > 0."""
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    vocab = logits.shape[-1]
    probs = torch.softmax(logits.detach().float().reshape(-1, vocab), dim=-1)
    probs.nan_to_num_(nan=1.0 / vocab)  # a NaN softmax is NaN in the whole row: read it as uniform
    mass = (probs * float(1 << MASS_BITS)).long()  # exact: a power-of-two scale, then truncation
    if top_p < 1.0:
        mass = mass * nucleus_mask(probs, mass, top_p)
    if top_k is not None and top_k < vocab:
        mass = mass * (probs >= probs.topk(top_k, dim=-1).values[:, -1:])
    return probs, mass


def nucleus_mask(probs: Tensor, mass: Tensor, top_p: float) -> Tensor:
    """Boolean [R, V]: the top-p nucleus of each row of probs [R, V], whose integer masses are `mass`.

    Tokens are ranked by probability, ties by vocabulary index; a token is kept iff the tokens
    ranked before it hold < top_p. Only the boundary probability p* (the smallest kept one)
    needs the ranking, so the probabilities are sorted without their indices: tokens above p*
    are kept, and of the tokens equal to p* the first ones in vocabulary order, as many as fit
    while the mass before them stays < top_p.
    """
    # At most the total; at least one unit, so the top token is always kept however tiny top_p is.
    need = torch.clamp(mass.sum(dim=-1, keepdim=True), max=max(1, int(top_p * (1 << MASS_BITS))))
    ordered = _descending(probs)
    ordered_mass = (ordered * float(1 << MASS_BITS)).long()
    before = ordered_mass.cumsum(dim=-1) - ordered_mass  # mass ranked before each sorted token
    boundary = ((before < need).sum(dim=-1, keepdim=True) - 1)  # rank of the last kept token
    smallest_kept, boundary_mass = ordered.gather(-1, boundary), ordered_mass.gather(-1, boundary)
    first_tie = (ordered > smallest_kept).sum(dim=-1, keepdim=True)  # rank where the ties at p* start
    room = need - before.gather(-1, first_tie)  # > 0: mass the ties at p* may still fill
    ties_kept = torch.div(room + boundary_mass - 1, boundary_mass, rounding_mode="floor")  # ceil(room / m*)
    tie = probs == smallest_kept
    return (probs > smallest_kept) | (tie & (torch.cumsum(tie, dim=-1) <= ties_kept))


def _descending(values: Tensor) -> Tensor:
    """values [R, V] sorted along the last dim, largest first, without the index payload.

    On CPU numpy's vectorised sort is used: torch's CPU sort always carries indices and runs
    ~15x slower on rows of a few hundred to a few hundred thousand integers. A CPU tensor and
    its numpy view share memory, so nothing is copied or synchronised.
    """
    if values.device.type == "cpu":
        return torch.from_numpy(np.ascontiguousarray(np.sort(values.numpy(), axis=-1)[:, ::-1]))
    return torch.sort(values, dim=-1, descending=True).values
