"""`reward=toy-oracle`: the toy world's exact quality function (`entrgi.toy.oracle`) as the reward.

On the toy world the RM is a trained proxy of this function, so ranking (Best-of-N) or steering
(`guidance=fk`) by the oracle itself is the upper bound of what a perfect RM would give these
methods. Toy-world prompts only: any other benchmark is refused before a model loads.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from entrgi.rewards.text import TextScorer, TextScorerConfig, score_tensor
from entrgi.schemas import schema
from entrgi.toy.oracle import oracle, unknown_prompt


@schema("reward", "toy_oracle")
@dataclass
class ToyOracleRewardConfig(TextScorerConfig):
    """The `reward` group option toy-oracle."""

    _target_: str = "entrgi.rewards.ToyOracleReward"


class ToyOracleReward(TextScorer):
    """The oracle's score in [0, 1] of each (toy prompt, response)."""

    @classmethod
    def check_prompts(cls, prompts: Sequence[tuple[str, str]]) -> str | None:
        return unknown_prompt(prompts)

    def score(self, prompts: list[str], responses: list[str]) -> torch.Tensor:
        return score_tensor(oracle(p, r) for p, r in zip(prompts, responses, strict=True))
