"""The trained toy world (issue 8): its language, its oracle, its shipped checkpoints, and that
reward guidance has a real target in it."""

from __future__ import annotations

import json
import math
import random

import pytest
import torch
from safetensors import safe_open

from entrgi.experiment import run_experiment
from entrgi.toy import train
from entrgi.toy.agreement import spearman
from entrgi.toy.grammar import (
    LEXICON,
    PREPOSITIONS,
    RESPONSE_FORMS,
    Request,
    Scene,
    benchmark_prompts,
    corpus,
    parse_prompt,
    parse_response,
    plausible,
    render_prompt,
    render_response,
    sample_request,
    sample_scene,
)
from entrgi.toy.oracle import oracle
from entrgi.toy.reward_data import evaluation_set, sample_responses
from entrgi.toy.world import PARTS, prompts_path, toy_world_path

pytestmark = pytest.mark.usefixtures("one_thread")


# ----------------------------------------------------------------------------- the oracle

ORACLE_CASES = [
    # (prompt, response, score): 0.25 for a well-formed sentence + 0.75 × the share of checks passed
    # (each requested attribute, and the animal being able to do what it does).
    ("Describe a red fox.", "The red fox sleeps in the garden.", 1.0),
    ("Describe a red fox.", "The blue fox sleeps.", 0.25 + 0.75 * 2 / 3),  # wrong colour
    ("Describe a red fox.", "A red fox swims by the lake.", 0.25 + 0.75 * 2 / 3),  # foxes do not swim
    ("Describe a red fox.", "The blue owl swims.", 0.25),  # nothing right, but a sentence
    ("Describe a red fox.", " The red fox sleeps.\n", 1.0),  # surrounding whitespace is not text
    ("Describe a red fox.", "The red fox sleeps in the garden", 0.0),  # truncated
    ("Describe a red fox.", "The red fox sleeps in the garden. It is red.", 0.0),  # two forms glued
    ("Describe a red fox.", "The red red fox sleeps.", 0.0),  # repeated word
    ("Describe a red fox.", "the red fox sleeps.", 0.0),  # not capitalised
    ("Describe a red fox.", "The red fox jumps in the.", 0.0),
    ("Describe a red fox.", "", 0.0),
    ("Describe a white frog that jumps in the forest.", "In the forest, the white horse swims.", 0.25 + 0.75 * 3 / 5),
    ("Describe a white frog that jumps in the forest.", "The frog jumps near the forest. It is white.", 1.0),
    ("Tell me about something brown that eats.", "A brown bear eats near the lake.", 1.0),
    ("Tell me about something brown that eats.", "The brown bear sings.", 0.25 + 0.75 * 1 / 3),
    ("Write a line about an owl that sleeps near the barn.", "The owl sleeps by the barn. It is grey.", 1.0),
    ("Write a line about an owl that sleeps near the barn.", "The grey owl sleeps.", 0.25 + 0.75 * 3 / 4),
    ("What does the grey cat do by the park?", "The grey cat climbs in the garden.", 0.25 + 0.75 * 3 / 4),
    ("Tell me about a horse that runs.", "In the field, the black horse runs.", 1.0),
]


@pytest.mark.parametrize("prompt,response,score", ORACLE_CASES)
def test_oracle_on_hand_written_cases(prompt, response, score):
    assert oracle(prompt, response) == pytest.approx(score, abs=1e-12)


@pytest.mark.parametrize("prompt", ["Tell me about a owl that sleeps.", "Describe a purple fox.", "Hello", ""])
def test_oracle_refuses_prompts_outside_the_toy_language(prompt):
    with pytest.raises(ValueError, match="not a toy-world prompt"):
        oracle(prompt, "The red fox sleeps.")


def test_parsers_invert_the_generators():
    rng = random.Random(0)
    for _ in range(2000):
        request = sample_request(rng)
        assert parse_prompt(render_prompt(request)) == request
        scene = sample_scene(request, rng)
        for form in RESPONSE_FORMS:
            for preposition in PREPOSITIONS:
                if scene.place is None and form == "front":
                    continue
                assert parse_response(render_response(scene, form, preposition)) == scene
    assert parse_prompt("Describe an owl that sleeps in the barn.".replace("an owl", "a grey owl")) == Request(
        "full", animal="owl", color="grey", action="sleeps", place="barn", preposition="in")
    assert parse_response("The owl hides. It is blue.") == Scene("owl", "blue", "hides", None)


def test_the_corpus_is_of_mixed_quality():
    """Good, mediocre and incoherent responses all occur, so a dLLM trained on it leaves room for guidance."""
    scores = [oracle(p, r) for p, r in corpus(4000, seed=5)]
    perfect = sum(s == 1.0 for s in scores) / len(scores)
    assert 0.05 < perfect < 0.5
    assert min(scores) == 0.25 and 0.5 < sum(scores) / len(scores) < 0.85


# ----------------------------------------------------------------------------- the shipped files


def test_benchmark_prompts_are_the_grammars_held_out_set_and_never_trained_on(tmp_path):
    """The shipped prompt file is what the training command writes, and no training pair uses its prompts."""
    assert train.write_prompts(tmp_path / "prompts.jsonl") == [p for _, p in benchmark_prompts(32, 0)]
    assert (tmp_path / "prompts.jsonl").read_text() == prompts_path().read_text()
    held_out = {json.loads(line)["prompt"] for line in prompts_path().read_text().splitlines()}
    assert len(held_out) == 32
    assert not held_out & {p for p, _ in corpus(train.CORPUS_SIZE, seed=0, exclude=held_out)}


def test_checkpoints_are_small_real_format_files(compose):
    """Dream-format dLLM and Qwen3 RM in bfloat16 safetensors, a few MB in all, behind experiment=tiny."""
    cfg = compose(["experiment=tiny"])
    assert cfg.model.path == str(toy_world_path("dllm")) and cfg.reward.path == str(toy_world_path("reward"))
    dllm = toy_world_path("dllm")
    dream = json.loads((dllm / "config.json").read_text())
    assert dream["model_type"] == "Dream" and isinstance(dream["mask_token_id"], int)
    assert (dllm / "vocab.json").is_file() and not (dllm / "tokenizer.json").exists()
    total = 0
    for part in PARTS:
        weights = toy_world_path(part) / "model.safetensors"
        total += weights.stat().st_size
        with safe_open(weights, "pt") as f:
            assert {f.get_slice(name).get_dtype() for name in f.keys()} == {"BF16"}
    assert total < 8e6


def test_every_word_is_one_token_of_both_models(toy_model, toy_reward):
    """A response is a handful of whole-word tokens in both vocabularies, so guidance can swap a word."""
    words = [w for words in LEXICON.values() for w in words]
    for tokenizer in (toy_model.tokenizer, toy_reward.tokenizer):
        assert all(len(tokenizer(" " + w, add_special_tokens=False)["input_ids"]) == 1 for w in words)
    longest = "The frog climbs near the garden. It is yellow."
    assert len(toy_model.tokenizer(longest, add_special_tokens=False)["input_ids"]) <= 12


# ----------------------------------------------------------------------------- the trained models


@pytest.fixture(scope="module")
def samples(toy_model):
    """The dLLM's unguided samples on the held-out prompts, as the tiny experiment draws them."""
    prompts = [json.loads(line)["prompt"] for line in prompts_path().read_text().splitlines()]
    return sample_responses(toy_model, prompts, seed=7, temperature=0.7, num_samples=4)


def test_dllm_samples_are_in_distribution(samples):
    """The dLLM's samples are sentences of the toy language, of mixed quality: room for guidance."""
    quality = [oracle(p, r) for p, r in samples]
    assert sum(q > 0 for q in quality) / len(quality) >= 0.9
    assert 0.1 < sum(q == 1.0 for q in quality) / len(quality) < 0.6


def _prompt_blind(response: str) -> float:
    """What a scorer that never reads the prompt can know: the grammar and whether the scene is coherent."""
    scene = parse_response(response)
    return 0.0 if scene is None else 0.5 + 0.5 * plausible(scene.animal, scene.action)


def test_rm_ranks_held_out_responses_like_the_oracle(samples, toy_reward):
    """Spearman's ρ between RM and oracle on held-out prompts (no training example uses them): the
    dLLM's samples, corpus-like responses, and a slot swap and a broken copy of each.

    Grammar alone separates broken from well-formed responses, so a prompt-blind scorer already
    reaches ρ ≈ 0.87 over all of them; among the well-formed ones it falls to ≈ 0.5, and only reading
    the request lifts it. Thresholds: ρ > 0.9 overall and > 0.8 among well-formed responses, and
    clearly above the prompt-blind scorer there (the shipped RM: ≈ 0.95 and ≈ 0.92).
    """
    examples = evaluation_set(samples, seed=7)
    truth = [q for _, _, q in examples]
    rm = toy_reward.score_texts([p for p, _, _ in examples], [r for _, r, _ in examples]).tolist()
    blind = [_prompt_blind(r) for _, r, _ in examples]
    well_formed = [i for i, q in enumerate(truth) if q > 0]
    assert len(well_formed) > 300

    def among_well_formed(scores):
        return spearman([scores[i] for i in well_formed], [truth[i] for i in well_formed])

    assert spearman(rm, truth) > 0.9
    assert among_well_formed(rm) > 0.8
    assert among_well_formed(rm) > among_well_formed(blind) + 0.2


# ----------------------------------------------------------------------------- guidance has a target

# One-sided paired t-test at the 1 % level with 31 degrees of freedom (32 prompts): t_0.99(31).
T_CRITICAL_31 = 2.453


@pytest.mark.slow
def test_entrgi_raises_top1_above_best_of_n(compose, tmp_path):
    """EntRGi (M = 3) beats Best-of-N at the same K = 4 on the 32 held-out prompts: the per-prompt
    differences of Top@1 (RM score, same seed) are positive on average, by a paired t-test at the 1 %
    level. The true score rises with it (the best responses are really better, not only RM-preferred)."""
    common = ["experiment=tiny", "logger=none", "seed=1", "sampler.batch_size=32"]
    top1, truth = {}, {}
    for method in ("none", "entrgi"):
        run_experiment(compose([*common, f"guidance={method}"]), tmp_path / method)
        records = [json.loads(line) for line in (tmp_path / method / "samples.jsonl").read_text().splitlines()]
        top1[method] = torch.tensor([r["top1"] for r in records], dtype=torch.float64)
        truth[method] = sum(oracle(r["prompt"], r["responses"][r["best_index"]]) for r in records) / len(records)
    difference = top1["entrgi"] - top1["none"]
    t = difference.mean() / (difference.std() / math.sqrt(len(difference)))
    assert len(difference) == 32
    assert t > T_CRITICAL_31, (float(difference.mean()), float(t))
    assert truth["entrgi"] > truth["none"]


@pytest.mark.slow
def test_training_command_writes_a_loadable_world(tmp_path):
    """`python -m entrgi.toy.train` end to end at a few steps: checkpoints that load, prompts, a report."""
    from entrgi.models import DiffusionLM, DiffusionLMConfig
    from entrgi.rewards import RewardModel, RewardModelConfig

    out = tmp_path / "weights"
    report = train.main(["--out", str(out), "--prompts", str(tmp_path / "prompts.jsonl"), "--corpus-pairs", "400",
                         "--warmup-steps", "2", "--dllm-steps", "2", "--reward-steps", "2", "--reward-prompts", "8",
                         "--threads", "1"])
    assert (tmp_path / "prompts.jsonl").read_text() == prompts_path().read_text()
    assert json.loads((out / "training.json").read_text()) == json.loads(json.dumps(report))
    assert {"heldout_spearman", "sample_well_formed", "wall_seconds"} <= report.keys()
    model = DiffusionLM(DiffusionLMConfig(path=str(out / PARTS["dllm"]), tokenizer_class="Qwen2Tokenizer",
            device="cpu"))
    reward = RewardModel(RewardModelConfig(path=str(out / PARTS["reward"]), device="cpu"))
    assert model.mask_token_id == model.tokenizer.convert_tokens_to_ids("<|mask|>")
    assert reward.score_texts(["Describe a red fox."], ["The red fox sleeps."]).shape == (1,)
