"""Judges (issue 9): LMUnit's scoring against hand computations, the tiny judge through the real
transformers backend, a held-out RM, where the scores land (run directory, summary, W&B, report)
and what is refused. CPU, offline."""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import CONF_MODULE
from hydra import compose as hydra_compose
from hydra import initialize_config_module
from hydra.errors import ConfigCompositionException
from test_loggers import _records, offline_wandb  # noqa: F401  (a fixture, used below)
from test_report import write_run

from entrgi.evaluate import evaluate, paths_to_override
from entrgi.evaluators import Evaluator, EvaluatorConfig, Judgement
from entrgi.evaluators.greedy import GreedyOutput, open_backend, vllm_available, vllm_output
from entrgi.evaluators.judging import NotJudgeable, apply_evaluators, judge_run
from entrgi.evaluators.lmunit import (
    UNIT_TESTS,
    LMUnitConfig,
    LMUnitJudge,
    LMUnitScoring,
    combine,
    digit_score,
    parse_score,
    score_position,
    unit_test_prompt,
)
from entrgi.evaluators.reward import HeldOutReward, HeldOutRewardConfig
from entrgi.experiment import run_experiment
from entrgi.loggers import wandb_run_id
from entrgi.report import main as report_main
from entrgi.reporting.runs import load_run, merge_shards
from entrgi.rewards import RewardModel, RewardModelConfig
from entrgi.validation import ConfigError, validate

DIGITS = [1, 2, 3, 4, 5]  # the strict scale
PAPER, STRICT = LMUnitScoring.paper, LMUnitScoring.strict
POSITIVE = "The happy robot is bright, warm and gentle."
NEGATIVE = "The old robot is strange, quiet and small."


def _answer(*steps: Sequence[tuple[str, float]]) -> GreedyOutput:
    """A judge's answer: the greedy token of each step is its first top entry."""
    return GreedyOutput(tokens=[step[0][0] for step in steps], top_logprobs=[list(step) for step in steps])


def _json_answer(probabilities: dict[str, float]) -> GreedyOutput:
    digits = sorted(probabilities.items(), key=lambda item: -item[1])
    return _answer([('{"', 0.0)], [("score", 0.0)], [('":', 0.0)], [(" ", 0.0)],
                   [(token, math.log(p)) for token, p in digits], [("}", 0.0)])


# --- the pure part: digits, parsing, the mean over unit tests ------------------------------------


def test_digit_score_is_the_probability_weighted_mean_of_the_score_digits():
    top = [("4", math.log(0.5)), (" 5", math.log(0.2)), ("3", math.log(0.1)), ("x", math.log(0.15)),
           ("7", math.log(0.05)), ("2", -math.inf)]
    # (4·0.5 + 5·0.2 + 3·0.1) / (0.5 + 0.2 + 0.1): other tokens and digits off the scale are ignored
    assert digit_score(top, DIGITS) == pytest.approx(3.3 / 0.8)
    assert digit_score([("1", 0.0)], DIGITS) == 1.0
    assert digit_score([("x", 0.0), ("9", -0.1)], DIGITS) is None  # no mass on 1–5
    assert digit_score([], DIGITS) is None


def test_the_score_is_read_at_the_number_after_the_score_key():
    answer = _answer([("1", 0.0)], [(' {"', 0.0)], [("score", 0.0)], [('":', 0.0)], [(" ", 0.0)],
                     [("2", math.log(0.75)), ("4", math.log(0.25))], [("}", 0.0)])
    assert score_position(answer.tokens) == 5  # not the "1" before the key
    for scoring in LMUnitScoring:
        assert parse_score(answer, scoring) == pytest.approx(0.75 * 2 + 0.25 * 4)
        assert parse_score(_answer([("I", 0.0)], [(" cannot", 0.0)]), scoring) is None  # no score key
        assert parse_score(_answer([('{"', 0.0)], [("score", 0.0)], [('":', 0.0)]), scoring) is None  # cut short
    assert unit_test_prompt("q", "r", "t") == "Query: q\n\nResponse: r\n\nUnit Test: t"


def test_paper_scoring_weights_the_digits_0_to_6_and_counts_failures_as_0():
    """The lmunit package's rule: (0·0.2 + 6·0.3 + 3·0.4) / (0.2 + 0.3 + 0.4) among the top tokens (7 and the
    non-digit ignored); strict weighs only 3 of them. A written score off the 0–6 scale is unparsable for
    paper (the package scores it 0), a unit test without digits too; paper averages those zeros in."""
    answer = _json_answer({"3": 0.4, "6": 0.3, "0": 0.2, "7": 0.05, "x": 0.05})
    assert parse_score(answer, PAPER) == pytest.approx((0 * 0.2 + 6 * 0.3 + 3 * 0.4) / 0.9)
    assert parse_score(answer, STRICT) == pytest.approx(3.0)
    off_scale = _json_answer({"9": 0.6, "4": 0.4})
    assert parse_score(off_scale, PAPER) is None and parse_score(off_scale, STRICT) == pytest.approx(4.0)
    assert PAPER.digits == (0, 1, 2, 3, 4, 5, 6) and STRICT.digits == (1, 2, 3, 4, 5)
    assert combine([2.0, 4.0, 3.0], PAPER) == combine([2.0, 4.0, 3.0], STRICT) == 3.0
    assert combine([2.0, None, 4.0, None], PAPER) == pytest.approx(6.0 / 4)  # (2 + 0 + 4 + 0) / 4
    assert combine([2.0, None, 3.0], STRICT) is None
    assert combine([], PAPER) is None and combine([], STRICT) is None


def test_vllm_outputs_become_the_same_greedy_output():
    """vLLM's CompletionOutput (token ids, per step {id: Logprob}) as the transformers backend gives it."""
    tokenizer = SimpleNamespace(decode=lambda ids: {7: "4", 8: "}", 9: "5"}[ids[0]])
    step = {7: SimpleNamespace(logprob=-0.1, decoded_token="4"), 9: SimpleNamespace(logprob=-2.4, decoded_token=None)}
    last = {8: SimpleNamespace(logprob=0.0, decoded_token="}")}
    completion = SimpleNamespace(token_ids=[7, 8], logprobs=[step, last])
    out = vllm_output(completion, tokenizer)
    assert out.tokens == ["4", "}"] and out.text == "4}"
    assert out.top_logprobs == [[("4", -0.1), ("5", -2.4)], [("}", 0.0)]]
    if not vllm_available():
        with pytest.raises(ConfigError, match="vllm"):
            open_backend("vllm", Path("."), max_new_tokens=1, top_logprobs=1)


# --- LMUnit: all five unit tests, failures counted --------------------------------------------------


class ScriptedBackend:
    """Answers like LMUnit; fails on the 'correct and reliable' test of any response containing FAIL."""

    def __init__(self):
        self.conversations: list[list[dict[str, str]]] = []
        self.closed = False

    def generate(self, conversations):
        self.conversations += conversations
        outputs = []
        for (message,) in conversations:
            if "FAIL" in message["content"] and "correct and reliable" in message["content"]:
                outputs.append(_answer([("I", 0.0)], [(" cannot", 0.0)]))
            else:
                outputs.append(_json_answer({"4": 0.5, "2": 0.5}))
        return outputs

    def close(self):
        self.closed = True


@pytest.fixture
def scripted_backend(monkeypatch, tiny_judges):
    backend = ScriptedBackend()
    monkeypatch.setattr("entrgi.evaluators.lmunit.open_backend", lambda name, folder, **settings: backend)
    return backend


def test_every_response_gets_all_five_unit_tests(scripted_backend, tiny_judges):
    judge = LMUnitJudge(LMUnitConfig(path=str(tiny_judges["judge"]), scoring=STRICT))
    judgements = judge.score(["q1", "q2"], ["fine", "FAIL here"])
    assert len(scripted_backend.conversations) == 2 * 5
    sent = [c[0]["content"] for c in scripted_backend.conversations]
    assert sent[:5] == [f"Query: q1\n\nResponse: fine\n\nUnit Test: {test}" for test in UNIT_TESTS]
    assert all(c[0]["role"] == "user" and len(c) == 1 for c in scripted_backend.conversations)
    assert judgements[0].score == pytest.approx(3.0) and judgements[0].details == {"unit_tests": [3.0] * 5}
    assert judgements[1].score is None  # strict: one unparsable unit test fails the response, never a 0
    assert judgements[1].details["unit_tests"] == [3.0, None, 3.0, 3.0, 3.0]
    assert judgements[1].details["unparsed"] == ["I cannot"]
    judge.close()
    assert scripted_backend.closed


@pytest.mark.parametrize("scoring", ["paper", "strict"])
def test_failures_are_zeros_for_paper_and_left_out_for_strict(scripted_backend, tiny_judges, tmp_path, scoring):
    """Per response 5 unit tests at 3.0 each, or 4 at 3.0 and one unparsable: paper (the default) scores
    that (4·3 + 0) / 5 = 2.4 and counts no failure; strict leaves it out of the means and counts it."""
    run = _finished_run(tmp_path / "run", [["fine", "FAIL"], ["FAIL", "ok"], ["good", "also"]], best=[0, 0, 1])
    judge = LMUnitJudge(LMUnitConfig(path=str(tiny_judges["judge"]), responses="all",
                                     **({} if scoring == "paper" else {"scoring": LMUnitScoring(scoring)})))
    lines = judge_run(run, judge)
    summary = json.loads((run / "summary.json").read_text())
    if scoring == "paper":
        assert [line["scores"] for line in lines] == [[3.0, 2.4], [2.4, 3.0], [3.0, 3.0]]
        assert [line["top1"] for line in lines] == [3.0, 2.4, 3.0]
        assert summary["lmunit_top1_mean"] == pytest.approx(8.4 / 3) and summary["lmunit_top1_n"] == 3
        assert summary["lmunit_avgk_mean"] == pytest.approx((2.7 + 2.7 + 3.0) / 3) and summary["lmunit_avgk_n"] == 3
        assert (summary["lmunit_judged"], summary["lmunit_failures"]) == (6, 0)
    else:
        assert [line["scores"] for line in lines] == [[3.0, None], [None, 3.0], [3.0, 3.0]]
        assert [line["top1"] for line in lines] == [3.0, None, 3.0]
        assert summary["lmunit_top1_mean"] == 3.0 and summary["lmunit_top1_n"] == 2
        assert summary["lmunit_avgk_mean"] == 3.0 and summary["lmunit_avgk_n"] == 3
        assert (summary["lmunit_judged"], summary["lmunit_failures"]) == (6, 2)


# --- the tiny judge through the real transformers backend -------------------------------------------


def _hand_scores(folder: Path, query: str, response: str, digits: Sequence[int]) -> list[float]:
    """Per unit test, the judge's distribution over `digits` after `{"score": ` from an independent forward pass."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder)
    ids_of_digits = [tokenizer.convert_tokens_to_ids(str(d)) for d in digits]
    scores = []
    for test in UNIT_TESTS:
        text = tokenizer.apply_chat_template([{"role": "user", "content": unit_test_prompt(query, response, test)}],
                                             tokenize=False, add_generation_prompt=True) + '{"score": '
        ids = tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids
        with torch.no_grad():
            probabilities = model(ids).logits[0, -1].double().softmax(-1)
        all_digits = {tokenizer.convert_tokens_to_ids(str(d)) for d in range(7)}
        assert set(probabilities.topk(7).indices.tolist()) == all_digits  # so all are among the top-20 log-probs
        p = probabilities[ids_of_digits].tolist()
        scores.append(sum(d * q for d, q in zip(digits, p, strict=True)) / sum(p))
    return scores


@pytest.mark.parametrize("scoring", list(LMUnitScoring))
def test_tiny_judge_scores_equal_a_hand_computation(tiny_judges, scoring):
    settings = {"path": str(tiny_judges["judge"]), "backend": "transformers", "device": "cpu", "scoring": scoring,
                "max_new_tokens": 10, "top_logprobs": 20}
    judge = LMUnitJudge(LMUnitConfig(batch_size=3, **settings))
    queries = ["Describe the cat.", "Describe the cat.", "Why?"]
    responses = [POSITIVE, NEGATIVE, "It is."]
    judgements = judge.score(queries, responses)
    one_by_one = LMUnitJudge(LMUnitConfig(batch_size=1, **settings)).score(queries, responses)
    outputs = judge.backend.generate([[{"role": "user", "content": unit_test_prompt("Why?", "It is.", UNIT_TESTS[0])}]])
    assert outputs[0].tokens == ['{"', "score", '":', " ", outputs[0].tokens[4], "}", "<|im_end|>"]
    for (query, response), judgement, alone in zip(zip(queries, responses, strict=True), judgements, one_by_one,
                                                   strict=True):
        expected = _hand_scores(tiny_judges["judge"], query, response, scoring.digits)
        assert judgement.details["unit_tests"] == pytest.approx(expected, abs=1e-4)
        assert judgement.score == pytest.approx(sum(expected) / 5, abs=1e-4)
        assert alone.score == pytest.approx(judgement.score, abs=1e-4)  # left padding changes nothing
    assert judgements[0].score > 3.5 > judgements[1].score + 1  # the tiny judge follows its sentiment words
    cut = LMUnitJudge(LMUnitConfig(**{**settings, "max_new_tokens": 3}))
    # `{"score":` and no digit: a failure for strict, five zeros for paper
    assert [j.score for j in cut.score(queries, responses)] == [None if scoring is STRICT else 0.0] * 3


# --- a held-out RM on a finished run; reruns replace only their own fields -------------------------


def _finished_run(path: Path, responses: list[list[str]], best: list[int], first: int = 0, **settings) -> Path:
    """A finished run directory (entrgi.run_directory's layout) holding the given responses (prompts p<first>, …)."""
    ids = tuple(f"p{first + i}" for i in range(len(responses)))
    write_run(path, prompt_ids=ids, **settings)
    with open(path / "samples.jsonl", "w") as f:
        for i, (texts, b) in enumerate(zip(responses, best, strict=True)):
            rewards = [1.0 if k == b else 0.0 for k in range(len(texts))]
            f.write(json.dumps({"prompt_id": ids[i], "prompt": f"Tell me about thing {i}.", "responses": texts,
                                "rewards": rewards, "best_index": b, "top1": 1.0,
                                "avgk": sum(rewards) / len(rewards)}) + "\n")
    return path


class NumberJudge(Evaluator):
    """Reads the score from the response itself ('fail': a failure): judge values chosen by the test."""

    def score(self, prompts, responses):
        return [Judgement(None if r == "fail" else float(r)) for r in responses]


def test_heldout_reward_scores_a_finished_run_without_touching_its_samples(tiny_judges, tmp_path):
    run = _finished_run(tmp_path / "run", [[POSITIVE, NEGATIVE], ["Hello there.", "Why?"]], best=[1, 0])
    samples, config = (run / "samples.jsonl").read_bytes(), (run / "config.yaml").read_bytes()
    summary_before = json.loads((run / "summary.json").read_text())
    heldout = RewardModel(RewardModelConfig(path=str(tiny_judges["reward"]), device="cpu"))
    judge = HeldOutRewardConfig(name="rm-held", responses="all",
                                model=RewardModelConfig(path=str(tiny_judges["reward"])))
    judge_run(run, HeldOutReward(judge, reward=heldout))
    lines = [json.loads(line) for line in (run / "judgements" / "rm-held.jsonl").read_text().splitlines()]
    expected = heldout.score_texts(["Tell me about thing 0."] * 2 + ["Tell me about thing 1."] * 2,
                                   [POSITIVE, NEGATIVE, "Hello there.", "Why?"]).tolist()
    assert [line["scores"] for line in lines] == [pytest.approx(expected[:2]), pytest.approx(expected[2:])]
    assert [line["top1"] for line in lines] == pytest.approx([expected[1], expected[2]])
    assert [line["avgk"] for line in lines] == pytest.approx([sum(expected[:2]) / 2, sum(expected[2:]) / 2])
    summary = json.loads((run / "summary.json").read_text())
    assert summary["rm-held_top1_mean"] == pytest.approx((expected[1] + expected[2]) / 2)
    assert summary["rm-held_avgk_mean"] == pytest.approx(sum(expected) / 4)
    assert {k: summary[k] for k in summary_before} == summary_before  # the run's own numbers are kept
    assert (run / "samples.jsonl").read_bytes() == samples and (run / "config.yaml").read_bytes() == config


def test_a_rerun_replaces_only_its_own_fields(tmp_path):
    run = _finished_run(tmp_path / "run", [["1", "2"], ["fail", "4"]], best=[1, 0])
    judge_run(run, NumberJudge(EvaluatorConfig(name="numbers", responses="all")))
    judge_run(run, NumberJudge(EvaluatorConfig(name="other")), {"note": "kept"})
    other_file = (run / "judgements" / "other.jsonl").read_bytes()
    before = json.loads((run / "summary.json").read_text())
    assert before["numbers_avgk_mean"] == pytest.approx((1.5 + 4) / 2) and before["numbers_failures"] == 1
    judge_run(run, NumberJudge(EvaluatorConfig(name="numbers")))  # again, now on the Top@1 response only
    after = json.loads((run / "summary.json").read_text())
    assert (run / "judgements" / "other.jsonl").read_bytes() == other_file
    assert {k: v for k, v in after.items() if not k.startswith("numbers")} == {
        k: v for k, v in before.items() if not k.startswith("numbers")} | {"evaluators": after["evaluators"]}
    assert after["evaluators"]["other"] == {"responses": "top1", "note": "kept"}
    assert "numbers_avgk_mean" not in after and after["numbers_top1_mean"] == 2.0
    assert (after["numbers_judged"], after["numbers_failures"], after["numbers_top1_n"]) == (2, 1, 1)


# --- configs, errors ---------------------------------------------------------------------------------


def _evaluate_config(overrides: list[str]):
    with initialize_config_module(config_module=CONF_MODULE, version_base="1.3"):
        return hydra_compose(config_name="evaluate", overrides=overrides)


def test_evaluator_options_compose_validate_and_name_their_fields(compose):
    cfg = compose(["evaluator=[lmunit,lmunit-llama,reward,tiny-judge,tiny-reward]"])
    validate(cfg)
    names = {option: node.name for option, node in cfg.evaluator.items()}
    assert names == {"lmunit": "lmunit", "lmunit-llama": "lmunit-llama", "reward": "rm-Skywork-Reward-V2-Qwen3-8B",
                     "tiny-judge": "tiny-judge", "tiny-reward": "rm-tiny-heldout"}
    assert cfg.evaluator.lmunit.path == "ContextualAI/LMUnit-qwen2.5-72b"
    assert cfg.evaluator["lmunit-llama"].path == "ContextualAI/LMUnit-llama3.1-70b"
    assert list(cfg.evaluator.lmunit.unit_tests) == list(UNIT_TESTS) and cfg.evaluator.lmunit.responses == "top1"
    assert cfg.evaluator.lmunit.trust_remote_code is False and cfg.evaluator.reward.model.path.endswith("Qwen3-8B")
    assert compose([]).evaluator == {}
    other = compose(["evaluator=[reward]", "reward@evaluator.reward.model=skywork-4b"])
    assert other.evaluator.reward.name == "rm-Skywork-Reward-V2-Qwen3-4B"
    with pytest.raises(ConfigError, match=r"^evaluator\.lmunit\.top_logprobs="):
        validate(compose(["evaluator=[lmunit]", "evaluator.lmunit.top_logprobs=0"]))
    for override in ("evaluator.lmunit.responses=best", "evaluator.lmunit.backend=tgi"):  # StrEnum fields
        with pytest.raises(ConfigCompositionException) as info:
            compose(["evaluator=[lmunit]", override])
        assert info.value.__cause__.full_key == override.split("=")[0]
    assert _evaluate_config(["hydra/launcher=slurm-judge"]).evaluator == {}  # the judging launcher composes


def test_bad_input_is_refused_before_any_judge_loads(tmp_path, tiny_judges):
    run = _finished_run(tmp_path / "run", [["1", "2"]], best=[0])
    unfinished = write_run(tmp_path / "unfinished", finished=False)
    with pytest.raises(NotJudgeable, match="is not a finished run"):
        evaluate(_evaluate_config([f"runs=['{unfinished}']", "evaluator=[tiny-judge]"]))
    with pytest.raises(ConfigError, match="evaluator is empty"):
        evaluate(_evaluate_config([f"runs=['{run}']"]))
    with pytest.raises(ConfigError, match="no runs to judge"):
        evaluate(_evaluate_config(["evaluator=[tiny-judge]"]))
    with pytest.raises(NotJudgeable, match="no such file"):
        evaluate(_evaluate_config([f"runs=['{tmp_path / 'missing'}']", "evaluator=[tiny-judge]"]))
    cfg = _evaluate_config([f"runs=['{run}']", "evaluator=[tiny-judge,tiny-reward]", "evaluator.tiny-reward.name=x",
                            "evaluator.tiny-judge.name=x"])
    with pytest.raises(ConfigError, match="used by two evaluators"):
        evaluate(cfg)
    from entrgi.weights import WeightsUnavailable

    with pytest.raises(WeightsUnavailable, match="evaluator.lmunit.path='ContextualAI/LMUnit-qwen2.5-72b'"):
        evaluate(_evaluate_config([f"runs=['{run}']", "evaluator=[lmunit]"]))  # offline: fails in seconds
    with pytest.raises(ConfigError, match="evaluator name"):
        NumberJudge(EvaluatorConfig(name="../x"))
    assert not (run / "judgements").exists()


def test_paths_become_a_runs_override(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ("experiment=tiny,seed=1", "experiment=tiny,seed=2"):
        (tmp_path / "sweep" / name).mkdir(parents=True)
    a, b = "sweep/experiment=tiny,seed=1", "sweep/experiment=tiny,seed=2"
    assert paths_to_override([a, "evaluator=[lmunit]", b]) == ["evaluator=[lmunit]", f"runs=['{a}','{b}']"]
    assert paths_to_override(["-m", a, b, "x=1"]) == ["-m", "x=1", f"runs=['{a}'],['{b}']"]
    assert paths_to_override(["sweep/*seed=2", "--cfg", "job"]) == ["--cfg", "job", "runs=['sweep/*seed=2']"]
    assert paths_to_override(["evaluator=[lmunit]", "runs=[x]"]) == ["evaluator=[lmunit]", "runs=[x]"]


# --- after generation, on a finished run, in W&B, from the command line ------------------------------

SMALL = ["experiment=tiny", "model.path=${entrgi.random_world:dllm}", "reward.path=${entrgi.random_world:reward}",
         "guidance=none", "schedule.steps=4", "sampler.max_new_tokens=6", "benchmark.n_prompts=2",
         "sampler.num_samples=2", "sampler.batch_size=2"]


@pytest.mark.slow
def test_judges_after_generation_in_the_run_and_in_wandb(compose, offline_wandb, tiny_judges):  # noqa: F811
    out = offline_wandb / "job"
    cfg = compose(SMALL + ["logger=wandb", "logger.mode=offline", "evaluator=[tiny-reward]",
                           "evaluator.tiny-reward.responses=all"])
    summary = run_experiment(cfg, out)
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    lines = [json.loads(line) for line in (out / "judgements" / "rm-tiny-heldout.jsonl").read_text().splitlines()]
    heldout = RewardModel(RewardModelConfig(path=str(tiny_judges["reward"]), device="cpu"))
    for sample, line in zip(samples, lines, strict=True):
        assert line["prompt_id"] == sample["prompt_id"] and line["indices"] == [0, 1]
        expected = heldout.score_texts([sample["prompt"]] * 2, sample["responses"]).tolist()
        assert line["scores"] == pytest.approx(expected, abs=1e-5)
    assert summary["rm-tiny-heldout_top1_mean"] == pytest.approx(sum(line["top1"] for line in lines) / 2)
    assert summary["rm-tiny-heldout_avgk_n"] == 2 and summary == json.loads((out / "summary.json").read_text())

    records = _records(out)
    final: dict = {}
    for r in records:
        if r["type"] == "summary":
            final.update(r["summary"]["update"])
    assert final["rm-tiny-heldout_top1_mean"] == pytest.approx(summary["rm-tiny-heldout_top1_mean"])
    media = next((out / "wandb").glob("offline-run-*")) / "files" / "media" / "table"
    (table,) = media.glob("samples_*.table.json")
    content = json.loads(table.read_text())
    assert content["columns"][-1] == "rm-tiny-heldout"
    assert [row[-1] for row in content["data"]] == pytest.approx([line["top1"] for line in lines])
    (judged,) = media.rglob("rm-tiny-heldout_*.table.json")
    assert [row[3] for row in json.loads(judged.read_text())["data"]] == pytest.approx([line["top1"] for line in lines])

    # Rerunning the job with one judge more judges the finished run, regenerating nothing.
    samples_bytes, first = (out / "samples.jsonl").read_bytes(), (out / "judgements" / "rm-tiny-heldout.jsonl")
    first_bytes = first.read_bytes()
    again = run_experiment(compose(SMALL + ["logger=none", "evaluator=[tiny-reward,tiny-judge]"]), out)
    assert (out / "samples.jsonl").read_bytes() == samples_bytes and first.read_bytes() == first_bytes
    assert again["tiny-judge_judged"] == 2 and again["rm-tiny-heldout_avgk_n"] == 2

    # entrgi.evaluate with logger=wandb adds to the job's own W&B run.
    run_id = wandb_run_id(out)
    evaluate(_evaluate_config([f"runs=['{out}']", "evaluator=[tiny-judge]", "logger=wandb",
                               "logger.mode=offline"]))
    runs = sorted((out / "wandb").glob("offline-run-*"))
    assert run_id and len(runs) == 2 and all(run_id in path.name for path in runs)  # one W&B run, resumed
    shutil.move(str(runs[0]), str(offline_wandb / "first-run"))  # leave the judging session alone for _records
    added: dict = {}
    for r in _records(out):
        if r["type"] == "summary":
            added.update(r["summary"]["update"])
    assert added["tiny-judge_top1_mean"] == pytest.approx(
        json.loads((out / "summary.json").read_text())["tiny-judge_top1_mean"])


@pytest.mark.slow
def test_cli_judges_a_run_and_refuses_an_unfinished_one(tmp_path, tiny_judges):
    run = _finished_run(tmp_path / "outputs" / "experiment=tiny,seed=1", [[POSITIVE, "b"], [NEGATIVE, "d"]],
                        best=[0, 0])
    samples = (run / "samples.jsonl").read_bytes()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
    command = [sys.executable, "-m", "entrgi.evaluate", "outputs/experiment=tiny,seed=1",
               "evaluator=[tiny-judge,tiny-reward]"]
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "tiny-judge " in result.stdout and "rm-tiny-heldout " in result.stdout and "0 of 2 failed" in result.stdout
    summary = json.loads((run / "summary.json").read_text())
    assert summary["tiny-judge_top1_n"] == 2 and summary["rm-tiny-heldout_top1_n"] == 2
    assert (run / "samples.jsonl").read_bytes() == samples
    assert sorted(p.name for p in tmp_path.iterdir()) == ["outputs"]  # nothing written beside the runs
    write_run(tmp_path / "outputs" / "unfinished", finished=False)
    result = subprocess.run([*command[:3], "outputs", *command[4:]], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=120, check=False)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "unfinished" in result.stderr and "not a finished run" in result.stderr


# --- the report --------------------------------------------------------------------------------------


def test_report_shows_judge_columns_and_figures(tmp_path, capsys):
    """Judge means ± SEM over seeds, exact; failures counted; the judge vs M figure."""
    for m in (1, 3):
        for seed in (1, 2):
            p0, p1 = str(m + seed), str(m + 2 * seed)
            if (m, seed) == (3, 2):
                p1 = "fail"
            run = _finished_run(tmp_path / "sweep" / f"M{m}-s{seed}", [[p0, "0"], [p1, "0"]], best=[0, 0],
                                method="entrgi", M=m, seed=seed)
            judge_run(run, NumberJudge(EvaluatorConfig(name="numbers")))
    assert report_main([str(tmp_path / "sweep"), "--out", str(tmp_path / "out")]) == 0
    with open(tmp_path / "out" / "table.csv") as f:
        rows = {row["M"]: row for row in csv.DictReader(f)}
    assert float(rows["1"]["numbers_top1_mean"]) == pytest.approx(3.25)  # (2.5 + 4.0) / 2
    assert float(rows["1"]["numbers_top1_sem"]) == pytest.approx(0.75)
    assert float(rows["3"]["numbers_top1_mean"]) == pytest.approx(4.75)  # (4.5 + 5.0) / 2: the failure left out
    assert float(rows["3"]["numbers_top1_sem"]) == pytest.approx(0.25)
    assert (rows["3"]["numbers_failures"], rows["3"]["numbers_judged"]) == ("1", "4")
    assert rows["1"]["numbers_failures"] == "0"
    markdown = (tmp_path / "out" / "table.md").read_text()
    assert "| Top@1 | Avg@2 | numbers | numbers failed | Seeds | Prompts |" in markdown
    assert "| **4.7500 ± 0.2500** | 1/4 |" in markdown and "| 3.2500 ± 0.7500 | 0/4 |" in markdown
    printed = capsys.readouterr().out
    assert "judges (numbers)" in printed and "4.7500 ± 0.2500 *" in printed
    figures = {p.name for p in (tmp_path / "out" / "figures").iterdir()}
    assert {"top1_vs_M_bench.png", "numbers_vs_M_bench.png"} <= figures


def test_report_merges_judged_shards(tmp_path):
    slice_of_3 = {"n_prompts": 3}
    a = _finished_run(tmp_path / "s0", [["1", "0"], ["2", "0"]], best=[0, 0], extra_benchmark={"part": 0, **slice_of_3})
    b = _finished_run(tmp_path / "s1", [["6", "0"]], best=[0], first=2, extra_benchmark={"part": 1, **slice_of_3})
    for run in (a, b):
        judge_run(run, NumberJudge(EvaluatorConfig(name="numbers")))
    judge_run(a, NumberJudge(EvaluatorConfig(name="only-a")))
    (merged,), _ = merge_shards([load_run(a), load_run(b)], shard_keys=("benchmark.part",))
    assert merged.judge_scores["numbers"]["top1_mean"] == pytest.approx(3.0)  # (1 + 2 + 6) / 3 prompts
    assert "only-a" not in merged.judge_scores and any("only-a" in note for note in merged.notes)


def test_apply_evaluators_skips_judged_runs_when_asked(tmp_path, monkeypatch):
    run = _finished_run(tmp_path / "run", [["1", "2"]], best=[0])
    judge_run(run, NumberJudge(EvaluatorConfig(name="numbers")))
    monkeypatch.setattr("entrgi.evaluators.judging.build", lambda config: pytest.fail("loaded a judge"))
    cfg = _evaluate_config(["evaluator=[tiny-reward]", "evaluator.tiny-reward.name=numbers"])
    assert apply_evaluators(cfg.evaluator, [run], skip_judged=True) == {run: {}}
