"""The judge interface: a second opinion on the saved responses, independent of the guiding RM.

Guidance optimises the very reward model that Top@1 is measured with, so a method can win by
exploiting it. An evaluator scores the decoded responses of a finished run with something
else (an LLM judge, a held-out reward model, a toy world's oracle); its scores are stored
next to the run's samples under the evaluator's `name` (`entrgi.evaluators.judging`).
"""

from __future__ import annotations

import gc
import re
import sys
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from omegaconf import MISSING

from entrgi.schemas import schema
from entrgi.validation import ConfigError


class Responses(StrEnum):
    """An evaluator's `responses`: which of the K responses per prompt it judges (`EvaluatorConfig`)."""

    top1 = "top1"  # the response the guiding RM ranked best of K (the paper)
    all = "all"  # every one of the K

# Names become file names (`judgements/<name>.jsonl`) and summary keys (`<name>_top1_mean`).
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


@dataclass
class Judgement:
    """One response's score. None means the judge failed on it: counted, never averaged in as 0."""

    score: float | None
    details: dict[str, Any] = field(default_factory=dict)  # e.g. per-unit-test scores


@schema("evaluator")
@dataclass
class EvaluatorConfig:
    """The fields every option of the `evaluator` group has; options add their own."""

    _target_: str = MISSING
    name: str = MISSING  # the key its scores are stored under
    responses: Responses = Responses.top1


class Evaluator(ABC):
    """Scores (prompt, response) pairs; one instance holds its model until `close`. Built from its
    config (an `EvaluatorConfig` subclass)."""

    name: str
    responses: Responses

    def __init__(self, config: EvaluatorConfig):
        name = config.name
        if not _NAME.fullmatch(name or ""):
            raise ConfigError(f"evaluator name {name!r} is not allowed: expected letters, digits, '.', '_' or '-'")
        self.config = config
        self.name, self.responses = name, Responses(config.responses)

    @abstractmethod
    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> list[Judgement]:
        """One judgement per pair, in order; batching is the evaluator's business."""

    @classmethod
    def check_prompts(cls, prompts: Sequence[tuple[str, str]]) -> str | None:  # noqa: ARG003
        """Why this judge cannot score responses to these (id, text) prompts, or None when it can.

        Called on the class before any model loads (`entrgi.preflight`), so a judge that only knows
        some prompts fails in seconds rather than after the whole generation.
        """
        return None

    def close(self) -> None:  # noqa: B027 (a no-op by default: an oracle holds no model)
        """Free the models (GPU memory) before the next evaluator loads."""


def release_memory() -> None:
    """Collect a model whose references were dropped and hand its GPU memory back, so the next fits."""
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        torch.cuda.empty_cache()
