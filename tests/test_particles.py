"""Particle methods: the resampling primitives by hand, the sampler's resampling seam, and `guidance=fk`.

The seam and fk run on the trained toy world (CPU, a second each); the rewards that decide a
resampling are replaced by hand-chosen ones where a test needs to know what must happen.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from entrgi.guidance import Committed, FKConfig, FKGuidance, Guidance, NoGuidance, Resampling
from entrgi.noise import Stream, TrajectoryNoise
from entrgi.resampling import (
    ancestor_rows,
    effective_sample_size,
    multinomial_ancestors,
    systematic_ancestors,
)
from entrgi.sampler import DiffusionSampler, SamplerConfig
from entrgi.schedule import EntropySchedule, ScheduleConfig
from entrgi.toy.world import prompts_path

K, STEPS, LENGTH = 4, 6, 10


def _log(*weights: float) -> torch.Tensor:
    return torch.tensor(weights, dtype=torch.float64).log()[None, :]


# --- the resampling primitives, by hand ------------------------------------------------------------------


@pytest.mark.parametrize("weights,ess", [
    ((1, 1, 1, 1), 4.0),
    ((1, 0, 0, 0), 1.0),
    ((5, 5, 0, 0), 2.0),
    ((3, 1), 16 / 10),  # (3 + 1)² / (9 + 1)
    ((1, 2, 3, 4), 100 / 30),  # 10² / (1 + 4 + 9 + 16)
])
def test_effective_sample_size_against_hand_values(weights, ess):
    assert effective_sample_size(_log(*weights)).item() == pytest.approx(ess, rel=1e-6)
    assert effective_sample_size(_log(*weights) + 123.0).item() == pytest.approx(ess, rel=1e-6)  # any offset


@pytest.mark.parametrize("u,expected", [
    # cumulative weights C = (.1, .3, .6, 1); slot k takes the particle whose interval holds (k + u) / 4
    (0.5, [1, 2, 3, 3]),  # points .125 .375 .625 .875
    (0.1, [0, 1, 2, 3]),  # points .025 .275 .525 .775
    (0.9, [1, 2, 3, 3]),  # points .225 .475 .725 .975
    (0.3, [0, 2, 2, 3]),  # points .075 .325 .575 .825: .325 is past C = .3
])
def test_systematic_resampling_against_hand_worked_uniforms(u, expected):
    assert systematic_ancestors(_log(0.1, 0.2, 0.3, 0.4), torch.tensor([u])).tolist() == [expected]


@pytest.mark.parametrize("k", [1, 2, 3, 4, 5, 7, 16])
def test_systematic_resampling_of_equal_weights_is_the_identity(k):
    log_weights = torch.full((3, k), -2.5)
    for u in (0.5 / 2**23, 0.5, 1 - 0.5 / 2**23):  # the extreme uniforms the noise streams produce
        assert systematic_ancestors(log_weights, torch.full((3,), u)).tolist() == [list(range(k))] * 3


def test_multinomial_resampling_against_hand_worked_uniforms():
    """C = (.1, .3, .6, 1): u = .05 → 0, .15 → 1, .45 → 2, .99 → 3. C = (.5, .5, 1, 1): .31 → 0, .5 → 2
    (past particle 1, whose weight is 0), .7 → 2, .999 → 2 (not the zero-weight 3)."""
    uniforms = torch.tensor([[0.05, 0.15, 0.45, 0.99], [0.31, 0.5, 0.7, 0.999]])
    log_weights = torch.cat([_log(0.1, 0.2, 0.3, 0.4), _log(0.5, 0.0, 0.5, 0.0)])
    assert multinomial_ancestors(log_weights, uniforms).tolist() == [[0, 1, 2, 3], [0, 2, 2, 2]]


def test_multinomial_ancestors_follow_the_weights():
    """40 000 draws from the RESAMPLE stream: each particle's share within 5 standard errors of its weight."""
    weights = torch.tensor([0.1, 0.2, 0.3, 0.4])
    noise = TrajectoryNoise.for_prompts(5, [f"p{i}" for i in range(400)], 1)
    uniforms = noise.uniform(Stream.RESAMPLE, 3, 100)  # [400, 100]
    ancestors = multinomial_ancestors(weights.log().expand(400, 4), uniforms[:, :4])
    draws = multinomial_ancestors(weights.log().expand(400 * 25, 4), uniforms.reshape(-1, 4))
    counts = torch.bincount(torch.cat([ancestors.flatten(), draws.flatten()]), minlength=4).double()
    n = counts.sum()
    error = (weights.double() * (1 - weights.double()) / n).sqrt()
    assert ((counts / n - weights.double()).abs() < 5 * error).all(), counts / n


def test_ancestor_rows_stay_in_their_prompts_group():
    assert ancestor_rows(torch.tensor([[1, 1, 0], [2, 0, 0]]), 3).tolist() == [1, 1, 0, 5, 3, 3]
    assert ancestor_rows(torch.tensor([1, 1, 0, 2, 0, 0]), 3).tolist() == [1, 1, 0, 5, 3, 3]


# --- the sampler's seam --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def prompts() -> tuple[list[str], list[str]]:
    lines = [json.loads(line) for line in prompts_path().read_text().splitlines()[:3]]
    return [line["prompt"] for line in lines], [str(line.get("id", i)) for i, line in enumerate(lines)]


def _sampler(model, guidance: Guidance, steps: int = STEPS) -> DiffusionSampler:
    return DiffusionSampler(SamplerConfig(num_samples=K, max_new_tokens=LENGTH, temperature=0.7, top_p=0.95),
                            model=model, schedule=EntropySchedule(ScheduleConfig(steps=steps)), guidance=guidance)


class CopyOne(Guidance):
    """At one step, every slot of every prompt copies particle `source`; records what it saw."""

    def __init__(self, step: int, source: int):
        super().__init__()
        self.step, self.source = step, source
        self.before, self.rows, self.calls = None, None, []

    def resample(self, committed: Committed) -> Resampling | None:
        self.calls.append(committed.step)
        if committed.step != self.step:
            return None
        self.before = committed.response.clone()
        ancestors = torch.full((committed.response.shape[0],), self.source)  # [B*K] form
        return Resampling(ancestors=ancestors, stats={"copied": torch.tensor(1.0)})

    def reorder(self, rows: torch.Tensor) -> None:
        self.rows = rows.clone()


def test_the_sampler_gathers_each_prompts_rows_then_the_copies_diverge(toy_model, prompts, monkeypatch):
    texts, ids = prompts
    seen = []
    inner = toy_model.logits
    monkeypatch.setattr(toy_model, "logits", lambda canvas, *rest: seen.append(canvas.clone()) or inner(canvas, *rest))
    method = CopyOne(step=2, source=1)
    generation = _sampler(toy_model, method).generate(texts, ids, seed=4)

    assert method.calls == list(range(STEPS - 1)), "asked after every step but the last"
    assert method.rows.tolist() == [b * K + 1 for b in range(len(texts)) for _ in range(K)]
    start = seen[0].shape[1] - LENGTH
    after = seen[3]  # the canvas step 3 reads: step 2's commit, resampled
    for b in range(len(texts)):
        group = after[b * K : (b + 1) * K]
        assert torch.equal(group[:, :start], seen[0][b * K : (b + 1) * K, :start]), "prompts moved"
        assert torch.equal(group[:, start:], method.before[b * K + 1].expand(K, -1)), "not all copies of particle 1"
        final = generation.responses[b * K : (b + 1) * K]
        assert len({tuple(row) for row in final.tolist()}) > 1, "the copies share their randomness"
    assert [("copied" in row) for row in generation.steps] == [i == 2 for i in range(STEPS)]


def test_without_resampling_the_seam_costs_nothing(toy_model, prompts):
    """The base class asks for nothing: the same samples as before, and no extra statistics."""
    texts, ids = prompts
    steps = _sampler(toy_model, NoGuidance()).generate(texts, ids, seed=4).steps
    assert all(set(row) == {"step", "t", "s", "masked"} for row in steps)


# --- guidance=fk ---------------------------------------------------------------------------------------


def _fk(model, reward, **options) -> FKGuidance:
    return FKGuidance(FKConfig(**options), model=model, reward=reward)


def _fixed_rewards(monkeypatch, fk: FKGuidance, per_step):
    """Replace the RM's scores of the estimates: per_step(step_index, n_rows) -> [N] rewards."""
    calls = []

    def score(layout, tokens):
        calls.append(tokens.clone())
        return per_step(len(calls) - 1, tokens.shape[0])

    monkeypatch.setattr(fk.bridged, "score_tokens", score)
    return calls


@pytest.mark.parametrize("ess_threshold", [0.0, 1e-6])
def test_fk_that_never_resamples_is_best_of_n_exactly(toy_model, toy_reward, prompts, ess_threshold):
    """resample_every=null: with ess_threshold=0 it never scores; with a threshold under 1/K it scores every
    step (statistics) but no ESS is that low. Either way the samples are guidance=none's."""
    texts, ids = prompts
    plain = _sampler(toy_model, NoGuidance()).generate(texts, ids, seed=9)
    fk = _sampler(toy_model, _fk(toy_model, toy_reward, ess_threshold=ess_threshold)).generate(texts, ids, seed=9)
    assert torch.equal(fk.responses, plain.responses)
    scored = [row for row in fk.steps if "ess_mean" in row]
    assert len(scored) == (0 if ess_threshold == 0 else STEPS - 1)
    assert all(row["resampled_fraction"] == 0 and 1 <= row["ess_mean"] <= K + 1e-5 for row in scored)


def test_a_constant_potential_resamples_into_the_identity(toy_model, toy_reward, prompts, monkeypatch):
    """Resampled at every step (systematic) with equal weights: every ancestor is itself, samples unchanged."""
    texts, ids = prompts
    plain = _sampler(toy_model, NoGuidance()).generate(texts, ids, seed=2).responses
    fk = _fk(toy_model, toy_reward, resample_every=1, ess_threshold=0.0, potential="sum")
    _fixed_rewards(monkeypatch, fk, lambda step, n: torch.full((n,), 0.7))
    generation = _sampler(toy_model, fk).generate(texts, ids, seed=2)
    assert torch.equal(generation.responses, plain)
    assert [row.get("resampled_fraction") for row in generation.steps] == [1.0] * (STEPS - 1) + [None]
    assert all(row["ess_mean"] == pytest.approx(K) for row in generation.steps[:-1])


@pytest.mark.parametrize("resampling", ["systematic", "multinomial"])
def test_a_huge_potential_for_one_particle_makes_every_particle_its_copy(toy_model, toy_reward, prompts,
                                                                       monkeypatch, resampling):
    texts, ids = prompts
    fk = _fk(toy_model, toy_reward, strength=1.0, resampling=resampling, ess_threshold=0.5)
    favourite = 2
    calls = _fixed_rewards(monkeypatch, fk, lambda step, n: (torch.arange(n) % K == favourite).float() * 1000)
    seen = []
    inner = toy_model.logits
    monkeypatch.setattr(toy_model, "logits", lambda canvas, *rest: seen.append(canvas.clone()) or inner(canvas, *rest))
    generation = _sampler(toy_model, fk).generate(texts, ids, seed=3)
    start = seen[0].shape[1] - LENGTH
    resampled = seen[1][:, start:]  # the canvas step 1 reads: step 0's commit, resampled
    estimates = calls[0]  # step 0's estimates: at committed positions, the responses before resampling
    for b in range(len(texts)):
        group = resampled[b * K : (b + 1) * K]
        assert (group == group[favourite]).all(), "not every particle is a copy"
        committed = group[favourite] != toy_model.mask_token_id
        assert committed.any()
        assert torch.equal(group[favourite][committed], estimates[b * K + favourite][committed])
    assert generation.steps[0]["ess_mean"] == pytest.approx(1.0)
    assert generation.steps[0]["resampled_fraction"] == 1.0


def _ess(*log_weights: float) -> float:
    weights = [math.exp(x - max(log_weights)) for x in log_weights]
    return sum(weights) ** 2 / sum(w * w for w in weights)


@pytest.mark.parametrize("potential,step1_log_weights", [
    ("diff", (2, 2)),  # not resampled: r(1) − 0 (the weight since the start)
    ("max", (2, 3)),  # max(1, 2), max(3, 2)
    ("sum", (3, 5)),  # 1 + 2, 3 + 2
])
def test_potentials_against_hand_values(toy_model, toy_reward, prompts, monkeypatch, potential, step1_log_weights):
    """K = 2 particles, rewards (1, 3) after step 0 and (2, 2) after step 1, λ = 1, no resampling:
    the logged ESS is that of the hand-computed log-weights."""
    texts, ids = prompts
    fk = _fk(toy_model, toy_reward, potential=potential, strength=1.0, ess_threshold=1e-9)
    rewards = [torch.tensor([1.0, 3.0]), torch.tensor([2.0, 2.0])]
    _fixed_rewards(monkeypatch, fk, lambda step, n: rewards[min(step, 1)].repeat(n // 2))
    sampler = DiffusionSampler(SamplerConfig(num_samples=2, max_new_tokens=LENGTH), model=toy_model,
                               schedule=EntropySchedule(ScheduleConfig(steps=3)), guidance=fk)
    steps = sampler.generate(texts[:1], ids[:1], seed=1).steps
    assert steps[0]["ess_mean"] == pytest.approx(_ess(1, 3), rel=1e-5)
    assert steps[1]["ess_mean"] == pytest.approx(_ess(*step1_log_weights), rel=1e-5)


def test_diff_restarts_from_the_ancestors_reward_after_a_resampling(toy_model, toy_reward, prompts, monkeypatch):
    """Rewards (0, 100) → both slots copy particle 1 and carry 100; then (101, 99): log-weights (1, −1)."""
    texts, ids = prompts
    fk = _fk(toy_model, toy_reward, potential="diff", strength=1.0, ess_threshold=0.9)
    rewards = [torch.tensor([0.0, 100.0]), torch.tensor([101.0, 99.0])]
    _fixed_rewards(monkeypatch, fk, lambda step, n: rewards[min(step, 1)].repeat(n // 2))
    sampler = DiffusionSampler(SamplerConfig(num_samples=2, max_new_tokens=LENGTH), model=toy_model,
                               schedule=EntropySchedule(ScheduleConfig(steps=3)), guidance=fk)
    steps = sampler.generate(texts[:1], ids[:1], seed=1).steps
    assert steps[0]["resampled_fraction"] == 1.0
    assert steps[1]["ess_mean"] == pytest.approx(_ess(1, -1), rel=1e-5)


@pytest.mark.parametrize("resampling", ["systematic", "multinomial"])
def test_fk_is_deterministic_and_batch_invariant(toy_model, toy_reward, prompts, resampling):
    """Resampling on (every other step, and by ESS): the same samples run to run and whether a prompt
    is alone or batched; another seed gives others. Some resampling does happen."""
    texts, ids = prompts
    fk = _fk(toy_model, toy_reward, resampling=resampling, resample_every=2, ess_threshold=0.9, strength=20.0)
    sampler = _sampler(toy_model, fk)
    batched = sampler.generate(texts, ids, seed=5)
    assert torch.equal(batched.responses, sampler.generate(texts, ids, seed=5).responses)
    assert not torch.equal(batched.responses, sampler.generate(texts, ids, seed=6).responses)
    assert sum(row["resampled_fraction"] for row in batched.steps[:-1]) > 0
    for i in range(len(texts)):
        alone = sampler.generate(texts[i : i + 1], ids[i : i + 1], seed=5).responses
        assert torch.equal(alone, batched.responses[i * K : (i + 1) * K])


def test_estimates_fill_the_masked_positions(toy_model, toy_reward):
    """argmax of the logits (never <mask>) or this step's draw, committed tokens kept."""
    mask = toy_model.mask_token_id
    response = torch.tensor([[5, mask, mask]])
    logits = torch.zeros(1, 3, toy_model.vocab_size)
    logits[0, :, mask] = 9.0  # the largest logit is <mask>'s: it must not be chosen
    logits[0, 1, 7] = 3.0
    logits[0, 2, 8] = 3.0
    committed = Committed(0, response, mask, logits, torch.tensor([[6, 11, 12]]), None, 1, unguided=logits,
                          commit=torch.tensor([[False, False, False]]), planned=None, temperature=0.7, top_p=0.95,
                          top_k=None)
    assert _fk(toy_model, toy_reward).estimate(committed).tolist() == [[5, 7, 8]]
    assert _fk(toy_model, toy_reward, estimate="sample").estimate(committed).tolist() == [[5, 11, 12]]


def test_the_estimate_is_scored_as_the_text_path_scores_it(compose, toy_model):
    """With fidelity=consistent the RM's token path on a finished response is the final text score."""
    from entrgi.components import build
    from entrgi.rewards.vocab_bridge import BridgedReward

    cfg = compose(["experiment=tiny"])
    model, reward = build(cfg.model), build(cfg.reward)
    texts = [json.loads(line)["prompt"] for line in prompts_path().read_text().splitlines()[:2]]
    responses = _sampler(model, NoGuidance(), steps=LENGTH).generate(texts, ["a", "b"], seed=1).responses
    bridged = BridgedReward(model, reward)
    layout = reward.layout(texts, K, LENGTH)
    decoded = [model.decode(row) for row in responses.tolist()]
    text_scores = reward.score_texts([t for t in texts for _ in range(K)], decoded)
    assert torch.allclose(bridged.score_tokens(layout, responses), text_scores, atol=1e-4)


def test_fk_job_logs_its_statistics(compose, tmp_path):
    from entrgi.experiment import run_experiment

    cfg = compose(["experiment=tiny", "guidance=fk", "logger=none", "schedule.steps=4",
                   "sampler.max_new_tokens=6", "benchmark.n_prompts=2", "evaluator=[]"])
    summary = run_experiment(cfg, tmp_path)
    steps = [json.loads(line) for line in (tmp_path / "steps.jsonl").read_text().splitlines()]
    assert [("ess_mean" in row, "resampled_fraction" in row) for row in steps] == [(True, True)] * 3 + [(False,
                                                                                                        False)]
    assert summary["guidance"] == "fk" and {"ess_mean", "resampled_fraction"} <= summary.keys()
