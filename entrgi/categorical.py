"""Drawing a token from logits with nucleus (top-p) filtering and one given uniform per row.

Shared by the sampler's commit step and by guidance's hard-token draws, which together run it
M + 1 times per denoising step over every masked position: it must cost a few passes over the
vocabulary and one values-only sort, not an index sort, and on a CPU run in row blocks that stay
in the cache (`row_blocks`). `draw_log_prob` gives the probability of a draw under the same filtering
(the importance weights of `guidance=entrgi-smc`). Randomness comes in as explicit uniforms (from the counter-based
streams of `entrgi.noise`), so a row's sample does not depend on the batch it sits in.

Probability mass is counted in integers (`MASS_BITS` fractional bits, held in float64): integer sums are exact
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

MASS_BITS = 40  # 2^-40 resolution: a row's total mass, <= 2^40, sums exactly in float64 (< 2^53)
BLOCK_ELEMENTS = 1 << 20  # entries per block of rows processed at once on a CPU (`row_blocks`)
DEVICE_BLOCK_ELEMENTS = 1 << 24  # and on an accelerator: 128 MiB per float64 temporary


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
    flat = logits.detach().reshape(-1, vocab)
    ids = torch.empty(flat.shape[0], dtype=torch.long, device=flat.device)
    filtered = None
    if distribution or uniform is None:
        filtered = torch.empty(flat.shape, dtype=torch.float32, device=flat.device)
    u = None if uniform is None else uniform.detach().reshape(-1, 1)
    for rows in row_blocks(*flat.shape, flat.device):
        probs, mass = _filtered_mass(flat[rows], top_p, top_k)
        if filtered is not None:
            kept = probs.masked_fill_(mass == 0, 0.0)
            torch.div(kept, kept.sum(dim=-1, keepdim=True), out=filtered[rows])
        if uniform is None:
            ids[rows] = kept.argmax(dim=-1)
            continue
        cdf = mass.cumsum_(dim=-1)  # exact: integers below 2^53
        target = (u[rows].double() * cdf[:, -1:]).floor_()  # in [0, total)
        ids[rows] = torch.searchsorted(cdf, target, right=True).squeeze(-1)
    return ids.reshape(lead), None if filtered is None else filtered.reshape(*lead, vocab)


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
    token, flat = tokens.reshape(-1, 1), logits.detach().reshape(-1, vocab)
    probs, mass = _filtered_mass(flat, top_p, top_k)
    kept = mass > 0
    if greedy:
        chosen = torch.where(kept, probs, torch.zeros_like(probs)).argmax(dim=-1, keepdim=True)
        log_prob = torch.where(chosen == token, 0.0, float("-inf"))
    else:
        log_probs = torch.log_softmax(flat.float(), dim=-1)
        total = torch.logsumexp(log_probs.masked_fill(~kept, float("-inf")), dim=-1, keepdim=True)
        log_prob = torch.where(kept.gather(-1, token), log_probs.gather(-1, token) - total, float("-inf"))
    return log_prob.reshape(lead)


def row_blocks(rows: int, vocab: int, device: torch.device) -> list[slice]:
    """Slices of `rows` rows of `vocab` entries to process one after the other, about `BLOCK_ELEMENTS`
    entries each on a CPU: the temporaries of a row-wise computation then stay in the cache and in the
    allocator's reused pages, instead of fresh pages of vocabulary-sized tensors at every call. On an
    accelerator (`DEVICE_BLOCK_ELEMENTS`) the blocks only bound the float64 temporaries, in few launches."""
    size = BLOCK_ELEMENTS if device.type == "cpu" else DEVICE_BLOCK_ELEMENTS
    step = max(1, size // vocab)
    return [slice(start, start + step) for start in range(0, rows, step)]


def _filtered_mass(logits: Tensor, top_p: float, top_k: int | None) -> tuple[Tensor, Tensor]:
    """(probabilities float32, integer masses float64) [R, V] of logits [R, V]: the masses are zero outside
    the top-p nucleus and the top-k set, so a token is kept iff its mass is > 0. The masses are integers
    held in float64: every sum of them is below 2^53, hence exact in any order."""
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    vocab = logits.shape[-1]
    probs = torch.softmax(logits.float(), dim=-1)
    probs.nan_to_num_(nan=1.0 / vocab)  # a NaN softmax is NaN in the whole row: read it as uniform
    mass = probs.double().mul_(float(1 << MASS_BITS)).floor_()  # exact: a power-of-two scale, then truncation
    if top_p < 1.0:
        mass.masked_fill_(~nucleus_mask(probs, mass, top_p), 0.0)
    if top_k is not None and top_k < vocab:
        mass.masked_fill_(probs < probs.topk(top_k, dim=-1).values[:, -1:], 0.0)
    return probs, mass


def nucleus_mask(probs: Tensor, mass: Tensor, top_p: float) -> Tensor:
    """Boolean [R, V]: the top-p nucleus of each row of probs [R, V], whose integer masses are `mass`.

    Tokens are ranked by probability, ties by vocabulary index; a token is kept iff the tokens
    ranked before it hold < top_p. Only the boundary probability p* (the smallest kept one) needs
    the ranking, so the probabilities are sorted without their indices (ascending): the masses'
    running sum over them, searched by bisection, gives p* and the mass above it. Tokens above p*
    are kept, and of the tokens equal to p* the first ones in vocabulary order, as many as fit while
    the mass before them stays < top_p.
    """
    total = mass.sum(dim=-1, keepdim=True, dtype=torch.float64)
    # At most the total; at least one unit, so the top token is always kept however tiny top_p is.
    need = torch.clamp(total, max=max(1, int(top_p * (1 << MASS_BITS))))
    ascending = _ascending(probs)
    running = ascending.double().mul_(float(1 << MASS_BITS)).floor_().cumsum_(dim=-1)  # exact, below 2^53
    # The smallest kept probability is the first one with less than `need` above it, i.e. after it.
    smallest_kept = ascending.gather(-1, torch.searchsorted(running, total - need, right=True))
    above = total - running.gather(-1, torch.searchsorted(ascending, smallest_kept, right=True) - 1)
    boundary_mass = torch.floor(smallest_kept.double() * float(1 << MASS_BITS)).long()
    room = (need - above).long()  # > 0: mass the ties at p* may still fill
    ties_kept = torch.div(room + boundary_mass - 1, boundary_mass, rounding_mode="floor")  # ceil(room / m*)
    tie = probs == smallest_kept
    return (probs > smallest_kept) | (tie & (torch.cumsum(tie, dim=-1) <= ties_kept))


def _ascending(values: Tensor) -> Tensor:
    """values [R, V] sorted along the last dim, without the index payload.

    On CPU numpy's vectorised sort is used: torch's CPU sort always carries indices and runs
    ~15x slower on rows of a few hundred to a few hundred thousand floats. A CPU tensor and
    its numpy view share memory, so nothing is synchronised. (An exact radix select of p* on the
    probabilities' bits, three histogram passes and no sort, measured no faster on CPU at V = 152,064
    and 3.6x slower at V = 424; it is in this file's history.)
    """
    if values.device.type == "cpu":
        return torch.from_numpy(np.sort(values.numpy(), axis=-1))
    return torch.sort(values, dim=-1).values
