"""`reward=length`: a penalty on long responses, −`penalty` per word (or character) beyond `allowance`.

Zero up to the allowance, then linear: score = −penalty · max(0, length − allowance). Words are
whitespace-separated runs of the decoded response; characters are its Unicode characters. Alone
it favours the shortest response; as a term of `reward=sum` it trades reward for brevity.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

import torch

from entrgi.rewards.text import TextScorer, TextScorerConfig, score_tensor
from entrgi.schemas import schema
from entrgi.validation import ranged


class LengthUnit(StrEnum):
    """`reward.unit`: what the length of a response counts."""

    words = "words"
    characters = "characters"


@schema("reward", "length")
@dataclass
class LengthPenaltyConfig(TextScorerConfig):
    """The `reward` group option length (module docstring)."""

    _target_: str = "entrgi.rewards.LengthPenalty"
    unit: LengthUnit = LengthUnit.words
    penalty: float = ranged(0.01, low=0.0)  # per unit beyond the allowance
    allowance: int = ranged(0, low=0)  # units free of penalty


class LengthPenalty(TextScorer):
    """−penalty · max(0, length − allowance) of each response (the prompt is not read)."""

    def length(self, response: str) -> int:
        return len(response.split()) if self.config.unit == LengthUnit.words else len(response)

    def score(self, prompts: list[str], responses: list[str]) -> torch.Tensor:
        return score_tensor(-self.config.penalty * max(0, self.length(r) - self.config.allowance) for r in responses)
