"""Reward-gradient guidance as the proposal of Feynman–Kac SMC: `guidance=entrgi-smc`, `soft-smc`, `aps-smc`.

Two methods composed. The proposal (`proposal`, a `RewardGradientGuidance`: EntRGi, soft or APS
by its weight rule) steers each step's logits; the sampler draws from them. The steering
(`steering`, an `FKGuidance`: potentials, ESS- or schedule-triggered resampling, `entrgi.guidance.fk`)
weighs and resamples the particles. What makes the pair a sampler of the FK target rather
than of the guided process is the importance correction each particle's weight carries for
having drawn its tokens from the guided distribution q instead of the model's p. Restated here
as implemented:

**The weight.** At step t the sampler commits, in particle i, tokens xₗ at the positions C_t(i)
the schedule picks among those it drew at. Both distributions are the ones a draw uses, under the
sampler's τ, top-p and top-k (`entrgi.categorical.draw_log_prob`): p_t = filter(softmax(φ/τ)) on
the dLLM's logits φ, q_t = filter(softmax(φ̃/τ)) on the guided logits φ̃, each restricted to its
own top-p nucleus (and top-k set) and renormalised, <mask> excluded. The incremental weight is

    wᵢ(t) = Gᵢ(t) · Π_{ℓ ∈ C_t(i)} p_t(xₗ) / q_t(xₗ),

Gᵢ(t) the FK potential of `entrgi.guidance.fk`, and in log space
log wᵢ = λ·(potential) + Σ_{s since i's prompt was last resampled} Σ_{ℓ ∈ C_s(i)} (log p_s(xₗ) − log q_s(xₗ)).
This is the standard SMC incremental weight target-over-proposal, γ_t / (γ_{t−1}·q_t) (Naesseth,
Lindsten & Schön 2019, *Elements of Sequential Monte Carlo*, arXiv 1903.04797), with FK
steering's potentials (Singhal et al. 2025, arXiv 2501.06848) making up the target. For
discrete diffusion with a guided process as the proposal and the unguided model in the target,
the same ratio debiases guidance in Lee et al. 2025, *Debiasing Guidance for Discrete Diffusion
with Sequential Monte Carlo*, arXiv 2502.06079. When the proposal is the model's own kernel the
ratio is 1 and the weight is the potential alone (self-rewarding SMC, Luo et al. 2026, arXiv
2602.01849, Prop. 3.1): here `proposal.M=0` gives exactly `guidance=fk` (tested).

**Tokens the model excludes.** A token drawn from q outside p_t's nucleus (guidance can lift a
tail token into q's) has p_t(x) = 0: log-ratio −∞, weight 0, and the particle is never chosen
as an ancestor. If every particle of a prompt is at weight 0 its ratios are dropped and its
potential alone weighs it (`entrgi.guidance.fk`). `zero_weight_fraction` in steps.jsonl counts
the particles at weight 0 at each scored step; `log_importance_mean` is the mean accumulated
log p/q of the others (its expectation under q is −KL(q‖p) ≤ 0 per committed token).

**What is and is not corrected.** Positions drawn but not committed are re-masked, so their
draws do not enter. The schedule's choice of which positions to commit (from the ranking
distribution `schedule.order_from` and the drawn tokens) is taken as given, not reweighted. The
guided logits depend on the proposal's own random draws (APS/EntRGi hard tokens, a stream apart
from the commit draw), so q is a proposal given those draws, which is still a valid proposal.
With `sampler.temperature=0` both draws are argmaxes: the ratio is 1 where the two argmaxes
agree, else 0. Nothing is weighed after the last step: as every method's, the K finished
responses are ranked by their final reward (`entrgi.guidance.fk`).

Cost over the proposal alone: one RM forward per scored step (the potential) and two filtered
log-probabilities at the committed positions per step.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from entrgi.categorical import draw_log_prob, draw_logits
from entrgi.compute import ComputeLedger
from entrgi.guidance.base import Committed, Guidance, GuidanceConfig, GuidanceContext, Resampling, Steered
from entrgi.guidance.fk import FKConfig, FKGuidance
from entrgi.guidance.reward_gradient import RewardGradientConfig, RewardGradientGuidance
from entrgi.models import DiffusionLM
from entrgi.rewards import RewardModel
from entrgi.rewards.vocab_bridge import BridgedReward
from entrgi.schemas import schema


@schema("guidance", "smc")
@dataclass
class SMCConfig(GuidanceConfig):
    """The `guidance` group options entrgi-smc, soft-smc and aps-smc: the proposal's and the steering's
    settings under their own keys (`guidance.proposal.M`, `guidance.steering.strength`, …)."""

    _target_: str = "entrgi.guidance.SMCGuidance"
    proposal: RewardGradientConfig = field(default_factory=RewardGradientConfig)
    steering: FKConfig = field(default_factory=FKConfig)


def importance_log_ratio(committed: Committed) -> torch.Tensor:
    """log Π p/q [N] (float32) over the positions each particle committed at this step (module docstring):
    p and q the draw's distributions on the unguided and the steered logits; 0 where the two agree,
    −inf where a committed token lies outside the model's filtered distribution."""
    columns = committed.committed_columns()  # [N, C]
    rows = columns.unsqueeze(-1).expand(-1, -1, committed.logits.shape[-1])
    tokens = committed.drawn.gather(1, columns)

    def log_prob(logits: torch.Tensor) -> torch.Tensor:
        scaled = draw_logits(logits.gather(1, rows), committed.temperature, committed.mask_token_id)
        return draw_log_prob(scaled, tokens, committed.temperature == 0, committed.top_p, committed.top_k)

    ratio = log_prob(committed.unguided) - log_prob(committed.logits)
    return torch.where(committed.commit.gather(1, columns), ratio, 0.0).sum(-1)


class SMCGuidance(Guidance):
    """A reward-gradient proposal inside Feynman–Kac SMC (module docstring).

    Built from an `SMCConfig` and the dLLM and RM both parts use (one device, else ConfigError); they
    share one vocabulary bridge.
    """

    needs_gradient = True

    def __init__(self, config: SMCConfig, *, model: DiffusionLM, reward: RewardModel):
        super().__init__(config)
        bridged = BridgedReward(model, reward)
        self.proposal = RewardGradientGuidance(config.proposal, model=model, reward=reward, bridged=bridged)
        self.steering = FKGuidance(config.steering, model=model, reward=reward, bridged=bridged)

    def begin_batch(self, prompts: list[str], num_samples: int, response_length: int) -> None:
        self.proposal.begin_batch(prompts, num_samples, response_length)
        self.steering.begin_batch(prompts, num_samples, response_length)

    def steer(self, logits: torch.Tensor, context: GuidanceContext) -> Steered:
        return self.proposal.steer(logits, context)

    def resample(self, committed: Committed) -> Resampling | None:
        return self.steering.resample(committed, importance_log_ratio(committed))

    def reorder(self, rows: torch.Tensor) -> None:
        self.proposal.reorder(rows)
        self.steering.reorder(rows)

    def compute(self) -> ComputeLedger:
        """The proposal's and the steering's RM work (each builds its own prefix cache)."""
        return self.proposal.compute() + self.steering.compute()

    def summary(self) -> dict:
        return self.proposal.summary()

    def artifacts(self) -> dict:
        return self.proposal.artifacts()
