"""Judges of finished runs (the `evaluator` config group): a second opinion beside the guiding RM.

* `base`    — the interface: `Evaluator.score(prompts, responses) -> [Judgement]`;
* `lmunit`  — the LMUnit LLM judge (five unit tests, digit-probability score), on
  `greedy`'s vLLM or transformers backend;
* `reward`  — a held-out reward model from the `reward` group;
* `scores`  — per-prompt judgement lines and the summary numbers made from them;
* `judging` — applying evaluators to finished run directories;
* `tiny`    — the offline tiny judge and held-out tiny RM used by tests and `evaluator=tiny-*`.

Only the light modules are imported here, so reading judgements (the report) loads no model code.
"""

from entrgi.evaluators.base import Evaluator, EvaluatorConfig, Judgement

__all__ = ["Evaluator", "EvaluatorConfig", "Judgement"]
