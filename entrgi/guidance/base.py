"""The guidance hook: what happens to the masked logits at each denoising step.

The sampler calls `begin_batch` once per batch of prompts, `steer` once per step, and after
each step's tokens are committed (every step but the last) `resample`: a particle method may
then return, per prompt, which of its K particles each slot becomes a copy of; the sampler
gathers the canvas rows within each prompt's group and calls `reorder` so the method can move
its own per-particle state along. Random streams stay with the slot, not the particle, so
copies diverge again. After the batch the sampler reads `compute`: the RM work the method did
(`entrgi.compute`), counted by the method itself. The sampler has no method-specific branches, so
a new method is a new subclass plus a YAML file.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from entrgi.compute import ComputeLedger
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
    # (their count is then fixed in advance), else all columns. Filled in from `masked` unless given
    # (the sampler gives every masked column plus committed ones up to `UnmaskSchedule.masked_bounds`).
    positions: torch.Tensor | None = None

    def __post_init__(self):
        if self.positions is None:
            self.positions = masked_positions(self.masked, self.planned)


def masked_positions(masked: torch.Tensor, planned: tuple[int, int] | None) -> torch.Tensor:
    """Column indices [N, F] of the masked positions when their count F is known, else of all."""
    return true_columns(masked, None if planned is None else planned[0])


def true_columns(mask: torch.Tensor, count: int | None) -> torch.Tensor:
    """Column indices [N, count] of the True entries of mask [N, L] (in column order) when every row holds
    `count` of them, else (None) all L columns. A row holding fewer gets False columns after its True ones."""
    if count is None:
        return torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
    return torch.sort(mask.to(torch.uint8), dim=-1, descending=True, stable=True).indices[:, :count]


@dataclass
class Steered:
    """Guided logits and per-step statistics (0-d tensors, kept on the device)."""

    logits: torch.Tensor
    stats: dict[str, torch.Tensor]


@dataclass
class Committed:
    """What a method may read once a step's tokens are committed, to weigh its particles."""

    step: int
    response: torch.Tensor  # [N, L] response tokens after the commit
    mask_token_id: int
    logits: torch.Tensor  # [N, L, V] this step's logits as steered (the distribution the draw came from)
    drawn: torch.Tensor  # [N, L] this step's draw (sampler τ, top-p, top-k) at every position masked before the commit
    noise: TrajectoryNoise
    num_samples: int  # K: rows b*K .. b*K + K - 1 are the particles of prompt b
    unguided: torch.Tensor  # [N, L, V] this step's logits from the dLLM, before the guidance
    commit: torch.Tensor  # [N, L] bool, the positions this step committed
    planned: tuple[int, int] | None  # this step's (masked, committed) counts when known in advance (GuidanceContext)
    temperature: float  # τ, top-p and top-k of the draw: `entrgi.categorical.draw_log_prob` gives its probabilities
    top_p: float
    top_k: int | None

    @property
    def masked(self) -> torch.Tensor:
        """[N, L] bool, the positions still masked after the commit."""
        return self.response == self.mask_token_id

    def committed_columns(self) -> torch.Tensor:
        """Column indices [N, C] of the positions this step committed when their count C is planned, else
        all L columns (then `commit` says which)."""
        return true_columns(self.commit, None if self.planned is None else self.planned[1])


@dataclass
class Resampling:
    """Which particle each slot copies: `ancestors` [B, K] or [B*K] int64 within-group indices (slot k of
    prompt b becomes particle ancestors[b, k] of prompt b; the identity leaves it as it is), on the
    device, and statistics of the decision (0-d tensors, kept on the device)."""

    ancestors: torch.Tensor
    stats: dict[str, torch.Tensor]


@schema("guidance")
@dataclass
class GuidanceConfig:
    """The `guidance` config group; methods add their own fields."""

    _target_: str = "entrgi.guidance.NoGuidance"


class Guidance:
    """Base class: leaves the logits as they are."""

    # Whether the method differentiates the reward (it then needs a reward model, `TextReward.differentiable`):
    # read on the class before any model loads, to refuse a text reward (`entrgi.preflight.check_reward`).
    needs_gradient: ClassVar[bool] = False

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

    def resample(self, committed: Committed) -> Resampling | None:
        """Ancestors for this step's particles, or None (the default: no resampling, no cost)."""
        return None

    def reorder(self, rows: torch.Tensor) -> None:
        """Move per-particle state along a resampling: new row i is old row `rows[i]` ([N] int64)."""

    def compute(self) -> ComputeLedger:
        """The reward-model passes and tokens of the current batch so far (`begin_batch` starts afresh),
        as the method counted them from its tensors' shapes; none for plain sampling."""
        return ComputeLedger()

    def summary(self) -> dict[str, Any]:
        """Numbers about the method itself for summary.json (e.g. vocabulary coverage)."""
        return {}

    def artifacts(self) -> dict[str, Any]:
        """JSON-serialisable results accumulated over the job, one file per key."""
        return {}


class NoGuidance(Guidance):
    """Plain sampling: with K samples and the best kept by reward, this is Best-of-N."""
