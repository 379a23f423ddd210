"""Resampling a prompt's K particles: effective sample size, multinomial and systematic ancestors.

Pure tensor functions of unnormalised log-weights laid out [B, K] (row b: the K particles of
prompt b) and of uniforms passed in, so each result is an exact function of its inputs and
nothing is read back to the host. An ancestor index is within its prompt's group: slot k of
prompt b becomes a copy of particle `ancestors[b, k]` of the same prompt. Cumulative weights
are summed in float64, so equal weights give exactly the identity under systematic resampling.

Systematic resampling: Kitagawa (1996), *Monte Carlo filter and smoother for non-Gaussian
nonlinear state space models*, JCGS 5(1); compared with multinomial resampling in Douc, Cappé &
Moulines (2005), *Comparison of resampling schemes for particle filtering*.
"""

from __future__ import annotations

import torch


def normalized_weights(log_weights: torch.Tensor) -> torch.Tensor:
    """Weights [B, K] (float64) summing to 1 in each row, from log-weights [B, K] (any finite offset)."""
    return torch.softmax(log_weights.double(), dim=-1)


def effective_sample_size(log_weights: torch.Tensor) -> torch.Tensor:
    """ESS [B] = (Σ_k w_k)² / Σ_k w_k² of each row of log-weights [B, K]: K for equal weights, 1 for one.

    Float32, on the log-weights' device.
    """
    weights = normalized_weights(log_weights)
    return (1.0 / weights.square().sum(-1)).float()


def _ancestors(log_weights: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """For points [B, K] in [0, 1): the index of the particle whose cumulative-weight interval holds
    each point, i.e. the number of cumulative weights C_i <= point (so a zero-weight particle is never chosen)."""
    cumulative = normalized_weights(log_weights).cumsum(-1)
    index = torch.searchsorted(cumulative, points.double().contiguous(), right=True)
    return index.clamp(max=log_weights.shape[-1] - 1)  # rounding can leave C_K a hair below 1


def multinomial_ancestors(log_weights: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """Ancestors [B, K] (int64) drawn independently, slot k from its own uniform u_k in (0, 1) [B, K]:
    particle i with probability w_i."""
    return _ancestors(log_weights, uniforms)


def systematic_ancestors(log_weights: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
    """Ancestors [B, K] (int64, non-decreasing in k) from one uniform u in (0, 1) per row [B]: slot k takes
    the particle whose interval holds (k + u) / K, so particle i gets floor(K·w_i) or one more copies."""
    num_samples = log_weights.shape[-1]
    slots = torch.arange(num_samples, device=log_weights.device, dtype=torch.float64)
    return _ancestors(log_weights, (slots[None, :] + uniform.double()[:, None]) / num_samples)


def ancestor_rows(ancestors: torch.Tensor, num_samples: int) -> torch.Tensor:
    """Rows [B*K] of a prompt-major batch (row b*K + k) to gather, from within-group ancestors [B, K] or [B*K]."""
    grouped = ancestors.reshape(-1, num_samples)
    first = torch.arange(grouped.shape[0], device=ancestors.device)[:, None] * num_samples
    return (grouped + first).reshape(-1)
