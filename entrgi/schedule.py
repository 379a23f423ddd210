"""Unmasking schedules: the timestep grid and which masked positions are committed each step.

The grid is t_i = linspace(1, eps, T+1) in float32, as Dream builds it, step i going from
t_i to t_{i+1}; the count floor(n · (1 − s/t)) is taken in double from those float32 values,
as the authors' script does (`int(n * (1 - s.item() / t.item()))`). The rule names
follow Dream's ``diffusion_generate``. A rule is only a confidence function;
how many positions are committed, how ties and EOS are treated and how ``alg_temp`` draws
positions are shared by all rules, so a new rule is one small subclass plus a YAML file.

`confidence_threshold` (off by default) makes the counts adapt, after Fast-dLLM's parallel
decoding (Wu et al. 2025, arXiv 2505.22618): a step also commits every candidate whose confidence
exceeds the threshold, and at least one, so a run may finish before `steps`, its maximum.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

import torch

from entrgi.noise import Stream, TrajectoryNoise
from entrgi.schemas import schema
from entrgi.validation import ConfigError, ranged

# Rank key of a masked position whose sampled token is EOS: below every real confidence,
# above the committed positions (which get -inf and are never chosen).
_EOS_CONFIDENCE = torch.finfo(torch.float32).min / 4


class OrderFrom(StrEnum):
    """`schedule.order_from`: the distribution positions are ranked by (`ScheduleConfig`)."""

    drawn = "drawn"
    guided = "guided"
    unguided = "unguided"


class OrderTemperature(StrEnum):
    """`schedule.order_temperature`: the temperature of that distribution (`ScheduleConfig`)."""

    sampling = "sampling"
    untempered = "untempered"


@schema("schedule")
@dataclass
class ScheduleConfig:
    """Fields shared by every unmasking rule (the `schedule` config group)."""

    _target_: str = "entrgi.schedule.EntropySchedule"
    steps: int = ranged(128, low=1)
    eps: float = ranged(1e-3, low=0.0, high=1.0, low_open=True, high_open=True)
    alg_temp: float = ranged(0.0, low=0.0)
    deprioritize_eos: bool = True
    # Which distribution ranks the positions (tokens are always drawn from the guided logits):
    # "drawn" = the guided, tempered, top-p/top-k filtered and renormalised distribution the token
    # was drawn from (Dream's `diffusion_generate`); "guided" = softmax of the guided logits,
    # unfiltered; "unguided" = softmax of the dLLM's own logits, unfiltered (the authors' entropy
    # rule, SPEC §2 step 4). Each rule's YAML sets its reference value.
    order_from: OrderFrom = OrderFrom.drawn
    # Temperature of that distribution: the sampling one ("sampling"; 1 when sampling greedily at
    # temperature 0) or none ("untempered": at very low sampling temperatures tempered
    # confidences all tie at 1 and unmasking degenerates into left-to-right order).
    order_temperature: OrderTemperature = OrderTemperature.sampling
    # Confidence-threshold decoding (module docstring): also commit every masked position whose confidence,
    # in the rule's own units, exceeds this (maskgit_plus: the sampled token's probability; topk_margin: top-1
    # minus top-2 probability; entropy: sum p log p = -H, nats, <= 0). None: the counts of the grid only.
    confidence_threshold: float | None = None


@schema("schedule", "low_confidence")
@dataclass
class LowConfidenceConfig(ScheduleConfig):
    """LLaDA's semi-autoregressive blocks."""

    _target_: str = "entrgi.schedule.LowConfidenceSchedule"
    block_length: int | None = ranged(None, low=1, optional=True)


class UnmaskSchedule:
    """Commit a number of masked positions per step, chosen by confidence.

    With `confidence_threshold` a step commits the union of the grid's count of the most confident
    positions (at least one) and every position whose confidence (before `alg_temp`'s noise and the
    EOS ranking) exceeds the threshold; the counts then depend on the data (`planned_counts` is None)
    and the sampler stops once nothing is masked. With `steps` equal to the response length the
    grid's count is 0 or 1 and this is Fast-dLLM's rule: above the threshold, else the most confident.
    """

    # Whether `confidence_threshold` applies: a confidence to compare, and counts free to adapt.
    thresholded: bool = True

    def __init__(self, config: ScheduleConfig):
        if config.confidence_threshold is not None and not self.thresholded:
            raise ConfigError(f"schedule.confidence_threshold={config.confidence_threshold} does not apply to "
                              f"{type(self).__name__}: use schedule=entropy, maskgit_plus or topk_margin")
        self.config = config
        self.steps = steps = config.steps
        # Plain floats (the float32 grid's values), computed once: reading them in the loop costs no device sync.
        self.grid = torch.linspace(1.0, config.eps, steps + 1, dtype=torch.float32).tolist()

    def confidence(self, probs: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Per-position confidence [N, L] from the ordering distribution [N, L, V]; higher first."""
        raise NotImplementedError

    def check_length(self, length: int) -> None:
        """Raise ConfigError when the schedule cannot denoise `length` response tokens."""

    def confidence_temperature(self, temperature: float) -> float:
        """Temperature of the distribution positions are ranked by: the sampling one (Dream), 1 when
        sampling is greedy (temperature 0, as Dream's and LLaDA's `generate`) or `order_temperature`
        is "untempered"."""
        return 1.0 if self.config.order_temperature == "untempered" or temperature == 0 else temperature

    def planned_counts(self, length: int) -> list[tuple[int, int]] | None:
        """(masked, committed) counts per step for a fully masked response of `length`.

        Every trajectory follows the same counts under the rank-based rules, so they are
        known on the host before the loop (computed with the same float32 arithmetic); None with
        `confidence_threshold`, whose counts depend on the confidences.
        """
        return None if self.config.confidence_threshold is not None else self._grid_counts(length)

    def masked_bounds(self, length: int) -> list[int] | None:
        """The most positions any trajectory has masked at each step (None: no bound below `length`).

        The planned masked counts; also a bound under `confidence_threshold`, whose steps commit at
        least the grid's count of what is left: n − floor(n·(1 − s/t)) never decreases with n.
        """
        plan = self._grid_counts(length)
        return None if plan is None else [masked for masked, _ in plan]

    def _grid_counts(self, length: int) -> list[tuple[int, int]] | None:
        """(masked, committed) counts per step of the grid alone, left to right."""
        masked = torch.ones(1, length, dtype=torch.bool)
        plan, done = [], 0
        for step in range(self.steps):
            commit = int(self.commit_count(self.candidates(masked, step), step)[0])
            plan.append((length - done, commit))
            masked[0, done : done + commit] = False  # left to right: stays inside LLaDA's current block
            done += commit
        return plan

    def candidates(self, masked: torch.Tensor, step: int) -> torch.Tensor:
        """Boolean [N, L]: the positions that may be committed at `step`."""
        return masked

    def block_span(self, length: int, step: int) -> tuple[int, int] | None:
        """Response columns [b0, b1) of the block `step` commits in, for a response of `length`; None: no blocks."""
        return None

    def commit_count(self, candidates: torch.Tensor, step: int) -> torch.Tensor:
        """Positions to commit per trajectory [N]: floor(n · (1 − s/t)) in double, all that remain at the end."""
        n = candidates.sum(dim=-1)
        if step == self.steps - 1:
            return n
        t, s = self.grid[step], self.grid[step + 1]
        return torch.floor(n.double() * (1.0 - s / t)).to(n.dtype)

    def commit_mask(
        self,
        masked: torch.Tensor,
        tokens: torch.Tensor,
        order_probs: torch.Tensor,
        step: int,
        noise: TrajectoryNoise,
        eos_token_id: int | torch.Tensor,
        positions: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Boolean [N, L]: the masked positions whose sampled token is committed at `step`.

        `eos_token_id`: the id, or a 1-D tensor of ids (every stop token of the model), whose
        samples rank after every other masked position when `deprioritize_eos` is on; ties
        among them are broken leftmost.

        With `positions` [N, F], `order_probs` [N, F, V] holds the ranking distribution at
        those columns only (every masked one among them); the rest rank last.

        With `confidence_threshold`: the grid's count (at least one) of the top-ranked candidates,
        and every candidate whose confidence exceeds the threshold.
        """
        candidates = self.candidates(masked, step)
        n_commit = self.commit_count(candidates, step)
        if positions is None:
            score = self.confidence(order_probs, tokens).to(torch.float32)
        else:
            at = self.confidence(order_probs, tokens.gather(1, positions)).to(torch.float32)
            score = torch.full(masked.shape, float("-inf"), device=at.device).scatter(1, positions, at)
        threshold = self.config.confidence_threshold
        confident = None if threshold is None else candidates & (score > threshold)
        if confident is not None:
            n_commit = n_commit.clamp(min=1)
        if self.config.alg_temp > 0:  # sampling without replacement from softmax(score / alg_temp)
            score = score / self.config.alg_temp + noise.gumbel(Stream.ORDER, step, score.shape[-1])
        if self.config.deprioritize_eos:
            score = torch.where(torch.isin(tokens, eos_token_id), torch.full_like(score, _EOS_CONFIDENCE), score)
        score = torch.where(candidates, score, torch.full_like(score, float("-inf")))
        order = score.argsort(dim=-1, descending=True, stable=True)
        rank = torch.empty_like(order).scatter_(
            -1, order, torch.arange(order.shape[-1], device=order.device).expand_as(order)
        )
        commit = candidates & (rank < n_commit[:, None])
        return commit if confident is None else commit | confident


class OriginSchedule(UnmaskSchedule):
    """Each masked position is revealed independently with probability 1 - s/t."""

    thresholded = False  # no confidence

    def _grid_counts(self, length):
        return None  # random per trajectory

    def commit_mask(self, masked, tokens, order_probs, step, noise, eos_token_id, positions=None):
        if step == self.steps - 1:
            return masked.clone()
        p_reveal = 1.0 - self.grid[step + 1] / self.grid[step]
        return masked & (noise.uniform(Stream.REVEAL, step, masked.shape[-1]) < p_reveal)


class MaskGitPlusSchedule(UnmaskSchedule):
    """Confidence = probability of the sampled token (LLaDA's `low_confidence` is this on argmax)."""

    def confidence(self, probs, tokens):
        return probs.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


class TopKMarginSchedule(UnmaskSchedule):
    """Confidence = top-1 minus top-2 probability."""

    def confidence(self, probs, tokens):
        top2 = probs.topk(2, dim=-1).values
        return top2[..., 0] - top2[..., 1]


class EntropySchedule(UnmaskSchedule):
    """Confidence = sum p log p (negative entropy): the most certain positions go first."""

    def confidence(self, probs, tokens):
        return torch.xlogy(probs, probs).sum(dim=-1)


class LowConfidenceSchedule(MaskGitPlusSchedule):
    """LLaDA's rule: semi-autoregressive blocks, most probable sampled tokens first.

    The response is cut into blocks of `block_length` (None: one block) denoised left to
    right, `steps / n_blocks` steps each; only the current block's positions may be
    committed, and a block's tokens are spread as evenly as possible over its steps, the
    first steps taking the remainder. Counts are fixed in advance, as in LLaDA.
    """

    thresholded = False  # each block owns a fixed share of the steps: a block finished early would idle

    def check_length(self, length: int) -> None:
        block = self.config.block_length or length
        if length % block:
            raise ConfigError(f"schedule.block_length={block} does not divide sampler.max_new_tokens={length}")
        if self.steps % (length // block):
            raise ConfigError(
                f"schedule.steps={self.steps} is not a multiple of the {length // block} blocks of "
                f"schedule.block_length={block}"
            )

    def _block(self, length: int, step: int) -> tuple[int, int, int, int]:
        """(block start, block size, step within the block, steps per block)."""
        block = self.config.block_length or length
        steps_per_block = self.steps // (length // block)
        return (step // steps_per_block) * block, block, step % steps_per_block, steps_per_block

    def block_span(self, length, step):
        start, size, _, _ = self._block(length, step)
        return start, start + size

    def candidates(self, masked, step):
        start, size, _, _ = self._block(masked.shape[-1], step)
        in_block = torch.zeros_like(masked)
        in_block[:, start : start + size] = True
        return masked & in_block

    def commit_count(self, candidates, step):
        _, size, inner, steps_per_block = self._block(candidates.shape[-1], step)
        base, extra = divmod(size, steps_per_block)
        return torch.full(candidates.shape[:1], base + (inner < extra), dtype=torch.long, device=candidates.device)
