"""Entropy-gated guidance (`guidance.entropy_gate`): guide a trajectory only while its masked positions are uncertain.

The paper's Figure 2: the dLLM's entropy, and EntRGi's advantage over Best-of-N, sit in the early
steps; late steps commit near-certain tokens that a few gradient steps do not change. The gate
keeps, per trajectory, whether it is still guided: open at the start of a batch, it closes for
good at the first guided step where the mean entropy (nats, of the dLLM's own untempered
logits) over the trajectory's masked positions is below the threshold. A closed trajectory gets
the dLLM's logits. Per trajectory, so a prompt's samples do not depend on the batch it is in.

Why it closes for good: skipping the RM work is a host decision, and the loop must not wait on
the device. Because a closed gate never reopens, "every trajectory was closed after the last
guided step" is known one step ahead: it is posted at step t (`entrgi.host_flag`) and read at
the next guided step, when the device finished computing it long ago (step t's RM work was queued
behind it). That read, one per guided step while the gate is open and none after it closes, is
the option's one host read; the default (no gate) reads nothing. Skipping on it is exact: the
results equal guiding every step and discarding the closed trajectories' guided logits. The cost
of the lag is one guided step whose work is all discarded, when the last trajectory closes.
"""

from __future__ import annotations

import torch

from entrgi.guidance.mix import entropy
from entrgi.host_flag import HostFlag


class EntropyGate:
    """Which trajectories are still guided under a threshold of `threshold` nats (module docstring)."""

    def __init__(self, threshold: float):
        self.threshold = threshold
        self.open: torch.Tensor | None = None
        self.any_open: HostFlag | None = None
        self.all_closed = False  # on the host, once read

    def begin_batch(self, rows: int, device: torch.device) -> None:
        """Open the gate of all `rows` trajectories."""
        self.open = torch.ones(rows, dtype=torch.bool, device=device)
        self.any_open = HostFlag(device, initial=True)
        self.all_closed = False

    def closed(self) -> bool:
        """True once every trajectory's gate closed at an earlier step: a host read until it is."""
        self.all_closed = self.all_closed or not self.any_open.read()
        return self.all_closed

    def update(self, logits: torch.Tensor, masked: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Close the gates whose trajectory's mean masked entropy is below the threshold; the open ones [N] bool.

        logits [N, L, V] from the dLLM; masked [N, L] bool; positions [N, F]: the columns to measure
        (every masked one among them). A trajectory with no masked position left closes.
        """
        at = positions.unsqueeze(-1).expand(-1, -1, logits.shape[-1])
        weight = masked.gather(1, positions).float()
        mean = (entropy(logits.gather(1, at)) * weight).sum(-1) / weight.sum(-1).clamp(min=1.0)
        self.open = self.open & (mean >= self.threshold) & (weight.sum(-1) > 0)
        self.any_open.post(self.open.any())
        return self.open

    def reorder(self, rows: torch.Tensor) -> None:
        """Move the gates along a resampling: new row i is old row `rows[i]`."""
        self.open = self.open.index_select(0, rows)
