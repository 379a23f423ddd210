"""Rewards that read text: the `TextReward` interface every reward has, and the base of the text scorers.

Every option of the `reward` group scores decoded (prompt, response) pairs, `score_texts`: that
is how a run's final K responses are ranked (Top@1, Avg@K) and how Best-of-N (`guidance=none`)
picks. The reward model (`entrgi.rewards.reward_model`) is also *differentiable*: it scores
embeddings, which gradient guidance and fk's device path need. A text scorer is any other
function of the text (`reward=callable`, `regex`, `length`, `toy-oracle`, `sum`): no tokenizer, no
gradient, so only Best-of-N and `guidance=fk` can use it, fk through `DecodedText` on the host.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import torch
from omegaconf import MISSING

from entrgi.compute import ComputeLedger
from entrgi.rewards.reward_model import RewardReading


class TextReward(Protocol):
    """What a run needs of its reward: float32 scores [N] on the CPU of N (prompt, response) pairs.

    `differentiable`: it also scores response embeddings (`layout`, `score_embeds`, as `RewardModel`),
    so gradient guidance can use it and fk scores its estimates on the device.
    """

    differentiable: ClassVar[bool]

    def score_texts(self, prompts: list[str], responses: list[str], ledger: ComputeLedger | None = None
                    ) -> torch.Tensor:
        """Scores of the pairs; any reward-model pass counted in `ledger` when one is given."""
        ...


@dataclass
class TextScorerConfig(RewardReading):
    """The fields every text scorer's config has (the RM-reading keys are there for `fidelity` only)."""

    _target_: str = MISSING


class TextScorer(ABC):
    """Base of the rewards that are functions of the decoded text. Built from its config (a
    `TextScorerConfig` subclass); checked before any model loads by its classmethods."""

    differentiable: ClassVar[bool] = False

    def __init__(self, config: TextScorerConfig):
        self.config = config

    def score_texts(self, prompts: list[str], responses: list[str], ledger: ComputeLedger | None = None
                    ) -> torch.Tensor:
        """Float32 scores [N] on the CPU, one per (prompt, response) pair, in order (`score`). A text
        scorer's own work is not counted in `ledger`; a sum's reward-model terms are."""
        del ledger
        return self.score(prompts, responses)

    @abstractmethod
    def score(self, prompts: list[str], responses: list[str]) -> torch.Tensor:
        """Float32 scores [N] on the CPU, one per (prompt, response) pair, in order."""

    @classmethod  # noqa: B027 (a no-op by default: most scorers have nothing to check)
    def check(cls, config: Any, key: str) -> None:  # noqa: ARG003
        """Raise ConfigError naming `key.<field>` when `config` cannot work (a bad pattern, an unknown
        function). Called on the class before any model loads (`entrgi.preflight`)."""

    @classmethod
    def check_prompts(cls, prompts: Sequence[tuple[str, str]]) -> str | None:  # noqa: ARG003
        """Why this scorer cannot score responses to these (id, text) prompts, or None when it can."""
        return None


def score_tensor(values: Sequence[float]) -> torch.Tensor:
    """Float32 scores [N] on the CPU from N numbers."""
    return torch.tensor(list(values), dtype=torch.float32)


class DecodedText:
    """A reward read on responses written in dLLM token ids: each row decoded as the final text is
    (`model.decode`), then scored by the reward's text path with its prompt.

    This reads the tokens back to the host (a device sync per call): inherent to a reward that is a
    Python function of text. fk takes this path only for a reward that is not differentiable.
    """

    def __init__(self, model: Any, reward: TextReward):
        """`model`: the dLLM (its `decode`); `reward`: any `TextReward`."""
        self.model, self.reward = model, reward
        self.prompts: list[str] = []

    def begin_batch(self, prompts: list[str], num_samples: int) -> None:
        """The prompt of each of the B·K rows of the next batch (prompt-major)."""
        self.prompts = [prompt for prompt in prompts for _ in range(num_samples)]

    def score_tokens(self, tokens: torch.Tensor, ledger: ComputeLedger | None = None) -> torch.Tensor:
        """Float32 scores [N] on the tokens' device of responses `tokens` [N, L] (dLLM ids); reward-model
        passes (a sum's RM terms) counted in `ledger`."""
        texts = [self.model.decode(row) for row in tokens.tolist()]
        return self.reward.score_texts(self.prompts, texts, ledger).to(device=tokens.device, dtype=torch.float32)
