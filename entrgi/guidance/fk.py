"""Feynman–Kac steering: K particles per prompt, resampled by a potential of their reward.

Singhal et al. 2025, *A General Framework for Inference-time Scaling and Steering of Diffusion
Models*, arXiv 2501.06848. No gradient flows anywhere: each particle's current guess of its clean
text is scored by the reward model, and the particles of a prompt are resampled so that compute
goes to the promising ones. Restated here as implemented:

**Estimate and reward.** After step t's tokens are committed, particle i's clean-text estimate
x̂ᵢ is its response with every still-masked position filled by the argmax of step t's logits
(`estimate=argmax`, <mask> excluded) or by the token the sampler drew there at step t
(`estimate=sample`: a draw under the sampler's τ, top-p and top-k, the one it would have
committed). rᵢ(t) = reward(prompt, x̂ᵢ), without gradient. A reward model scores it on the device
through its token path (`BridgedReward.score_tokens`: under `fidelity=consistent`, exactly the text
path's score of the decoded estimate). Any other reward (`reward=regex`, `callable`, `toy-oracle`,
`sum`, …: `entrgi.rewards.text`) is a function of text: the estimates are decoded on the host as the
final responses are (`model.decode`) and scored by its `score_texts` (`DecodedText`), exactly its
final score of that text. That path reads the B·K estimates back from the device at every scored
step: the one exception to the sampler's rule of no host reads in the loop, inherent to a Python
scorer and taken only for a reward that is not differentiable.

**Potentials** (λ = `strength` ≥ 0). Each particle carries one number hᵢ along its ancestry
(a copy inherits its ancestor's), updated at every scoring step t:

* `diff`: log Gᵢ = λ (rᵢ(t) − hᵢ), hᵢ = the reward the particle had when its prompt was last
  resampled (0 before: a constant, which cancels). Between two resamplings this is the product
  of the paper's per-step potentials exp(λ (r(t) − r(t−1))), which telescopes.
* `max`: hᵢ ← max(hᵢ, rᵢ(t)), starting at −∞; log Gᵢ = λ hᵢ (the best reward on its path).
* `sum`: hᵢ ← hᵢ + rᵢ(t), starting at 0; log Gᵢ = λ hᵢ (the sum of the rewards on its path).

The weights of prompt b are wᵢ = Gᵢ / Σⱼ Gⱼ over its K particles; its effective sample size is
ESS_b = (Σᵢ Gᵢ)² / Σᵢ Gᵢ², between 1 (one particle holds all weight) and K (equal weights).

**Resampling.** After step t — never after the last step: the K finished responses are the
run's K samples, ranked by its final reward (Top@1) as every method's are — prompt b is
resampled when t + 1 is a multiple of `resample_every` or when ESS_b < `ess_threshold`·K (a
mask computed on the device, no branch on its values). Its K slots then copy particles drawn
with probabilities w: `systematic` (one uniform per prompt, `entrgi.resampling`) or
`multinomial` (one per slot), from the stream `Stream.RESAMPLE` keyed by (seed, prompt id,
step), so a prompt's result does not depend on its batch. The method scores only at steps where
it may resample: every step when `ess_threshold` > 0, else every `resample_every`-th. With
`resample_every=null` and `ess_threshold=0` it never scores nor resamples: Best-of-N, exactly
`guidance=none`'s samples.

**A proposal** (`entrgi.guidance.smc`). When the particles are drawn from another distribution than
the model's, `resample` is given each step's log importance ratio log p/q [N]; a particle's
log-weight then adds the ratios summed over the steps since its prompt was last resampled (a
resampled prompt restarts them at 0, its copies weighing equally). A prompt all of whose
particles have weight 0 (log-ratio −∞: each committed a token the model's filtered distribution
excludes) carries no information in its ratios: they are dropped (restarted at 0), and its
potential alone weighs it.

Two departures from the paper's reference code (which resamples at the last step too, dividing
the `max`/`sum` weights there by the product of earlier potentials so that the final particles
target p(x)·exp(λ r(x))): no final resampling, hence no correction; and under ESS-triggered
resampling the `diff` weight accumulates over the steps since the last resampling (standard
adaptive SMC) instead of restarting at each scored step.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import torch

from entrgi.compute import ComputeLedger
from entrgi.guidance.base import Committed, Guidance, GuidanceConfig, Resampling
from entrgi.models import DiffusionLM
from entrgi.noise import Stream
from entrgi.resampling import effective_sample_size, multinomial_ancestors, systematic_ancestors
from entrgi.rewards.text import DecodedText, TextReward
from entrgi.rewards.vocab_bridge import BridgedReward
from entrgi.schemas import schema
from entrgi.validation import ranged


class Estimate(enum.StrEnum):
    """What fills a still-masked position of the clean-text estimate."""

    argmax = "argmax"
    sample = "sample"


class Potential(enum.StrEnum):
    """How a particle's rewards along its path make its potential (module docstring)."""

    diff = "diff"
    max = "max"
    sum = "sum"


class Resampler(enum.StrEnum):
    """How ancestors are drawn from the weights."""

    multinomial = "multinomial"
    systematic = "systematic"


@schema("guidance", "fk")
@dataclass
class FKConfig(GuidanceConfig):
    """The `guidance` group option fk (fields: module docstring)."""

    _target_: str = "entrgi.guidance.FKGuidance"
    potential: Potential = Potential.diff
    strength: float = ranged(10.0, low=0.0)  # λ (`lambda` is a Python keyword)
    estimate: Estimate = Estimate.argmax
    resample_every: int | None = ranged(None, low=1, optional=True)  # None: never on a schedule
    ess_threshold: float = ranged(0.5, low=0.0, high=1.0)  # resample a prompt when ESS < this · K
    resampling: Resampler = Resampler.systematic


_START = {Potential.diff: 0.0, Potential.max: float("-inf"), Potential.sum: 0.0}


class FKGuidance(Guidance):
    """Feynman–Kac steering: leaves the logits as they are and resamples the particles.

    Built from an `FKConfig`, the dLLM and the reward it reads: a reward model (on the dLLM's device,
    else ConfigError) scored on the device, or any other `TextReward` scored on the host.
    """

    def __init__(self, config: FKConfig, *, model: DiffusionLM, reward: TextReward,
                 bridged: BridgedReward | None = None):
        """`bridged`: the RM as read in dLLM ids, when another method already built it (its table is [V, d])."""
        super().__init__(config)
        # Exactly one of the two: the RM's device path, or the host text path of a text reward.
        self.bridged = (bridged or BridgedReward(model, reward)) if reward.differentiable else None
        self.decoded = None if reward.differentiable else DecodedText(model, reward)
        self.layout = None
        self.carried: torch.Tensor | None = None  # [N] hᵢ, per particle
        self.log_ratio: torch.Tensor | None = None  # [N] Σ log p/q since the prompt's last resampling, with a proposal
        self.ledger = ComputeLedger()

    def begin_batch(self, prompts: list[str], num_samples: int, response_length: int) -> None:
        self.carried = self.log_ratio = None
        self.ledger = ComputeLedger()
        if self.bridged is not None:
            self.layout = self.bridged.reward.layout(prompts, num_samples, response_length)
            self.ledger.rm_forward(*self.layout.precomputed)
        else:
            self.decoded.begin_batch(prompts, num_samples)

    def compute(self) -> ComputeLedger:
        """One RM forward over the B·K estimates per scored step (every step but the last with
        `ess_threshold` > 0, else every `resample_every`-th); and the prefix cache of `begin_batch`."""
        return self.ledger

    def score(self, estimates: torch.Tensor) -> torch.Tensor:
        """Float32 rewards [N] of clean-text estimates [N, L] (dLLM ids), on their device (module docstring)."""
        if self.bridged is not None:
            self.ledger.rm_forward(estimates.shape[0], self.layout.pass_width(estimates.shape[1]))
            return self.bridged.score_tokens(self.layout, estimates)
        return self.decoded.score_tokens(estimates, self.ledger)

    def _plan(self, step: int) -> tuple[bool, bool]:
        """(score at this step, resample every prompt on the schedule), decided on the host from the config."""
        every = self.config.resample_every
        scheduled = every is not None and (step + 1) % every == 0
        return scheduled or self.config.ess_threshold > 0, scheduled

    def estimate(self, committed: Committed) -> torch.Tensor:
        """Clean-text estimates [N, L]: committed tokens, and at masked positions the argmax or this step's draw."""
        if self.config.estimate == Estimate.sample:
            fill = committed.drawn
        else:  # the best token other than <mask>: of the top two, without copying the [N, L, V] logits
            first, second = committed.logits.topk(2, dim=-1).indices.unbind(-1)
            fill = torch.where(first == committed.mask_token_id, second, first)
        return torch.where(committed.masked, fill, committed.response)

    def resample(self, committed: Committed, log_ratio: torch.Tensor | None = None) -> Resampling | None:
        """Score, weigh and maybe resample after a step (module docstring). `log_ratio` [N] (float32): this
        step's log p/q of a proposal, accumulated at every step, scored or not; None without a proposal."""
        if log_ratio is not None:
            self.log_ratio = log_ratio if self.log_ratio is None else self.log_ratio + log_ratio
        score, scheduled = self._plan(committed.step)
        if not score:
            return None
        k = committed.num_samples
        rewards = self.score(self.estimate(committed))  # [N]
        if self.carried is None:
            self.carried = torch.full_like(rewards, _START[self.config.potential])
        if self.config.potential == Potential.diff:
            potential = rewards - self.carried
        else:
            combine = torch.maximum if self.config.potential == Potential.max else torch.add
            self.carried = combine(self.carried, rewards)
            potential = self.carried
        log_weights = (self.config.strength * potential).view(-1, k)  # [B, K]
        stats = {}
        if self.log_ratio is not None:
            log_weights, stats = self._importance(log_weights, k)
        ess = effective_sample_size(log_weights)
        resampled = (ess < self.config.ess_threshold * k) | scheduled  # [B]
        prompts = committed.noise.per_prompt(k)
        if self.config.resampling == Resampler.systematic:
            drawn = systematic_ancestors(log_weights, prompts.uniform(Stream.RESAMPLE, committed.step, 1)[:, 0])
        else:
            drawn = multinomial_ancestors(log_weights, prompts.uniform(Stream.RESAMPLE, committed.step, k))
        identity = torch.arange(k, device=drawn.device).expand_as(drawn)
        ancestors = torch.where(resampled[:, None], drawn, identity)
        if self.config.potential == Potential.diff:  # resampled prompts restart from their rewards
            self.carried = torch.where(resampled.repeat_interleave(k), rewards, self.carried)
        if self.log_ratio is not None:  # and with equal weights
            self.log_ratio = torch.where(resampled.repeat_interleave(k), 0.0, self.log_ratio)
        stats |= {
            "ess_mean": ess.mean(),
            "resampled_fraction": resampled.float().mean(),
            "estimate_reward_mean": rewards.mean(),
        }
        return Resampling(ancestors=ancestors, stats=stats)

    def _importance(self, log_weights: torch.Tensor, k: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Log-weights [B, K] with the accumulated log p/q added, the ratios of prompts whose particles all
        have weight 0 dropped first; and their statistics: the share of particles at weight 0 and the mean
        accumulated log p/q of the others."""
        ratio = self.log_ratio.view(-1, k)
        zero = ratio == float("-inf")
        live = ~zero
        self.log_ratio = torch.where(zero.all(-1, keepdim=True), 0.0, ratio).view(-1)
        stats = {
            "zero_weight_fraction": zero.float().mean(),
            "log_importance_mean": torch.where(live, ratio, 0.0).sum() / live.sum().clamp(min=1),
        }
        return log_weights + self.log_ratio.view(-1, k), stats

    def reorder(self, rows: torch.Tensor) -> None:
        self.carried = self.carried.index_select(0, rows)
        if self.log_ratio is not None:
            self.log_ratio = self.log_ratio.index_select(0, rows)
