"""LMUnit: an LLM judge that scores a response against natural-language unit tests (SPEC §5).

The paper scores the Top@1 response with ContextualAI/LMUnit-qwen2.5-72b on five generic
unit tests. For each (query, response, unit test) the judge reads

    Query: <query>\n\nResponse: <response>\n\nUnit Test: <unit test>

as the user turn of its chat template and answers greedily with JSON such as `{"score": 4}`.
The score is not the digit it wrote but the probability-weighted mean of the score digits at
that position, read from the token's top log-probabilities and renormalised over the digits
found there. A response's LMUnit score is the mean over the unit tests. Two scorings
(`LMUnitScoring`, the config field `scoring`):

* `paper` (default): as the `lmunit` package (`LMUnit.score_from_top_logprobs` and
  `postprocess`) and the EntRGi authors' evaluation script score it, so the numbers compare
  with the paper's LMUnit column: digits 0–6; a unit test whose answer cannot be parsed (no
  score token, a score token that is not one of those digits, no probability on any of them)
  scores 0 and is averaged in.
* `strict`: digits 1–5 (LMUnit's documented scale); a response with any unparsable unit test
  is a failure (score None: counted, left out of the means), since a mean over a different
  subset of tests, or with invented zeros, is not comparable.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from entrgi.evaluators.base import Evaluator, EvaluatorConfig, Judgement
from entrgi.evaluators.greedy import GreedyBackend, GreedyOutput, open_backend
from entrgi.schemas import schema
from entrgi.validation import ranged
from entrgi.weights import DType, resolve_checkpoint

# The paper's five generic unit tests (SPEC §5), worded as in the authors' evaluation script.
UNIT_TESTS = (
    "Does the response directly and effectively address the user's request?",
    "Is the information in the response correct and reliable?",
    "Is the response well-structured, clear, and fluent?",
    "Does the response appropriately address the full scope of the question?",
    "Is the response free from harmful, biased, or inappropriate content?",
)
SCORE_KEY = "score"


class LMUnitScoring(StrEnum):
    """How a judge's answers become a score (the module docstring); the member name is the config value."""

    paper = "paper"  # the lmunit package's rule: digits 0–6, an unparsable unit test scores 0
    strict = "strict"  # digits 1–5, an unparsable unit test makes the response a failure

    @property
    def digits(self) -> tuple[int, ...]:
        """The score scale: the digit tokens the score is the probability-weighted mean of."""
        return tuple(range(0, 7)) if self is LMUnitScoring.paper else tuple(range(1, 6))


@schema("evaluator", "lmunit")
@dataclass
class LMUnitConfig(EvaluatorConfig):
    """The `evaluator=lmunit` options (the judge model and how it is served)."""

    _target_: str = "entrgi.evaluators.lmunit.LMUnitJudge"
    name: str = "lmunit"
    path: str = "ContextualAI/LMUnit-qwen2.5-72b"
    unit_tests: list[str] = field(default_factory=lambda: list(UNIT_TESTS))
    scoring: LMUnitScoring = LMUnitScoring.paper
    # auto: vLLM when installed and a GPU is visible, else transformers.
    backend: GreedyBackend = GreedyBackend.auto
    max_new_tokens: int = ranged(10, low=1)  # `{"score": 4}` fits in fewer
    top_logprobs: int = ranged(20, low=1)  # vLLM's default cap on returned log-probs
    batch_size: int = ranged(16, low=1)  # requests per forward pass (transformers; vLLM batches itself)
    tensor_parallel_size: int | None = ranged(None, low=1, optional=True)  # vLLM; None: every visible GPU
    gpu_memory_utilization: float = ranged(0.9, low=0.0, high=1.0, low_open=True)  # vLLM
    max_model_len: int | None = ranged(None, low=1, optional=True)  # vLLM; None: the model's own
    device: str = "auto"  # transformers
    dtype: DType = DType.auto
    trust_remote_code: bool = False


def unit_test_prompt(query: str, response: str, unit_test: str) -> str:
    """The user turn LMUnit was trained on."""
    return f"Query: {query}\n\nResponse: {response}\n\nUnit Test: {unit_test}"


def score_position(tokens: Sequence[str]) -> int | None:
    """Index of the token holding the score: the first number token after the `score` key."""
    text = "".join(tokens)
    key = text.find(SCORE_KEY)
    if key < 0:
        return None
    start = 0
    for i, token in enumerate(tokens):
        if start >= key + len(SCORE_KEY) and token.strip().isdigit():
            return i
        start += len(token)
    return None


def digit_score(top_logprobs: Iterable[tuple[str, float]], digits: Sequence[int]) -> float | None:
    """Σ_d p(d)·d / Σ_d p(d) over the score digits among the top tokens (surrounding spaces ignored,
    so `4` and ` 4` both count for 4); None when no digit has any probability there."""
    values = {str(d): float(d) for d in digits}
    mass = weighted = 0.0
    for token, logprob in top_logprobs:
        value = values.get(token.strip())
        if value is not None and math.isfinite(logprob):
            p = math.exp(logprob)
            mass += p
            weighted += p * value
    return weighted / mass if mass > 0 else None


def parse_score(output: GreedyOutput, scoring: LMUnitScoring) -> float | None:
    """The judge's score for one unit test, or None when its answer cannot be parsed.

    `paper` also requires the token written at the score position to be one of its digits (the
    package scores any other answer 0); both then weight the digits among that position's top tokens.
    """
    position = score_position(output.tokens)
    if position is None or position >= len(output.top_logprobs):
        return None
    if scoring is LMUnitScoring.paper and output.tokens[position].strip() not in {str(d) for d in scoring.digits}:
        return None
    return digit_score(output.top_logprobs[position], scoring.digits)


def combine(scores: Sequence[float | None], scoring: LMUnitScoring) -> float | None:
    """A response's score, the mean over its unit tests (None: unparsable): `paper` counts an
    unparsable test as 0; `strict` fails the response (None) if any test is unparsable."""
    if not scores:
        return None
    if scoring is LMUnitScoring.strict and any(s is None for s in scores):
        return None
    return sum(0.0 if s is None else s for s in scores) / len(scores)


class LMUnitJudge(Evaluator):
    """Every response × every unit test as one greedy request, all batched through one backend."""

    def __init__(self, config: LMUnitConfig):
        """Load the judge its `LMUnitConfig` names: `path` (Hub id or local folder of a causal LM with a
        chat template), scored by `scoring` (`LMUnitScoring`), served by `backend` (`vllm`, `transformers`
        or `auto`), which reads its own settings from the same config (max_new_tokens, top_logprobs,
        batch_size, device, dtype, …)."""
        super().__init__(config)
        if not config.unit_tests:
            raise ValueError(f"evaluator {config.name}: unit_tests is empty")
        self.unit_tests, self.scoring = list(config.unit_tests), LMUnitScoring(config.scoring)
        folder = resolve_checkpoint(config.path, f"evaluator.{config.name}.path")
        judge_fields = {f.name for f in dataclasses.fields(EvaluatorConfig)} | {"path", "backend", "unit_tests",
                                                                                "scoring"}
        settings = {key: value for key, value in dataclasses.asdict(config).items() if key not in judge_fields}
        self.backend = open_backend(config.backend, folder, **settings)

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> list[Judgement]:
        conversations = [
            [{"role": "user", "content": unit_test_prompt(prompt, response, test)}]
            for prompt, response in zip(prompts, responses, strict=True) for test in self.unit_tests
        ]
        outputs = self.backend.generate(conversations)
        n = len(self.unit_tests)
        judgements = []
        for i in range(len(responses)):
            answers = outputs[i * n : (i + 1) * n]
            scores = [parse_score(answer, self.scoring) for answer in answers]
            details = {"unit_tests": scores}
            if None in scores:  # what the judge said where it failed, to see why
                details["unparsed"] = [a.text for a, s in zip(answers, scores, strict=True) if s is None]
            judgements.append(Judgement(combine(scores, self.scoring), details))
        return judgements

    def close(self) -> None:
        self.backend.close()
