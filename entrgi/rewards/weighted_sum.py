"""`reward=sum`: a weighted sum of rewards, Σ weightᵢ · rewardᵢ(prompt, response).

Its terms are `reward` group options under `reward.rewards.<name>` and their weights under
`reward.weights.<name>` (1 when not given). The shipped option (`conf/reward/sum.yaml`) is the toy
RM minus a length penalty; add a term from the command line with
`+reward@reward.rewards.<name>=<option>` (e.g. `+reward@reward.rewards.oracle=toy-oracle`), drop
one with `~reward.rewards.<name>`. An RM term is scored on its text path, so the sum is a text
reward (Best-of-N and `guidance=fk`) even when every term is an RM.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from entrgi.components import construct
from entrgi.compute import ComputeLedger
from entrgi.rewards.text import TextReward, TextScorer, TextScorerConfig
from entrgi.schemas import schema
from entrgi.validation import ConfigError


@schema("reward", "sum")
@dataclass
class WeightedSumConfig(TextScorerConfig):
    """The `reward` group option sum (module docstring)."""

    _target_: str = "entrgi.rewards.WeightedSum"
    rewards: dict[str, Any] = field(default_factory=dict)  # name -> the config of a `reward` option
    weights: dict[str, float] = field(default_factory=dict)  # name -> weight (1 when absent)


class WeightedSum(TextScorer):
    """Σ weight · score over the terms, each built from its config (an RM term loads its model)."""

    def __init__(self, config: WeightedSumConfig):
        super().__init__(config)
        self.check(config, "reward")
        self.terms: dict[str, TextReward] = {name: construct(term) for name, term in config.rewards.items()}

    @classmethod
    def check(cls, config: WeightedSumConfig, key: str) -> None:
        if not config.rewards:
            raise ConfigError(f"{key}.rewards is empty: add terms, e.g. +reward@{key}.rewards.oracle=toy-oracle")
        unknown = sorted(set(config.weights) - set(config.rewards))
        if unknown:
            raise ConfigError(f"{key}.weights.{unknown[0]}: no such term; the terms of {key}.rewards are "
                              f"{', '.join(config.rewards)}")

    def score_texts(self, prompts: list[str], responses: list[str], ledger: ComputeLedger | None = None
                    ) -> torch.Tensor:
        total = torch.zeros(len(responses), dtype=torch.float64)
        for name, term in self.terms.items():
            total += self.config.weights.get(name, 1.0) * term.score_texts(prompts, responses, ledger).double()
        return total.float()

    def score(self, prompts: list[str], responses: list[str]) -> torch.Tensor:
        """`score_texts` without counting the reward-model terms' passes."""
        return self.score_texts(prompts, responses)
