"""`reward=regex`: a response's score is the sum of the weights of the patterns and keywords it contains.

    python -m entrgi.run reward=regex 'reward.keywords=[fox,forest]' guidance=fk
    python -m entrgi.run reward=regex 'reward.patterns=[{pattern: "runs? in", weight: 2.0}]'

Each pattern (a Python regular expression, `re.search`) adds its weight once when it matches
anywhere in the response; each keyword adds `keyword_weight` once when it occurs as a whole word
(not inside a longer word). `ignore_case` applies to both. The patterns are compiled before any
model loads: a bad one is refused with the key that holds it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch
from omegaconf import MISSING

from entrgi.rewards.text import TextScorer, TextScorerConfig, score_tensor
from entrgi.schemas import schema
from entrgi.validation import ConfigError


@dataclass
class WeightedPattern:
    """One entry of `reward.patterns`."""

    pattern: str = MISSING
    weight: float = 1.0


@schema("reward", "regex")
@dataclass
class RegexRewardConfig(TextScorerConfig):
    """The `reward` group option regex (module docstring)."""

    _target_: str = "entrgi.rewards.RegexReward"
    patterns: list[WeightedPattern] = field(default_factory=list)
    keywords: list[str] = field(default_factory=list)
    keyword_weight: float = 1.0
    ignore_case: bool = False


def compile_patterns(config: RegexRewardConfig, key: str) -> list[tuple[re.Pattern, float]]:
    """(compiled pattern, weight) of every pattern and keyword; ConfigError naming the entry of `key` that
    does not compile, or `key.patterns` when there is nothing to look for."""
    if not config.patterns and not config.keywords:
        raise ConfigError(f"{key}.patterns and {key}.keywords are both empty: give one, e.g. {key}.keywords=[fox]")
    flags = re.IGNORECASE if config.ignore_case else 0
    compiled = []
    for i, entry in enumerate(config.patterns):
        try:
            compiled.append((re.compile(entry.pattern, flags), entry.weight))
        except re.error as error:
            raise ConfigError(f"{key}.patterns[{i}].pattern={entry.pattern!r} is not a valid regular "
                              f"expression: {error}") from None
    for keyword in config.keywords:
        compiled.append((re.compile(rf"(?<!\w){re.escape(keyword)}(?!\w)", flags), config.keyword_weight))
    return compiled


class RegexReward(TextScorer):
    """Σ weights of the patterns and keywords found in the response (the prompt is not read)."""

    def __init__(self, config: RegexRewardConfig):
        super().__init__(config)
        self.patterns = compile_patterns(config, "reward")

    @classmethod
    def check(cls, config: RegexRewardConfig, key: str) -> None:
        compile_patterns(config, key)

    def score(self, prompts: list[str], responses: list[str]) -> torch.Tensor:
        return score_tensor(sum(weight for pattern, weight in self.patterns if pattern.search(response))
                            for response in responses)
