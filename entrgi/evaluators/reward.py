"""A held-out reward model as a judge: guide with one RM, score the results with another.

Any option of the `reward` group can serve (e.g. guide with Skywork-Qwen3-1.7B, judge with
Skywork-Qwen3-8B). It scores the decoded text through the RM's chat template, batched
(`RewardModel.score_texts`, `reward.batch_size` conversations per pass), exactly as the run's
own Top@1 is scored, so the two numbers differ only by the model.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from entrgi.evaluators.base import Evaluator, EvaluatorConfig, Judgement, release_memory
from entrgi.rewards import RewardModel, RewardModelConfig
from entrgi.schemas import schema


@schema("evaluator", "reward")
@dataclass
class HeldOutRewardConfig(EvaluatorConfig):
    """The `evaluator=reward` options: `model` is a `reward` group option (default Skywork 8B)."""

    _target_: str = "entrgi.evaluators.reward.HeldOutReward"
    model: RewardModelConfig = field(default_factory=RewardModelConfig)


class HeldOutReward(Evaluator):
    """Scores each (prompt, response) with a frozen sequence classifier; a non-finite score is a failure."""

    def __init__(self, config: HeldOutRewardConfig, reward: RewardModel | None = None):
        """`reward`: the RM of `config.model` when it is loaded already; else it is loaded here."""
        super().__init__(config)
        self.model = reward if reward is not None else RewardModel(config.model)

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> list[Judgement]:
        scores = self.model.score_texts(list(prompts), list(responses)).tolist()
        return [Judgement(s if math.isfinite(s) else None) for s in scores]

    def close(self) -> None:
        del self.model
        release_memory()
