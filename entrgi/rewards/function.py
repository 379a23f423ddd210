"""`reward=callable`: any Python function of the text as the reward, named by its import path.

    python -m entrgi.run reward=callable reward.function=my_pkg.my_mod:score guidance=fk

`score(prompts: list[str], responses: list[str])` returns N numbers (a list, a NumPy array, a
tensor), one per pair, higher is better. The module must be importable by the job (on
`PYTHONPATH`); the path is resolved before any model loads.
"""

from __future__ import annotations

import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from omegaconf import MISSING

from entrgi.rewards.text import TextScorer, TextScorerConfig
from entrgi.schemas import schema
from entrgi.validation import ConfigError


@schema("reward", "callable")
@dataclass
class FunctionRewardConfig(TextScorerConfig):
    """The `reward` group option callable."""

    _target_: str = "entrgi.rewards.FunctionReward"
    # "package.module:name" (or "package.module.name"): f(prompts, responses) -> N scores.
    function: str = MISSING


def resolve(path: str, key: str) -> Callable[..., Any]:
    """The callable `path` names (`pkgutil.resolve_name`); ConfigError naming `key` when it cannot be
    imported or is not callable."""
    try:
        function = pkgutil.resolve_name(path)
    except (ImportError, AttributeError, ValueError) as error:
        raise ConfigError(f"{key}={path!r} cannot be imported ({type(error).__name__}: {error}); expected "
                          "'package.module:function' importable by the job") from None
    if not callable(function):
        raise ConfigError(f"{key}={path!r} is a {type(function).__name__}, not a function")
    return function


class FunctionReward(TextScorer):
    """Scores with the function `config.function` names; a result that is not N numbers is a ConfigError."""

    def __init__(self, config: FunctionRewardConfig):
        super().__init__(config)
        self.function = resolve(config.function, "reward.function")

    @classmethod
    def check(cls, config: FunctionRewardConfig, key: str) -> None:
        resolve(config.function, f"{key}.function")

    def score(self, prompts: list[str], responses: list[str]) -> torch.Tensor:
        result = self.function(list(prompts), list(responses))
        try:
            values = torch.as_tensor(result if torch.is_tensor(result) else list(result), dtype=torch.float32)
        except (TypeError, ValueError, RuntimeError) as error:
            raise ConfigError(f"reward.function={self.config.function!r} returned {type(result).__name__}, "
                              f"not numbers ({error})") from None
        if values.shape != (len(responses),):
            raise ConfigError(f"reward.function={self.config.function!r} returned scores of shape "
                              f"{tuple(values.shape)} for {len(responses)} responses; expected one number each")
        return values.detach().cpu()
