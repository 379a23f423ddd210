"""Reward-gradient guidance on the random world: it optimises, it is deterministic, it is batch-invariant."""

from __future__ import annotations

import pytest
import torch
from conftest import guidance_config

from entrgi.components import build
from entrgi.guidance import NoGuidance, RewardGradientGuidance
from entrgi.guidance.mix import WEIGHT_RULES, weight_rule
from entrgi.sampler import DiffusionSampler, SamplerConfig
from entrgi.schedule import EntropySchedule, ScheduleConfig

PROMPTS = ["Describe the small cat.", "Why is the robot happy?", "Tell me a short story about a quiet garden."]
IDS = ["p0", "p1", "p2"]


def _sampler(model, reward, rule="entrgi", steps=4, length=6, **options):
    guidance = RewardGradientGuidance(guidance_config(rule=rule, **options), model=model, reward=reward) if rule \
        else NoGuidance()
    return DiffusionSampler(
        SamplerConfig(num_samples=2, max_new_tokens=length), model=model,
        schedule=EntropySchedule(ScheduleConfig(steps=steps)), guidance=guidance,
    )


@pytest.mark.parametrize("rule", ["soft", "aps", "entrgi"])
def test_relaxed_reward_rises_over_adam_iterations(random_model, random_reward, rule):
    """Averaged over steps, the last iteration's relaxed reward beats the first (the optimiser works)."""
    sampler = _sampler(random_model, random_reward, rule=rule, M=4, eta=2.0)
    steps = sampler.generate(PROMPTS, IDS, seed=3).steps
    gains = [row["reward_curve"][-1] - row["reward_curve"][0] for row in steps]
    assert len(steps[0]["reward_curve"]) == 4
    assert sum(gains) / len(gains) > 0


def test_step_statistics_follow_the_rule(random_model, random_reward):
    """APS: D = 0, w = 1; soft: E = 0, w = 0; EntRGi: 0 < w < 1 and E, D > 0."""
    stats = {r: _sampler(random_model, random_reward, rule=r).generate(PROMPTS[:1], IDS[:1], seed=0).steps[0]
             for r in ("soft", "aps", "entrgi")}
    assert stats["aps"]["D_mean"] == 0 and stats["aps"]["w_mean"] == 1 and stats["aps"]["E_mean"] > 0
    assert stats["soft"]["E_mean"] == 0 and stats["soft"]["w_mean"] == 0 and stats["soft"]["D_mean"] > 0
    assert 0 < stats["entrgi"]["w_mean"] < 1 and stats["entrgi"]["E_mean"] > 0 and stats["entrgi"]["D_mean"] > 0
    for row in stats.values():
        assert 0 < row["entropy_mean"] <= torch.log(torch.tensor(float(random_model.vocab_size))).item() + 1e-5


def test_guidance_changes_the_samples(random_model, random_reward):
    plain = _sampler(random_model, random_reward, rule=None).generate(PROMPTS, IDS, seed=1).responses
    guided = _sampler(random_model, random_reward, M=3, eta=5.0).generate(PROMPTS, IDS, seed=1).responses
    assert not torch.equal(plain, guided)


def test_same_seed_same_output_and_batch_invariance(random_model, random_reward):
    """Guided samples of a prompt are the same run to run and whether it is batched alone or with others."""
    sampler = _sampler(random_model, random_reward)
    batched = sampler.generate(PROMPTS, IDS, seed=7).responses
    assert torch.equal(batched, sampler.generate(PROMPTS, IDS, seed=7).responses)
    for i in range(len(PROMPTS)):
        alone = sampler.generate(PROMPTS[i : i + 1], IDS[i : i + 1], seed=7).responses
        assert torch.equal(alone, batched[2 * i : 2 * i + 2])


def test_every_kth_step_is_guided(random_model, random_reward):
    steps = _sampler(random_model, random_reward, steps=5, every=2).generate(PROMPTS[:1], IDS[:1], seed=0).steps
    assert ["reward_curve" in row for row in steps] == [True, False, True, False, True]


def test_rm_sees_the_response_up_to_the_first_eos(random_model, random_reward):
    guidance = RewardGradientGuidance(guidance_config(), model=random_model, reward=random_reward)
    eos, mask = random_model.eos_token_id, random_model.mask_token_id
    response = torch.tensor([[5, mask, 7, eos, 9], [5, 6, mask, mask, 8]])
    masked = response == mask
    proposal = torch.tensor([[0, eos, 0, 0, 0], [0, 0, 3, 4, 0]])
    visible = guidance._visible(response, masked, proposal)
    assert visible.tolist() == [[True, False, False, False, False], [True, True, True, True, True]]


def _one_guided_step(model, reward, monkeypatch=None, **options):
    """Steer step 0 of one prompt (K=2); returns (unguided logits, steered, RM scores per iteration)."""
    from entrgi.guidance import GuidanceContext
    from entrgi.noise import TrajectoryNoise

    guidance = RewardGradientGuidance(guidance_config(**options), model=model, reward=reward)
    scores = []
    if monkeypatch is not None:
        original = reward.score_embeds
        monkeypatch.setattr(reward, "score_embeds", lambda *a: scores.append(original(*a)) or scores[-1])
    sampler = _sampler(model, reward)
    canvas, attention = sampler.build_canvas([model.encode_prompt(PROMPTS[0])])
    start = canvas.shape[1] - sampler.max_new_tokens
    logits = model.logits(canvas, attention, start)
    response = canvas[:, start:]
    guidance.begin_batch(PROMPTS[:1], 2, sampler.max_new_tokens)
    context = GuidanceContext(0, response, response == model.mask_token_id, TrajectoryNoise.for_prompts(0, IDS[:1], 2))
    return logits, guidance.steer(logits, context), [x.detach() for x in scores]


def test_keep_best_returns_the_best_scored_iterate(random_model, random_reward, monkeypatch):
    """`last` returns the final update; `best` the iterate (phi_0 … phi_M, the last scored once more)
    with the highest relaxed RM score, per row."""
    logits, one_last, _ = _one_guided_step(random_model, random_reward, M=1, eta=5.0, keep="last")
    assert not torch.equal(one_last.logits, logits)
    _, one_best, scores = _one_guided_step(random_model, random_reward, monkeypatch, M=1, eta=5.0, keep="best")
    assert len(scores) == 2  # phi_0 with gradient, phi_1 without
    for row in range(2):
        expected = one_last.logits[row] if scores[1][row] > scores[0][row] else logits[row]
        torch.testing.assert_close(one_best.logits[row], expected)
    assert any(scores[1][row] != scores[0][row] for row in range(2))


@pytest.mark.parametrize("method", ["soft", "aps", "entrgi"])
def test_guided_job_writes_steps_histogram_and_summary(compose, tmp_path, method):
    import json

    from entrgi.experiment import run_experiment

    cfg = compose(["experiment=tiny", f"guidance={method}", "logger=none", "schedule.steps=4",
                   "sampler.max_new_tokens=6", "benchmark.n_prompts=2"])
    summary = run_experiment(cfg, tmp_path)
    steps = [json.loads(line) for line in (tmp_path / "steps.jsonl").read_text().splitlines()]
    assert len(steps) == 4  # one batch of 2 prompts, 4 denoising steps
    for row in steps:
        assert {"step", "t", "masked", "entropy_mean", "w_mean", "E_mean", "D_mean", "reward_curve"} <= row.keys()
        assert len(row["reward_curve"]) == cfg.guidance.M
    histogram = json.loads((tmp_path / "entropy_error_histogram.json").read_text())
    masked_total = sum(row["masked"] for row in steps) * 2 * cfg.sampler.num_samples  # mean per traj × trajectories
    assert sum(map(sum, histogram["counts"])) == pytest.approx(masked_total * cfg.guidance.M)
    assert summary["guidance"] == method and {"E_mean", "D_mean", "entropy_mean", "vocab_coverage"} <= summary.keys()


@pytest.fixture
def half_rule():
    """A weight rule registered from outside the package: w ≡ 0.5 (halfway between soft and APS)."""

    @weight_rule("half-test")
    def half(logits, entropy_nats):
        return torch.full(logits.shape[:-1], 0.5, device=logits.device)

    yield "half-test"
    del WEIGHT_RULES["half-test"]


def test_a_rule_registered_outside_the_package_is_a_guidance_rule(compose, random_model, random_reward, half_rule):
    """One decorated function is all a new weight rule needs: `guidance.rule=<name>` validates and runs."""
    from entrgi.validation import validate

    cfg = compose(["guidance=entrgi", f"guidance.rule={half_rule}", "guidance.M=1"])
    validate(cfg)
    guidance = build(cfg.guidance, model=random_model, reward=random_reward)
    sampler = DiffusionSampler(
        SamplerConfig(num_samples=2, max_new_tokens=4), model=random_model,
        schedule=EntropySchedule(ScheduleConfig(steps=2)), guidance=guidance,
    )
    steps = sampler.generate(PROMPTS[:1], IDS[:1], seed=0).steps
    assert [row["w_mean"] for row in steps] == [pytest.approx(0.5), pytest.approx(0.5)]
