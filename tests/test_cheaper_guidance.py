"""Speed options (off by default) and the perf command: what they change and what they keep."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from conftest import guidance_config

from entrgi.guidance import NoGuidance, RewardGradientGuidance
from entrgi.sampler import DiffusionSampler, SamplerConfig
from entrgi.schedule import (
    EntropySchedule,
    LowConfidenceConfig,
    LowConfidenceSchedule,
    MaskGitPlusSchedule,
    OriginSchedule,
    ScheduleConfig,
)

PROMPTS = ["Describe the small cat.", "Why is the robot happy?"]
IDS = ["p0", "p1"]


@pytest.mark.parametrize("schedule", [EntropySchedule(ScheduleConfig(steps=5)),
                                      MaskGitPlusSchedule(ScheduleConfig(steps=3, alg_temp=0.3)),
                                      LowConfidenceSchedule(LowConfidenceConfig(steps=6, block_length=4))])
def test_planned_counts_match_what_the_sampler_does(random_model, schedule):
    sampler = DiffusionSampler(SamplerConfig(num_samples=2, max_new_tokens=12), model=random_model, schedule=schedule,
                               guidance=NoGuidance())
    steps = sampler.generate(PROMPTS, IDS, seed=0).steps
    plan = schedule.planned_counts(12)
    assert [row["masked"] for row in steps] == [float(m) for m, _ in plan]
    assert sum(c for _, c in plan) == 12


def test_origin_has_no_plan():
    assert OriginSchedule(ScheduleConfig(steps=4)).planned_counts(8) is None


def _responses(model, reward, **options):
    guidance = RewardGradientGuidance(guidance_config(M=2, eta=3.0, **options), model=model, reward=reward)
    sampler = DiffusionSampler(
        SamplerConfig(num_samples=2, max_new_tokens=8), model=model,
        schedule=EntropySchedule(ScheduleConfig(steps=4)), guidance=guidance,
    )
    return sampler.generate(PROMPTS, IDS, seed=4)


def test_focus_covering_every_masked_position_changes_nothing(random_model, random_reward):
    full = _responses(random_model, random_reward)
    focused = _responses(random_model, random_reward, focus_margin=8)
    assert torch.equal(full.responses, focused.responses)
    for a, b in zip(full.steps, focused.steps, strict=True):
        assert a["reward_curve"] == pytest.approx(b["reward_curve"], abs=1e-5)


def test_focus_optimises_only_the_positions_about_to_be_committed(random_model, random_reward):
    from entrgi.guidance import GuidanceContext
    from entrgi.noise import TrajectoryNoise

    guidance = RewardGradientGuidance(guidance_config(M=2, eta=3.0, focus_margin=1), model=random_model,
                                      reward=random_reward)
    sampler = DiffusionSampler(
        SamplerConfig(num_samples=2, max_new_tokens=8), model=random_model,
        schedule=EntropySchedule(ScheduleConfig(steps=4)), guidance=guidance,
    )
    canvas, attention = sampler.build_canvas([random_model.encode_prompt(p) for p in PROMPTS])
    start = canvas.shape[1] - 8
    logits = random_model.logits(canvas, attention, start)
    response = canvas[:, start:]
    guidance.begin_batch(PROMPTS, 2, 8)
    context = GuidanceContext(0, response, response == random_model.mask_token_id,
                              TrajectoryNoise.for_prompts(0, IDS, 2), sampler.plan[0])
    steered = guidance.steer(logits, context)
    changed = (steered.logits != logits).any(-1)
    n_masked, n_commit = sampler.plan[0]
    assert (changed.sum(-1) == n_commit + 1).all()
    confidence = torch.softmax(logits, -1).amax(-1)
    expected = confidence.topk(n_commit + 1, dim=-1).indices.sort(-1).values
    assert torch.equal(changed.nonzero()[:, 1].view(4, -1), expected)


@pytest.mark.slow
def test_perf_command_writes_its_table(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "entrgi.perf", "experiment=tiny", "perf.methods=[none,entrgi]", "perf.repeats=1",
         "perf.warmup=0", "schedule.steps=2", "sampler.max_new_tokens=4", "sampler.batch_size=2", "logger=none",
         f"hydra.run.dir={tmp_path}"],
        capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "| entrgi |" in out.stdout and "overhead" in out.stdout
    results = json.loads((tmp_path / "perf.json").read_text())["results"]
    entrgi = results["entrgi"]["seconds_per_step"]
    assert entrgi["rm_forward"] > 0 and entrgi["rm_backward"] > 0 and entrgi["dllm_forward"] > 0
    # The three measured parts are disjoint spans inside the step: something is left for the rest.
    assert 0 < entrgi["overhead"] < entrgi["total"]
    assert results["none"]["seconds_per_step"]["rm_forward"] == 0
    # Each vocabulary-sized operation timed alone, on the first step's masked logits [N, L, V].
    operations = json.loads((tmp_path / "perf.json").read_text())["operations"]
    assert operations["shape"][:2] == [8, 4] and "| soft_embedding |" in out.stdout
    assert set(operations["seconds_per_call"]) == {"nucleus", "softmax", "entropy", "soft_embedding", "ranking"}
