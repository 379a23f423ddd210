"""Text rewards (issue 16 item 4): each scorer against hand values, the weighted sum, their checks before any
model loads, Best-of-N and fk ranking and steering with them on the toy world, and the refusal of gradient
guidance with a reward that scores text only."""

from __future__ import annotations

import json
import math

import pytest
import torch

from entrgi.benchmarks import Prompt
from entrgi.components import build
from entrgi.experiment import run_experiment
from entrgi.guidance import FKConfig, FKGuidance
from entrgi.preflight import check_inputs, check_job
from entrgi.rewards import (
    FunctionReward,
    FunctionRewardConfig,
    LengthPenalty,
    LengthPenaltyConfig,
    RegexReward,
    RegexRewardConfig,
    RewardModel,
    ToyOracleReward,
    ToyOracleRewardConfig,
    WeightedSum,
)
from entrgi.rewards.patterns import WeightedPattern
from entrgi.toy.oracle import oracle
from entrgi.validation import ConfigError

HORSE = "Tell me about a horse that jumps."  # asks: animal, action (+ coherence): 3 checks
TINY = ["experiment=tiny", "logger=none"]


def char_count(prompts: list[str], responses: list[str]) -> list[int]:
    """A callable reward for `reward.function=test_text_rewards:char_count`."""
    return [len(p) - len(r) for p, r in zip(prompts, responses, strict=True)]


def one_score(prompts: list[str], responses: list[str]) -> list[float]:
    return [1.0]


# --- each scorer against hand values ---------------------------------------------------------------------


def test_regex_adds_the_weight_of_each_pattern_and_keyword_found_once():
    config = RegexRewardConfig(patterns=[WeightedPattern("runs? in", 2.0), WeightedPattern(r"\bthe\b", -0.5)],
                               keywords=["fox", "red fox"], keyword_weight=1.5)
    reward = RegexReward(config)
    responses = [
        "The red fox runs in the forest.",  # runs in (2) + the (-0.5) + fox (1.5) + red fox (1.5)
        "Foxes run in the field near the barn.",  # run in + the, found twice, counted once; 'Foxes' is not fox
        "A cat sleeps.",  # nothing
    ]
    assert reward.score_texts(["p"] * 3, responses).tolist() == [2 - 0.5 + 1.5 + 1.5, 2 - 0.5, 0.0]
    loose = RegexReward(RegexRewardConfig(keywords=["fox"], ignore_case=True))
    assert loose.score_texts(["p"] * 3, ["FOX!", "foxes", "a (fox)"]).tolist() == [1.0, 0.0, 1.0]


@pytest.mark.parametrize("unit,penalty,allowance,expected", [
    ("words", 0.1, 0, [-0.6, -0.0, -0.1]),
    ("words", 0.1, 2, [-0.4, -0.0, -0.0]),
    ("characters", 0.5, 10, [-6.5, -0.0, -0.0]),  # 23 characters, 0, 3
])
def test_length_penalty_against_hand_values(unit, penalty, allowance, expected):
    reward = LengthPenalty(LengthPenaltyConfig(unit=unit, penalty=penalty, allowance=allowance))
    scores = reward.score_texts(["p"] * 3, ["A grey owl  sings\tby it", "", "one"])
    assert scores.tolist() == pytest.approx(expected)
    assert scores.dtype == torch.float32


def test_toy_oracle_reward_against_hand_values():
    reward = ToyOracleReward(ToyOracleRewardConfig())
    responses = [
        "A grey horse jumps near the field.",  # every check: 1
        "The white dog jumps near the garden.",  # wrong animal: 0.25 + 0.75 · 2/3
        "The brown horse climbs in the barn.",  # wrong action, and horses do not climb: 0.25 + 0.75 · 1/3
        "horse horse jumps",  # not a sentence: 0
    ]
    assert reward.score_texts([HORSE] * 4, responses).tolist() == pytest.approx([1.0, 0.75, 0.5, 0.0])
    assert ToyOracleReward.check_prompts([("a", HORSE)]) is None
    assert "prompt 'b' is not one" in ToyOracleReward.check_prompts([("a", HORSE), ("b", "Write a poem.")])


def test_a_callable_reward_is_called_with_the_batch():
    reward = FunctionReward(FunctionRewardConfig(function="test_text_rewards:char_count"))
    assert reward.score_texts(["abcd", "ab"], ["a", ""]).tolist() == [3.0, 2.0]
    wrong = FunctionReward(FunctionRewardConfig(function="test_text_rewards:one_score"))
    with pytest.raises(ConfigError, match=r"reward.function='test_text_rewards:one_score' returned scores of "
                                          r"shape \(1,\) for 2 responses"):
        wrong.score_texts(["a", "b"], ["c", "d"])


def test_a_weighted_sum_against_hand_values(compose):
    """reward=sum with the RM swapped for the oracle: 0.5 · oracle − 0.1 per word beyond 5 (weight 1 by default)."""
    cfg = compose([*TINY, "reward=sum", "~reward.rewards.rm", "+reward@reward.rewards.oracle=toy-oracle",
                   "+reward.weights.oracle=0.5", "~reward.weights.rm", "~reward.weights.length",
                   "reward.rewards.length.penalty=0.1", "reward.rewards.length.allowance=5"])
    reward = build(cfg.reward)
    assert isinstance(reward, WeightedSum) and set(reward.terms) == {"oracle", "length"}
    responses = ["A grey horse jumps near the field.", "The white dog jumps near the garden.", "horse"]
    # 7 words: 0.5·1 − 0.2; 7 words: 0.5·0.75 − 0.2; 1 word: 0
    assert reward.score_texts([HORSE] * 3, responses).tolist() == pytest.approx([0.3, 0.175, 0.0])


def test_the_shipped_sum_is_the_rm_minus_a_length_penalty(compose):
    """Its RM term reads as the fidelity says, like reward=tiny: the same RM scores, minus 0.01 per word."""
    texts = ["A grey horse jumps near the field.", "The horse jumps."]
    total = build(compose([*TINY, "reward=sum"]).reward)
    rm = build(compose(TINY).reward)
    assert isinstance(total.terms["rm"], RewardModel) and total.terms["rm"].config == rm.config
    expected = rm.score_texts([HORSE] * 2, texts) - torch.tensor([0.07, 0.03])
    assert torch.allclose(total.score_texts([HORSE] * 2, texts), expected, atol=1e-6)


# --- checked before any model loads ----------------------------------------------------------------------


@pytest.mark.parametrize("guidance", ["entrgi", "soft", "aps", "entrgi-smc", "soft-smc", "aps-smc"])
def test_gradient_guidance_refuses_a_text_reward_naming_both_options(compose, guidance):
    with pytest.raises(ConfigError) as refused:
        check_job(compose([*TINY, f"guidance={guidance}", "reward=regex", "reward.keywords=[fox]"]))
    assert str(refused.value) == (f"guidance={guidance} needs a differentiable reward; reward=regex scores text "
                                  "only (use guidance=none or fk)")
    for fine in ("none", "fk"):
        check_job(compose([*TINY, f"guidance={fine}", "reward=regex", "reward.keywords=[fox]"]))
    check_job(compose([*TINY, f"guidance={guidance}"]))  # the RM


@pytest.mark.parametrize("overrides,message", [
    (["reward=regex"], r"reward.patterns and reward.keywords are both empty"),
    (["reward=regex", "reward.patterns=[{pattern: 'a(b', weight: 1}]"],
     r"reward.patterns\[0\].pattern='a\(b' is not a valid regular expression: missing \)"),
    (["reward=callable", "reward.function=no_such_module:score"],
     r"reward.function='no_such_module:score' cannot be imported \(ModuleNotFoundError"),
    (["reward=callable", "reward.function=test_text_rewards:nope"],
     r"reward.function='test_text_rewards:nope' cannot be imported \(AttributeError"),
    (["reward=callable", "reward.function=test_text_rewards:HORSE"], r"reward.function=.* is a str, not a function"),
    (["reward=callable"], r"reward.function is not set"),
    (["reward=sum", "+reward.weights.rn=2"], r"reward.weights.rn: no such term; the terms of reward.rewards are rm, "
                                             r"length"),
    (["reward=sum", "+reward@reward.rewards.words=regex"], r"reward.rewards.words.patterns and "),
])
def test_a_text_scorer_that_cannot_work_is_refused_naming_its_key(compose, overrides, message):
    with pytest.raises(ConfigError, match=message):
        check_job(compose([*TINY, "guidance=none", *overrides]))


def test_preflight_checks_only_the_models_there_are(compose):
    """A text scorer has no checkpoint and no context: only the dLLM's limits count; an RM term of a sum is
    checked under its own key; the oracle refuses prompts it does not know."""
    plain = [*TINY, "guidance=none"]
    head = " ".join(f"w{i}" for i in range(900))
    prompts = [Prompt("short", HORSE), Prompt("long", f"{head} {HORSE}")]
    with pytest.raises(ConfigError, match=r"prompt 'long' needs \d+ positions in the dLLM with .*\(limits: dLLM 512 "
                                          r"positions\)"):
        check_inputs(compose([*plain, "reward=toy-oracle"]), prompts)
    with pytest.raises(ConfigError, match=r"needs \d+ positions in the dLLM and \d+ in the RM reward.rewards.rm with "
                                          r".*\(limits: dLLM 512, RM reward.rewards.rm 1024 positions\)"):
        check_inputs(compose([*plain, "reward=sum"]), prompts)
    assert check_inputs(compose([*plain, "reward=regex", "reward.keywords=[fox]"]), prompts[:1]) == prompts[:1]
    with pytest.raises(ConfigError, match=r"reward=toy-oracle cannot score this benchmark: .*prompt 'x' is not one"):
        check_inputs(compose([*plain, "reward=toy-oracle", "evaluator=[]"]), [Prompt("x", "Write a poem.")])


# --- Best-of-N and fk with a text reward ------------------------------------------------------------------


def _lines(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_best_of_n_by_the_toy_oracle_picks_the_oracle_best_response(compose, tmp_path, one_thread):
    run_experiment(compose([*TINY, "guidance=none", "reward=toy-oracle", "benchmark.n_prompts=6"]), tmp_path)
    samples = {r["prompt_id"]: r for r in _lines(tmp_path / "samples.jsonl")}
    judged = {r["prompt_id"]: r for r in _lines(tmp_path / "judgements" / "oracle.jsonl")}
    assert samples.keys() == judged.keys() and len(samples) == 6
    for prompt_id, record in samples.items():
        scores = judged[prompt_id]["scores"]
        assert record["rewards"] == pytest.approx(scores)  # the reward is the judge
        assert scores[record["best_index"]] == max(scores)
        assert record["top1"] == pytest.approx(max(scores))
    assert any(max(r["scores"]) > min(r["scores"]) for r in judged.values())  # some prompt had a choice to make


def test_fk_scores_its_estimates_with_a_text_reward_as_the_final_text_is_scored(toy_model):
    fk = FKGuidance(FKConfig(), model=toy_model, reward=ToyOracleReward(ToyOracleRewardConfig()))
    assert fk.bridged is None
    fk.begin_batch([HORSE], 2, 8)
    rows = [toy_model.tokenizer("A grey horse jumps near the field.", add_special_tokens=False)["input_ids"],
            toy_model.tokenizer("The horse jumps.", add_special_tokens=False)["input_ids"]]
    width = max(len(row) for row in rows)
    tokens = torch.tensor([row + [toy_model.eos_token_id] * (width - len(row)) for row in rows])
    rewards = fk.score(tokens)
    expected = [oracle(HORSE, toy_model.decode(row)) for row in tokens.tolist()]
    assert rewards.dtype == torch.float32 and rewards.tolist() == pytest.approx(expected)
    assert expected[0] == 1.0


def test_fk_with_a_text_reward_runs_on_the_toy_world_and_logs_its_statistics(compose, tmp_path, one_thread):
    summary = run_experiment(compose([*TINY, "guidance=fk", "reward=toy-oracle", "benchmark.n_prompts=4",
                                      "evaluator=[]", "guidance.resample_every=2"]), tmp_path)
    steps = _lines(tmp_path / "steps.jsonl")
    scored = [row for row in steps if "ess_mean" in row]
    assert len(scored) == len(steps) - 1  # every step but the last (ess_threshold > 0)
    assert all(0.0 <= row["estimate_reward_mean"] <= 1.0 for row in scored)
    assert max(row["estimate_reward_mean"] for row in scored) > 0  # the oracle's score of the estimates
    assert sum(row["resampled_fraction"] for row in scored) > 0
    assert {"ess_mean", "resampled_fraction"} <= summary.keys()
    assert all(0.0 <= r["top1"] <= 1.0 and not math.isnan(r["avgk"]) for r in _lines(tmp_path / "samples.jsonl"))
