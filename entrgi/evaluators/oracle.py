"""The toy world's ground truth as a judge: the exact quality of every response, beside the RM's.

On the toy world the guiding RM is a trained proxy of a known function (`entrgi.toy.oracle`),
so scoring the same responses with that function tells a real improvement from reward hacking:
a method that raises the RM score but not the oracle's is exploiting the proxy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from entrgi.evaluators.base import Evaluator, EvaluatorConfig, Judgement, Responses
from entrgi.schemas import schema
from entrgi.toy.oracle import oracle, unknown_prompt
from entrgi.validation import ConfigError


@schema("evaluator", "oracle")
@dataclass
class ToyOracleConfig(EvaluatorConfig):
    """`evaluator=oracle`: every response by default, so both Top@1 and Avg@K get their true score."""

    _target_: str = "entrgi.evaluators.oracle.ToyOracle"
    name: str = "oracle"
    responses: Responses = Responses.all


class ToyOracle(Evaluator):
    """Scores (toy prompt, response) pairs with the oracle; a prompt from another benchmark is a config error."""

    def __init__(self, config: ToyOracleConfig | None = None):
        super().__init__(config if config is not None else ToyOracleConfig())

    @classmethod
    def check_prompts(cls, prompts: Sequence[tuple[str, str]]) -> str | None:
        return unknown_prompt(prompts)

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> list[Judgement]:
        judgements = []
        for prompt, response in zip(prompts, responses, strict=True):
            try:
                judgements.append(Judgement(oracle(prompt, response)))
            except ValueError as error:
                raise ConfigError(f"evaluator={self.name} judges toy-world prompts only: {error}") from error
        return judgements
