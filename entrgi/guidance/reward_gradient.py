"""Reward-gradient guidance: soft, APS and EntRGi as one optimiser (SPEC §2 step 3).

At a guided step the masked logits φ become free variables (float32, a fresh Adam each
step) and M gradient steps raise the RM score of the relaxed input. The three methods
differ only in the per-position weight w of `entrgi.guidance.mix`. All B×K trajectories go
through the RM in one batch; every statistic stays on the device until the step ends. Each RM
forward and backward is counted from the shapes it runs on (`entrgi.compute`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum

import torch

from entrgi.categorical import draw_logits, sample_nucleus
from entrgi.compute import ComputeLedger
from entrgi.guidance.base import Guidance, GuidanceConfig, GuidanceContext, Steered
from entrgi.guidance.entropy_gate import EntropyGate
from entrgi.guidance.mix import WEIGHT_RULES, lookup_rule, mix_weight, relaxed_embeddings, soft_distribution
from entrgi.models import DiffusionLM
from entrgi.noise import Stream
from entrgi.rewards import ResponseTargets, RewardModel
from entrgi.rewards.vocab_bridge import BridgedReward
from entrgi.schemas import schema
from entrgi.validation import ranged, registered

HISTOGRAM_BINS = 40


class Optimizer(StrEnum):
    """`guidance.optimizer`: the torch optimizer of the logits (`RewardGradientConfig`)."""

    adam = "adam"
    sgd = "sgd"


_OPTIMIZERS = {Optimizer.adam: torch.optim.Adam, Optimizer.sgd: torch.optim.SGD}


class Keep(StrEnum):
    """`guidance.keep`: which iterate of the logits guidance returns (`RewardGradientConfig`)."""

    last = "last"
    best = "best"


class EosMaskFrom(StrEnum):
    """`guidance.eos_mask_from`: which tokens decide where the RM input is hidden (`RewardGradientConfig`)."""

    argmax = "argmax"
    sampled = "sampled"


@schema("guidance", "reward_gradient")
@dataclass
class RewardGradientConfig(GuidanceConfig):
    """The `guidance` group options soft, aps and entrgi."""

    _target_: str = "entrgi.guidance.RewardGradientGuidance"
    # A weight rule registered with `entrgi.guidance.mix.weight_rule` (soft, aps, entrgi built in).
    rule: str = registered("entrgi", WEIGHT_RULES)
    M: int = ranged(3, low=0)
    eta: float = ranged(0.5, low=0.0, low_open=True)
    optimizer: Optimizer = Optimizer.adam
    every: int = ranged(1, low=1)
    keep: Keep = Keep.last
    focus_margin: int | None = ranged(None, low=0, optional=True)
    entropy_gate: float | None = ranged(None, low=0.0, optional=True)  # nats; None: guide every step
    eos_mask_from: EosMaskFrom = EosMaskFrom.argmax
    # Shared with the sampler by default: the hard draw and the commit step use the same τ and top-p.
    # 0 (a greedy sampler's): softmax(φ/0) is the one-hot argmax, whose gradient is zero, so the
    # logits are left as they are; set guidance.temperature > 0 to guide a greedy sampler.
    temperature: float = ranged("${sampler.temperature}", low=0.0)
    top_p: float = ranged("${sampler.top_p}", low=0.0, high=1.0, low_open=True)
    top_k: int | None = ranged("${sampler.top_k}", low=1, optional=True)
    min_coverage: float = ranged(0.0, low=0.0, high=1.0)


class RewardGradientGuidance(Guidance):
    """Optimise the masked logits against a frozen reward model.

    Built from a `RewardGradientConfig` and the dLLM and RM it works with. The config's fields:

        rule: a registered weight rule: soft (w = 0), aps (w = 1), entrgi (w = normalised entropy), …
        M, eta, optimizer: gradient steps per guided denoising step (0: the logits as they are),
            learning rate, optimiser.
        every: guide denoising steps 0, every, 2·every, ... (1 = all, as in the paper).
        keep: return the last iterate (the reference, unscored) or, per trajectory, the iterate
            with the best relaxed RM score, the last one included (one more RM forward).
        focus_margin: optimise only the masked positions the schedule will commit this step
            (ranked by unguided confidence) plus this many more; None optimises all (the paper).
            Needs counts planned in advance: with `origin` or `schedule.confidence_threshold` all
            masked positions are optimised.
        entropy_gate: guide a trajectory only until the first guided step where the mean entropy
            (nats) of the dLLM's logits over its masked positions is below this; None guides
            every step (the paper). One host read per guided step while any trajectory is
            guided (`entrgi.guidance.entropy_gate`).
        eos_mask_from: which tokens decide the first EOS that hides the rest of the response
            from the RM: argmax of φ (the reference) or the sampled hard tokens.
        temperature, top_p, top_k: τ of the soft path and of the hard-token draw; top-p and top-k
            apply to the hard draw only. At τ = 0 guidance leaves the logits unchanged.
        min_coverage: fail when fewer dLLM tokens than this map exactly into the RM vocabulary.
    """

    needs_gradient = True

    def __init__(self, config: RewardGradientConfig, *, model: DiffusionLM, reward: RewardModel,
                 bridged: BridgedReward | None = None):
        """`bridged`: the RM as read in dLLM ids, when another method already built it (its table is [V, d])."""
        super().__init__(config)
        self.bridged = bridged or BridgedReward(model, reward)
        self.reward = reward
        lookup_rule(config.rule)  # unknown names fail here, before any model work
        self.optimizer_cls = _OPTIMIZERS[config.optimizer]
        self.eos_token_id, self.mask_token_id = model.eos_token_id, model.mask_token_id
        self.coverage = self.bridged.coverage
        if self.coverage < config.min_coverage:
            raise ValueError(
                f"guidance.min_coverage={config.min_coverage}: only {self.coverage:.4f} of the dLLM vocabulary "
                "maps exactly into the reward model's vocabulary"
            )
        self.table = self.bridged.table
        # Heat-map ranges, fixed up front: H <= log V and E <= ‖ē − ẽ‖ <= 2 max‖E_i‖.
        self.log_vocab = math.log(model.vocab_size)
        self.max_error = 2 * float(torch.linalg.vector_norm(self.table, dim=-1, dtype=torch.float32).max())
        self.histogram = torch.zeros(HISTOGRAM_BINS, HISTOGRAM_BINS, device=self.table.device)
        self.layout = None
        self.ledger = ComputeLedger()
        self.gate = None if config.entropy_gate is None else EntropyGate(config.entropy_gate)

    def begin_batch(self, prompts: list[str], num_samples: int, response_length: int) -> None:
        self.layout = self.reward.layout(prompts, num_samples, response_length)
        self.ledger = ComputeLedger()
        self.ledger.rm_forward(*self.layout.precomputed)
        if self.gate is not None:
            self.gate.begin_batch(len(prompts) * num_samples, self.table.device)

    def compute(self) -> ComputeLedger:
        """Per guided step: M RM forwards and backwards over the B·K rows, one more forward with `keep=best`;
        and the prefix cache of `begin_batch`."""
        return self.ledger

    def _visible(self, response: torch.Tensor, masked: torch.Tensor, proposal: torch.Tensor) -> torch.Tensor:
        """RM sees the response up to, not including, its first EOS (pad = eos in Dream), or with
        `reward.hide_from=stop` its first stop token."""
        return self.bridged.visible(torch.where(masked, proposal, response))

    def _accumulate_histogram(self, ent: torch.Tensor, error: torch.Tensor, masked: torch.Tensor) -> None:
        n = HISTOGRAM_BINS
        h_bin = (ent / self.log_vocab * n).long().clamp(0, n - 1)
        e_bin = (error / self.max_error * n).long().clamp(0, n - 1)
        # index_add_, not bincount: on CUDA bincount reads min/max back to size its output.
        self.histogram.view(-1).index_add_(0, (h_bin * n + e_bin).flatten(), masked.flatten().float())

    def _free_positions(self, logits: torch.Tensor, masked: torch.Tensor, context: GuidanceContext) -> torch.Tensor:
        """Response positions [N, F] whose logits are optimised: the masked ones (all positions
        when their count is not known in advance), or with `focus_margin` the n positions the
        schedule commits this step plus a margin, ranked by a proxy of its confidence (the
        unguided top-1 probability; the schedule itself ranks by its own rule)."""
        if self.config.focus_margin is None or context.planned is None:
            return context.positions
        n_masked, n_commit = context.planned
        focus = max(1, min(n_masked, n_commit + self.config.focus_margin))
        confidence = torch.softmax(logits.detach().float(), dim=-1).amax(dim=-1)
        return torch.where(masked, confidence, torch.full_like(confidence, -1.0)).topk(focus, dim=-1).indices

    def _relax(self, phi: torch.Tensor, positions: torch.Tensor, context: GuidanceContext, iteration: int):
        """The RM input at `positions` from their logits phi [N, F, V]: (mix, hard tokens, entropy, w, and
        q = softmax(φ/τ) [N, F, V], detached)."""
        current, temperature = phi.detach(), self.config.temperature
        soft, ent = soft_distribution(phi, temperature)  # at τ = 1 one log-softmax gives both
        weight = mix_weight(self.config.rule, current, entropy_nats=ent)
        scaled = draw_logits(current, temperature, self.mask_token_id)  # as in the commit draw: <mask> is no token
        uniforms = context.noise.uniform(Stream.GUIDANCE_TOKEN, context.step, context.masked.shape[-1], iteration)
        hard = sample_nucleus(scaled, uniforms.gather(1, positions), self.config.top_p, self.config.top_k)
        mix = relaxed_embeddings(phi, self.table, hard, weight, temperature, entropy_nats=ent, soft_probs=soft)
        return mix, hard, ent, weight, soft.detach()

    def steer(self, logits: torch.Tensor, context: GuidanceContext) -> Steered:
        if context.step % self.config.every or self.config.temperature == 0 or self.config.M == 0:
            return Steered(logits=logits, stats={})
        masked, response = context.masked, context.response
        if self.gate is not None:
            if self.gate.closed():  # every gate closed at an earlier step: the float32 logits a closed row gets
                return Steered(logits=logits.detach().float(), stats={})  # (bf16 draws would depend on the batch)
            guided_rows = self.gate.update(logits, masked, context.positions)
        vocab = logits.shape[-1]
        phi_init = logits.detach().float()
        free = self._free_positions(logits, masked, context)  # [N, F]
        free_masked = masked.gather(1, free)
        n_free = free_masked.sum().clamp(min=1).float()
        phi = phi_init.gather(1, free.unsqueeze(-1).expand(-1, -1, vocab)).requires_grad_(True)
        optimizer = self.optimizer_cls([phi], lr=self.config.eta)
        # What the RM reads where nothing is optimised: committed tokens stay hard; masked
        # positions outside a focus get their unguided mix, drawn once per step.
        base_embeds, base_proposal, base_tokens = self.table[response], phi_init.argmax(-1), response
        outside = self._outside_focus(masked, free, context)
        if outside is not None:
            rest = phi_init.gather(1, outside.unsqueeze(-1).expand(-1, -1, vocab))
            mix, hard, *_ = self._relax(rest, outside, context, iteration=0)
            base_embeds = _put(base_embeds, outside, mix.embeds.detach().to(base_embeds.dtype))
            base_tokens = base_tokens.scatter(1, outside, hard)
            if self.config.eos_mask_from == "sampled":
                base_proposal = base_proposal.scatter(1, outside, hard)

        rm_pass = response.shape[0], self.layout.pass_width(response.shape[1])  # (rows, width) of an RM pass

        def score(iteration: int):
            mix, hard, ent, weight, soft = self._relax(phi, free, context, iteration)
            embeds = torch.where(masked.unsqueeze(-1), _put(base_embeds, free, mix.embeds.to(base_embeds.dtype)),
                                 base_embeds)
            drawn = phi.detach().argmax(-1) if self.config.eos_mask_from == "argmax" else hard
            proposal = base_proposal.scatter(1, free, drawn)
            visible = self._visible(response, masked, proposal)
            self.ledger.rm_forward(*rm_pass)
            targets = {}
            if self.reward.reads_tokens:  # ar-likelihood: the targets relaxed as the inputs are
                tokens = torch.where(masked, base_tokens.scatter(1, free, hard), response)
                targets["targets"] = self._targets(soft, tokens, free, free_masked, weight)
            return self.reward.score_embeds(self.layout, embeds, visible, **targets), mix, ent, weight

        best_phi = phi.detach().clone()
        best_score = torch.full((phi.shape[0],), float("-inf"), device=phi.device)
        curve, sums = [], {"entropy": 0.0, "w": 0.0, "E": 0.0, "D": 0.0}
        for iteration in range(self.config.M):
            scores, mix, ent, weight = score(iteration)
            optimizer.zero_grad(set_to_none=True)
            (-scores.sum()).backward()
            self.ledger.rm_backward(*rm_pass)
            if self.config.keep == "best":  # the iterate just scored is phi before this update
                best_phi = torch.where((scores.detach() > best_score)[:, None, None], phi.detach(), best_phi)
                best_score = torch.maximum(best_score, scores.detach())
            optimizer.step()
            curve.append(scores.detach().mean())
            for key, value in (("entropy", ent), ("w", weight), ("E", mix.approx_error), ("D", mix.ood_distance)):
                sums[key] = sums[key] + (value * free_masked).sum() / n_free
            self._accumulate_histogram(ent, mix.approx_error, free_masked)
        final = phi.detach()
        if self.config.keep == "best":  # the last update has not been scored yet: score it once, without gradient
            with torch.no_grad():
                last_scores = score(self.config.M)[0]
            final = torch.where((last_scores > best_score)[:, None, None], final, best_phi)
        stats = {f"{key}_mean": value / self.config.M for key, value in sums.items()}
        stats["reward_curve"] = torch.stack(curve)
        steered = _put(phi_init, free, final)
        if self.gate is not None:
            stats["gate_open"] = guided_rows.float().mean()
            steered = torch.where(guided_rows[:, None, None], steered, phi_init)
        return Steered(logits=steered, stats=stats)

    def reorder(self, rows: torch.Tensor) -> None:
        """Move the entropy gates along with their particles (`entrgi.guidance.smc`)."""
        if self.gate is not None:
            self.gate.reorder(rows)

    def _targets(self, q: torch.Tensor, tokens: torch.Tensor, free: torch.Tensor, free_masked: torch.Tensor,
                 weight: torch.Tensor) -> ResponseTargets:
        """The likelihood targets of a reward that reads tokens, in RM ids: the hard `tokens` [N, L] (dLLM ids)
        everywhere, relaxed at the masked `free` positions [N, F] by q = softmax(φ/τ) [N, F, V] of their logits
        (detached, the soft embedding's; carried into the RM vocabulary through the bridge's token mapping) and
        the mix weight w [N, F] (`entrgi.rewards.ar_likelihood`)."""
        mapping = self.bridged.token_mapping
        probs = q.new_zeros(*q.shape[:-1], self.reward.embedding_table.shape[0])
        probs.scatter_add_(-1, mapping.expand_as(q), q)
        return ResponseTargets(mapping[tokens], free, free_masked, probs, weight)

    def _outside_focus(self, masked, free, context) -> torch.Tensor | None:
        """Masked positions [N, n_masked - F] left out of the focus (None without a focus)."""
        if self.config.focus_margin is None or context.planned is None or free.shape[1] >= context.planned[0]:
            return None
        left = masked.scatter(1, free, False).to(torch.uint8)
        return torch.sort(left, dim=-1, descending=True, stable=True).indices[:, : context.planned[0] - free.shape[1]]

    def describe(self) -> str:
        return f"guidance.rule={self.config.rule} through reward.path={self.reward.config.path}"

    def summary(self) -> dict:
        return {"vocab_coverage": self.coverage}

    def artifacts(self) -> dict:
        """The joint histogram of (entropy, E^l) over all masked positions and guided steps."""
        return {
            "entropy_error_histogram": {
                "entropy_edges": torch.linspace(0, self.log_vocab, HISTOGRAM_BINS + 1).tolist(),
                "error_edges": torch.linspace(0, self.max_error, HISTOGRAM_BINS + 1).tolist(),
                "counts": self.histogram.cpu().tolist(),  # [entropy bin][E bin]
            }
        }


def _put(target: torch.Tensor, positions: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Copy of target [N, L, ...] with rows `positions` [N, F] replaced by values [N, F, ...]."""
    index = positions.view(*positions.shape, *([1] * (target.dim() - 2))).expand_as(values)
    return target.scatter(1, index, values)
