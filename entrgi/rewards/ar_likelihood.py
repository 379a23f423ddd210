"""The autoregressive-likelihood reward: log p(response + template closing tokens | prompt) under a frozen causal LM.

The authors' later variant of EntRGi (`atutej/entrgi`, `main_expts/entrgi_ar.py`): the reward of a
response is the log-likelihood a frozen autoregressive LM (Qwen3ForCausalLM by default) gives the
response and the chat template's suffix after it, given the template's prefix with the prompt;
summed, or (`reward.normalize`, the authors' choice) divided by the number of scored tokens.

It reads the same [template prefix | response | template suffix] layout as the classifier
(`RewardModel`, whose loading, prefix cache and positions it shares), so guidance drives it
through the same embedding path. The inputs are the relaxed embeddings; the *targets* are token
ids (`ResponseTargets`): at a committed position its token; at a masked position guidance
optimises, the target is relaxed like the input, as the authors do: the expected log-probability
under q = softmax(φ/τ) (q detached) mixed with the log-probability of the drawn hard token by the
same weight w as the embedding, value sg((1 − w)·Σ_v q_v log p(v) + w·log p(x)) with the gradient of
the expected term (soft: w = 0, aps: w = 1, entrgi: w = H/log V). Each target is predicted from
the last column the LM sees before it (hidden positions after EOS are skipped; the authors'
script predicts the first suffix token from the last, possibly hidden, column).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import transformers

from entrgi.compute import ComputeLedger
from entrgi.rewards.reward_model import RewardInputLayout, RewardModel, RewardModelConfig
from entrgi.schemas import schema


@schema("reward", "ar_likelihood")
@dataclass
class ARLikelihoodConfig(RewardModelConfig):
    """The `reward=ar-likelihood` option: a causal LM's log-likelihood of the response as the reward."""

    _target_: str = "entrgi.rewards.ARLikelihood"
    # Divide the log-likelihood by the number of scored tokens (response up to its hidden tail + suffix).
    normalize: bool = True


@dataclass
class ResponseTargets:
    """The response's tokens in RM ids, for a reward that scores them (`RewardModel.reads_tokens`).

    tokens [N, L] long: the hard token at every response position (a committed token; at a masked
    position, the token guidance drew). At `positions` [N, F] where `relaxed` [N, F] is true, the target
    is relaxed as the input embedding is: `probs` [N, F, V_rm] (softmax(φ/τ) carried into the RM
    vocabulary, detached) mixed with the hard token by `weight` [N, F] (w of `entrgi.guidance.mix`).
    """

    tokens: torch.Tensor
    positions: torch.Tensor | None = None
    relaxed: torch.Tensor | None = None
    probs: torch.Tensor | None = None
    weight: torch.Tensor | None = None


class ARLikelihood(RewardModel):
    """Scores (prompt, response) pairs by their log-likelihood under a frozen `AutoModelForCausalLM`.

    Built from an `ARLikelihoodConfig` (the `RewardModelConfig` fields and `normalize`). The text path
    (`score_texts`) scores the conversation's tokens; the embedding path (`score_embeds`) relaxed inputs
    and `ResponseTargets`. With one-hot inputs and hard targets the two agree (`reward.positions=visible`).
    """

    reads_tokens = True

    network_class = transformers.AutoModelForCausalLM
    load_options = {}

    def score_embeds(self, layout: RewardInputLayout, response_embeds: torch.Tensor, response_visible: torch.Tensor,
                     targets: ResponseTargets | None = None) -> torch.Tensor:
        """Differentiable float32 log-likelihoods [N] of the responses (embeddings [N, L, d], targets required)
        and the template suffix, summed over the visible targets (divided by their count with `normalize`)."""
        if targets is None:
            raise ValueError("reward=ar-likelihood scores token targets: pass score_embeds(..., targets=)")
        hidden, visible, offset = self.hidden_states(layout, response_embeds, response_visible)
        start, length = layout.prefix_real.shape[1], response_visible.shape[1]
        # hidden from the last prefix column on (the cache computed that one's state up front).
        if offset:
            hidden = torch.cat([layout.prefix_last.unsqueeze(1).to(hidden.dtype), hidden], dim=1)
        else:
            hidden = hidden[:, start - 1 :]
        columns = torch.arange(visible.shape[1], device=visible.device)
        last_seen = torch.where(visible, columns, -1).cummax(dim=1).values
        predictor = last_seen[:, start - 1 : -1] - (start - 1)  # [N, L + S]: the column each target is read from
        states = hidden.gather(1, predictor.unsqueeze(-1).expand(-1, -1, hidden.shape[-1]))
        log_probs = torch.log_softmax(self.network.get_output_embeddings()(states).float(), dim=-1)
        wanted = torch.cat([targets.tokens, layout.suffix_ids], dim=1)
        scored = log_probs.gather(-1, wanted.unsqueeze(-1)).squeeze(-1)  # [N, L + S]
        if targets.positions is not None:
            rows = log_probs[:, :length].gather(
                1, targets.positions.unsqueeze(-1).expand(-1, -1, log_probs.shape[-1]))
            soft = (targets.probs.detach().float() * rows).sum(-1)
            hard = scored[:, :length].gather(1, targets.positions)
            weight = targets.weight.detach().float()
            mixed = ((1 - weight) * soft + weight * hard).detach() + (soft - soft.detach())
            relaxed = torch.where(targets.relaxed, mixed, hard)
            scored = torch.cat([scored[:, :length].scatter(1, targets.positions, relaxed), scored[:, length:]], dim=1)
        counted = visible[:, start:].float()
        total = (scored * counted).sum(-1)
        return total / counted.sum(-1).clamp(min=1) if self.config.normalize else total

    @torch.no_grad()
    def score_texts(self, prompts: list[str], responses: list[str], ledger: ComputeLedger | None = None
                    ) -> torch.Tensor:
        """Float32 log-likelihoods [N] on the CPU of each conversation's tokens after the template prefix,
        `batch_size` conversations per forward pass (counted in `ledger` when given)."""
        rows = self.text_rows(prompts, responses)
        starts = [len(self.template_parts(p)[0]) for p in prompts]
        scores = []
        for i in range(0, len(rows), self.config.batch_size):
            batch = self.tokenizer.pad(
                {"input_ids": rows[i : i + self.config.batch_size]}, padding=True, padding_side="right",
                return_tensors="pt",
            ).to(self.device)
            if ledger is not None:
                ledger.rm_forward(*batch["input_ids"].shape)
            log_probs = torch.log_softmax(self.network(**batch).logits[:, :-1].float(), dim=-1)
            scored = log_probs.gather(-1, batch["input_ids"][:, 1:].unsqueeze(-1)).squeeze(-1)
            columns = torch.arange(1, batch["input_ids"].shape[1], device=self.device)
            first = torch.tensor(starts[i : i + self.config.batch_size], device=self.device)
            counted = (batch["attention_mask"][:, 1:].bool() & (columns >= first[:, None])).float()
            total = (scored * counted).sum(-1)
            total = total / counted.sum(-1).clamp(min=1) if self.config.normalize else total
            scores.append(total.cpu())
        return torch.cat(scores) if scores else torch.zeros(0)
