"""How well a proxy ranks like the truth: Spearman's rank correlation (average ranks for ties).

The oracle takes only a few distinct values, so ties are the rule, not the exception.
"""

from __future__ import annotations

import torch


def ranks(values: torch.Tensor) -> torch.Tensor:
    """1-based ranks, tied values sharing the mean of their ranks."""
    order = values.argsort()
    ordinal = torch.empty_like(values, dtype=torch.float64)
    ordinal[order] = torch.arange(1, len(values) + 1, dtype=torch.float64)
    _, groups = values.unique(return_inverse=True)
    sums = torch.zeros(int(groups.max()) + 1, dtype=torch.float64).index_add_(0, groups, ordinal)
    counts = torch.bincount(groups).double()
    return (sums / counts)[groups]


def spearman(x: list[float] | torch.Tensor, y: list[float] | torch.Tensor) -> float:
    """Pearson correlation of the ranks of x and y."""
    rx, ry = ranks(torch.as_tensor(x, dtype=torch.float64)), ranks(torch.as_tensor(y, dtype=torch.float64))
    rx, ry = rx - rx.mean(), ry - ry.mean()
    return float((rx * ry).sum() / (rx.norm() * ry.norm()))
