"""The guidance hook: what happens to the masked logits at each denoising step.

The sampler calls `begin_batch` once per batch of prompts and `steer` once per step; it has
no method-specific branches, so a new method is a new subclass plus a YAML file.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from entrgi.noise import TrajectoryNoise
from entrgi.schemas import schema


@dataclass
class GuidanceContext:
    """What a guidance method may read at one denoising step."""

    step: int
    response: torch.Tensor  # [N, L] current response tokens, masks included
    masked: torch.Tensor  # [N, L] bool, still-masked positions
    noise: TrajectoryNoise
    # (masked, to be committed) counts per trajectory at this step, known in advance for
    # the deterministic schedules; None for `origin`.
    planned: tuple[int, int] | None = None
    # [N, F] columns worth sampling and optimising: the masked ones when `planned` is known
    # (their count is then fixed in advance), else all columns. Filled in from `masked`.
    positions: torch.Tensor | None = None

    def __post_init__(self):
        if self.positions is None:
            self.positions = masked_positions(self.masked, self.planned)


def masked_positions(masked: torch.Tensor, planned: tuple[int, int] | None) -> torch.Tensor:
    """Column indices [N, F] of the masked positions when their count F is known, else of all."""
    if planned is None:
        return torch.arange(masked.shape[1], device=masked.device).expand_as(masked)
    return torch.sort(masked.to(torch.uint8), dim=-1, descending=True, stable=True).indices[:, : planned[0]]


@dataclass
class Steered:
    """Guided logits and per-step statistics (0-d tensors, kept on the device)."""

    logits: torch.Tensor
    stats: dict[str, torch.Tensor]


@schema("guidance")
@dataclass
class GuidanceConfig:
    """The `guidance` config group; methods add their own fields."""

    _target_: str = "entrgi.guidance.NoGuidance"


class Guidance:
    """Base class: leaves the logits as they are."""

    def __init__(self, config: GuidanceConfig | None = None, *, model=None, reward=None):
        """Every method is built from its config and the models it may use; plain sampling uses neither."""
        self.config = config if config is not None else GuidanceConfig()

    def begin_batch(self, prompts: list[str], num_samples: int, response_length: int) -> None:
        """Prepare per-prompt state (e.g. reward template parts) for a new batch."""

    def steer(self, logits: torch.Tensor, context: GuidanceContext) -> Steered:
        return Steered(logits=logits, stats={})

    def describe(self) -> str:
        """The method and the models it runs, in one line, for error messages (e.g. on NaN guided logits)."""
        return type(self).__name__

    def summary(self) -> dict[str, Any]:
        """Numbers about the method itself for summary.json (e.g. vocabulary coverage)."""
        return {}

    def artifacts(self) -> dict[str, Any]:
        """JSON-serialisable results accumulated over the job, one file per key."""
        return {}


class NoGuidance(Guidance):
    """Plain sampling: with K samples and the best kept by reward, this is Best-of-N."""
