"""Compute accounting (issue 16 item 5): passes and tokens against hand counts, FLOPs, per-prompt shares."""

from __future__ import annotations

import json

import pytest
from conftest import guidance_config

from entrgi.compute import (
    ComputeLedger,
    ModelSizes,
    job_totals,
    merged_totals,
    non_embedding_parameters,
    prompt_share,
    reward_parameters,
)
from entrgi.experiment import run_experiment
from entrgi.guidance import FKConfig, FKGuidance, NoGuidance, RewardGradientGuidance, SMCConfig, SMCGuidance
from entrgi.sampler import DiffusionSampler, SamplerConfig
from entrgi.schedule import EntropySchedule, ScheduleConfig

PROMPTS, IDS = ["Describe the cat.", "Why is the old robot happy?"], ["a", "b"]
B, K, T, L, M = 2, 2, 4, 6, 2
N = B * K


def _guidance(kind: str, model, reward):
    if kind == "none":
        return NoGuidance()
    if kind.startswith("entrgi"):
        options = {"every": 2} if kind == "entrgi-every2" else {"keep": "best"} if kind == "entrgi-best" else {}
        return RewardGradientGuidance(guidance_config(rule="entrgi", M=M, **options), model=model, reward=reward)
    if kind == "fk-ess":
        return FKGuidance(FKConfig(ess_threshold=0.5), model=model, reward=reward)
    if kind == "fk-every2":
        return FKGuidance(FKConfig(ess_threshold=0.0, resample_every=2), model=model, reward=reward)
    return SMCGuidance(SMCConfig(proposal=guidance_config(rule="entrgi", M=M), steering=FKConfig(ess_threshold=0.5)),
                       model=model, reward=reward)


# RM passes over the B·K rows in one batch of T steps: (forward, backward) calls, and prefix caches built.
HAND = {
    "none": (0, 0, 0),
    "entrgi": (T * M, T * M, 1),  # M forward + backward per guided step
    "entrgi-every2": (2 * M, 2 * M, 1),  # guided steps 0 and 2
    "entrgi-best": (T * (M + 1), T * M, 1),  # keep=best scores the last iterate once more, without gradient
    "fk-ess": (T - 1, 0, 1),  # scored after every step but the last
    "fk-every2": (1, 0, 1),  # scored after step 1 only (step 3 is the last)
    "smc": (T * M + T - 1, T * M, 2),  # the proposal's and the steering's, each with its own prefix cache
}


@pytest.mark.parametrize("kind", list(HAND))
def test_batch_counts_equal_hand_counts(random_model, random_reward, kind):
    sampler = DiffusionSampler(SamplerConfig(num_samples=K, max_new_tokens=L), model=random_model,
                               schedule=EntropySchedule(ScheduleConfig(steps=T)),
                               guidance=_guidance(kind, random_model, random_reward))
    compute = sampler.generate(PROMPTS, IDS, seed=0).compute
    width = max(len(random_model.encode_prompt(p)) for p in PROMPTS) + L  # the canvas: left-padded prompts + L
    parts = [random_reward.template_parts(p) for p in PROMPTS]
    prefix, suffix = max(len(pre) for pre, _ in parts), max(len(suf) for _, suf in parts)
    forwards, backwards, caches = HAND[kind]
    rm_width = L + suffix  # with the prefix cache an RM pass computes the response and the suffix only
    assert compute == ComputeLedger(
        dllm_forward_passes=T * N, dllm_forward_tokens=T * N * width,
        rm_forward_passes=forwards * N + caches * B, rm_forward_tokens=forwards * N * rm_width + caches * B * prefix,
        rm_backward_passes=backwards * N, rm_backward_tokens=backwards * N * rm_width,
    )


def test_without_the_prefix_cache_every_rm_pass_computes_the_prefix(random_model, random_reward):
    random_reward.config.prefix_cache = False
    try:
        sampler = DiffusionSampler(SamplerConfig(num_samples=K, max_new_tokens=L), model=random_model,
                                   schedule=EntropySchedule(ScheduleConfig(steps=T)),
                                   guidance=_guidance("fk-every2", random_model, random_reward))
        compute = sampler.generate(PROMPTS, IDS, seed=0).compute
    finally:
        random_reward.config.prefix_cache = True
    parts = [random_reward.template_parts(p) for p in PROMPTS]
    width = max(len(pre) for pre, _ in parts) + L + max(len(suf) for _, suf in parts)
    assert (compute.rm_forward_passes, compute.rm_forward_tokens) == (N, N * width)


def test_non_embedding_parameters(random_model, random_reward):
    """All parameters but the token-embedding tables (the dLLM's input table and LM head; the RM's input table)."""
    dllm = random_model.network
    embeddings = {id(dllm.get_input_embeddings().weight), id(dllm.get_output_embeddings().weight)}
    expected = sum(p.numel() for p in dllm.parameters() if id(p) not in embeddings)
    assert non_embedding_parameters(dllm) == expected > 0
    rm = random_reward.network
    total = sum(p.numel() for p in rm.parameters())
    assert non_embedding_parameters(rm) == total - rm.get_input_embeddings().weight.numel()


def test_flops_shares_and_totals():
    ledger = ComputeLedger(dllm_forward_passes=8, dllm_forward_tokens=80, rm_forward_passes=6, rm_forward_tokens=30,
                           rm_backward_passes=4, rm_backward_tokens=20)
    sizes = ModelSizes(dllm_parameters=1000, rm_parameters=100)
    assert sizes.flops(ledger) == 2 * 1000 * 80 + 2 * 100 * 30 + 4 * 100 * 20
    share = prompt_share(ledger, sizes, wall_seconds=3.0, prompts=3)
    assert share["dllm_forward_tokens"] == pytest.approx(80 / 3) and share["wall_seconds"] == 1.0
    assert share["flops"] == pytest.approx(sizes.flops(ledger) / 3)
    totals = job_totals([{"compute": share}] * 3, sizes)
    assert totals["dllm_forward_tokens"] == 80 and isinstance(totals["dllm_forward_tokens"], int)
    assert totals["flops"] == sizes.flops(ledger) and totals["wall_seconds"] == pytest.approx(3.0)
    assert (totals["dllm_parameters"], totals["rm_parameters"]) == (1000, 100)
    assert job_totals([{"compute": share}, {}], sizes) is None  # a record from before the accounting
    merged = merged_totals([totals, totals])
    assert merged["flops"] == 2 * totals["flops"] and merged["dllm_parameters"] == 1000
    assert merged_totals([totals, None]) is None


def test_run_records_and_summary(compose, tmp_path, toy_model, toy_reward):
    """A tiny Best-of-N job (2 prompts in one batch, K=2, T=4): each prompt's share and the summary's sums."""
    cfg = compose(["experiment=tiny", "guidance=none", "logger=none", "evaluator=[]", f"schedule.steps={T}",
                   f"sampler.max_new_tokens={L}", "benchmark.n_prompts=2", f"sampler.num_samples={K}",
                   "sampler.batch_size=2"])
    summary = run_experiment(cfg, tmp_path)
    records = [json.loads(line) for line in (tmp_path / "samples.jsonl").read_text().splitlines()]
    width = max(len(toy_model.encode_prompt(r["prompt"])) for r in records) + L
    # The final scoring: one text batch of the B·K conversations (reward.batch_size 8), padded to the longest.
    scored = max(len(toy_reward.splice_ids(r["prompt"], text)) for r in records for text in r["responses"])
    sizes = ModelSizes(non_embedding_parameters(toy_model.network), non_embedding_parameters(toy_reward.network))
    for record in records:
        share = record["compute"]
        assert share["dllm_forward_passes"] == T * K and share["dllm_forward_tokens"] == T * K * width
        assert share["rm_forward_passes"] == K and share["rm_forward_tokens"] == K * scored
        assert share["rm_backward_passes"] == share["rm_backward_tokens"] == 0
        assert share["flops"] == 2 * sizes.dllm_parameters * T * K * width + 2 * sizes.rm_parameters * K * scored
        assert share["wall_seconds"] > 0
    compute = summary["compute"]
    assert compute == json.loads((tmp_path / "summary.json").read_text())["compute"]
    assert compute["dllm_forward_passes"] == B * T * K and compute["rm_forward_passes"] == B * K
    assert compute["flops"] == sum(r["compute"]["flops"] for r in records)
    assert (compute["dllm_parameters"], compute["rm_parameters"]) == (sizes.dllm_parameters, sizes.rm_parameters)


def test_reward_parameters_count_the_reward_models_a_reward_runs(toy_reward):
    """An RM's non-embedding parameters; a text scorer's none; a weighted sum's, those of its RM terms."""
    from types import SimpleNamespace

    from entrgi.rewards.length import LengthPenalty, LengthPenaltyConfig

    rm = non_embedding_parameters(toy_reward.network)
    length = LengthPenalty(LengthPenaltyConfig())
    assert rm > 0
    assert reward_parameters(toy_reward) == rm
    assert reward_parameters(length) == 0
    assert reward_parameters(SimpleNamespace(terms={"rm": toy_reward, "length": length})) == rm
