"""Two options that skip work, off by default: the entropy gate (`guidance.entropy_gate`) and
confidence-threshold decoding (`schedule.confidence_threshold`). What they skip, and what they keep."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import guidance_config

from entrgi.guidance import GuidanceContext, NoGuidance, RewardGradientGuidance
from entrgi.guidance.entropy_gate import EntropyGate
from entrgi.noise import TrajectoryNoise
from entrgi.sampler import DiffusionSampler, SamplerConfig
from entrgi.schedule import (
    EntropySchedule,
    LowConfidenceConfig,
    LowConfidenceSchedule,
    MaskGitPlusSchedule,
    OriginSchedule,
    ScheduleConfig,
)
from entrgi.validation import ConfigError

PROMPTS = ["Hi", "Tell me a short story about a quiet garden, please.", "Why is the robot happy?", "A ship?"]
IDS = ["p-hi", "p-story", "p-robot", "p-ship"]
K, LENGTH = 2, 8
NO_EOS = torch.tensor([-1])  # no sampled token is a stop token


# ---- confidence-threshold decoding -------------------------------------------------------------


def _commit(schedule, confidence, masked, step=0):
    """commit_mask for hand-built confidences [N, L] of the sampled tokens (token 0 at every position)."""
    probs = torch.stack([confidence, 1 - confidence], dim=-1)  # maskgit_plus reads p(token 0)
    tokens = torch.zeros_like(masked, dtype=torch.long)
    return schedule.commit_mask(masked, tokens, probs, step, TrajectoryNoise.for_prompts(0, ["a"], 2), NO_EOS)


def test_threshold_commits_the_confident_positions_and_at_least_one():
    # steps = 8 > L = 4: the grid's count at step 0 is floor(4 · 0.125) = 0, so the threshold decides alone.
    schedule = MaskGitPlusSchedule(ScheduleConfig(steps=8, confidence_threshold=0.6))
    confidence = torch.tensor([[0.9, 0.7, 0.5, 0.95], [0.3, 0.5, 0.1, 0.4]])
    masked = torch.tensor([[True, True, True, False], [True, True, True, True]])
    commit = _commit(schedule, confidence, masked)
    assert commit.tolist() == [[True, True, False, False],  # above 0.6 and masked (0.95 is committed already)
                               [False, True, False, False]]  # none above: the most confident alone
    plain = MaskGitPlusSchedule(ScheduleConfig(steps=8))
    assert not _commit(plain, confidence, masked).any(), "without the option step 0 commits nothing here"


def test_threshold_adds_to_the_grids_count():
    schedule = MaskGitPlusSchedule(ScheduleConfig(steps=2, confidence_threshold=0.8))  # grid: floor(4·0.4995) = 1
    confidence = torch.tensor([[0.5, 0.7, 0.85, 0.9]])
    assert _commit(schedule, confidence, torch.ones(1, 4, dtype=torch.bool)).tolist() == [[False, False, True, True]]
    low = MaskGitPlusSchedule(ScheduleConfig(steps=2, confidence_threshold=0.99))
    assert _commit(low, confidence, torch.ones(1, 4, dtype=torch.bool)).tolist() == [[False, False, False, True]]


def test_threshold_on_the_entropy_rule_is_in_nats():
    schedule = EntropySchedule(ScheduleConfig(steps=8, confidence_threshold=-0.5))  # commit where H < 0.5 nats
    probs = torch.tensor([[[0.5, 0.5], [0.99, 0.01], [0.9, 0.1]]])  # H = 0.69, 0.056, 0.325
    commit = schedule.commit_mask(torch.ones(1, 3, dtype=torch.bool), torch.zeros(1, 3, dtype=torch.long), probs, 0,
                                  TrajectoryNoise.for_prompts(0, ["a"], 1), NO_EOS)
    assert commit.tolist() == [[False, True, True]]


def test_threshold_makes_the_counts_data_dependent():
    assert EntropySchedule(ScheduleConfig(steps=4, confidence_threshold=-0.1)).planned_counts(8) is None
    assert EntropySchedule(ScheduleConfig(steps=4)).planned_counts(8) is not None


@pytest.mark.parametrize("schedule", [OriginSchedule, LowConfidenceSchedule])
def test_threshold_is_refused_where_it_does_not_apply(schedule):
    config = (LowConfidenceConfig if schedule is LowConfidenceSchedule else ScheduleConfig)(confidence_threshold=0.9)
    with pytest.raises(ConfigError, match="schedule.confidence_threshold=0.9"):
        schedule(config)


class CanvasSpy:
    """Stands in for model.logits and records the canvas of every step."""

    def __init__(self, model, monkeypatch):
        self.inner, self.canvases, self.start = model.logits, [], None
        monkeypatch.setattr(model, "logits", self)

    def __call__(self, canvas, attention, start):
        self.canvases.append(canvas.clone())
        self.start = start
        return self.inner(canvas, attention, start)


def _threshold_sampler(model, guidance=None, threshold=0.25):
    return DiffusionSampler(SamplerConfig(num_samples=K, max_new_tokens=LENGTH), model=model,
                            schedule=MaskGitPlusSchedule(ScheduleConfig(steps=LENGTH, confidence_threshold=threshold)),
                            guidance=guidance or NoGuidance())


def test_threshold_decoding_keeps_the_invariants_and_ends_early(random_model, monkeypatch):
    spy = CanvasSpy(random_model, monkeypatch)
    generation = _threshold_sampler(random_model).generate(PROMPTS, IDS, seed=3)
    mask, start = random_model.mask_token_id, spy.start
    responses = [c[:, start:] for c in spy.canvases] + [generation.responses]
    for canvas in spy.canvases[1:]:
        assert torch.equal(canvas[:, :start], spy.canvases[0][:, :start]), "a prompt or pad token changed"
    masks = torch.stack([(r == mask).sum(-1) for r in responses])  # [steps run + 1, N]
    assert (masks[1:] < masks[:-1]).any(-1).all() and (masks[1:] <= masks[:-1]).all(), "masks only decrease"
    assert (masks[-1] == 0).all() and (masks[-2] > 0).any(), "the loop stops at the first step leaving none"
    assert len(generation.steps) == len(spy.canvases) < LENGTH, "the statistics are those of the steps run"
    assert [row["step"] for row in generation.steps] == list(range(len(spy.canvases)))
    assert [row["masked"] for row in generation.steps] == pytest.approx(masks[:-1].float().mean(-1).tolist())


def test_threshold_decoding_is_deterministic_and_batch_invariant_in_its_samples(random_model):
    """A prompt's samples do not depend on its batch; the steps run do: the batch runs until its slowest row is done."""
    sampler = _threshold_sampler(random_model)
    batched = sampler.generate(PROMPTS, IDS, seed=3)
    assert torch.equal(batched.responses, sampler.generate(PROMPTS, IDS, seed=3).responses)
    alone = [sampler.generate(PROMPTS[i : i + 1], IDS[i : i + 1], seed=3) for i in range(len(PROMPTS))]
    for i, one in enumerate(alone):
        assert torch.equal(one.responses, batched.responses[K * i : K * i + K])
    steps_alone = [len(one.steps) for one in alone]
    assert len(batched.steps) == max(steps_alone) and min(steps_alone) < max(steps_alone)


def test_unplanned_counts_are_bounded_by_the_grids(random_model, random_reward):
    """Under the threshold no row has more masks than the grid alone would leave: the sampler draws and guidance
    optimises that many columns (every masked one first), with the samples of drawing at all columns."""
    bounds = EntropySchedule(ScheduleConfig(steps=LENGTH)).masked_bounds(LENGTH)
    assert MaskGitPlusSchedule(ScheduleConfig(steps=LENGTH, confidence_threshold=0.25)).masked_bounds(LENGTH) == bounds
    assert OriginSchedule(ScheduleConfig(steps=4)).masked_bounds(LENGTH) is None
    widths, runs = [], []
    for bounded in (True, False):
        guidance = RewardGradientGuidance(guidance_config(M=2, eta=3.0), model=random_model, reward=random_reward)
        sampler = _threshold_sampler(random_model, guidance)
        guidance.steer = lambda logits, context, steer=guidance.steer: (
            widths.append(context.positions.shape[1]) or steer(logits, context))
        if not bounded:
            sampler.bounds = [None] * LENGTH
        runs.append(sampler.generate(PROMPTS, IDS, seed=5))
    steps = len(runs[0].steps)
    assert widths == bounds[:steps] + [LENGTH] * steps and bounds[2] < LENGTH
    assert torch.equal(runs[0].responses, runs[1].responses)


def test_guidance_optimises_every_masked_position_when_counts_are_not_planned(random_model, random_reward):
    """No plan: focus_margin has no count to focus on, and guided threshold decoding equals it without the margin."""
    guided = [_threshold_sampler(random_model, RewardGradientGuidance(guidance_config(M=2, eta=3.0, **option),
                                 model=random_model, reward=random_reward)).generate(PROMPTS[:2], IDS[:2], seed=5)
              for option in ({}, {"focus_margin": 0})]
    assert torch.equal(guided[0].responses, guided[1].responses)
    assert all("reward_curve" in row for row in guided[0].steps)


# ---- entropy gate ---------------------------------------------------------------------------------


def _logits(entropies_high: list[bool], length: int = 2, vocab: int = 8) -> torch.Tensor:
    """[N, length, vocab] logits: uniform rows (H = log 8 = 2.08 nats) or peaked ones (H ≈ 0.003 nats)."""
    peaked = torch.full((vocab,), -10.0)
    peaked[0] = 10.0
    rows = [torch.zeros(vocab) if high else peaked for high in entropies_high]
    return torch.stack(rows)[:, None, :].expand(-1, length, -1).clone()


def _update(gate, logits, masked):
    return gate.update(logits, masked, torch.arange(masked.shape[1]).expand_as(masked)).tolist()


def test_the_gate_closes_below_the_threshold_and_stays_closed():
    gate = EntropyGate(threshold=1.0)
    gate.begin_batch(3, torch.device("cpu"))
    masked = torch.ones(3, 2, dtype=torch.bool)
    assert not gate.closed()
    assert _update(gate, _logits([True, True, False]), masked) == [True, True, False]
    assert not gate.closed()
    assert _update(gate, _logits([True, False, True]), masked) == [True, False, False], "a closed gate stays closed"
    assert not gate.closed()
    assert _update(gate, _logits([False, True, True]), masked) == [False, False, False]
    assert gate.closed()


def test_the_gate_averages_over_the_masked_positions_only():
    gate = EntropyGate(threshold=1.0)
    gate.begin_batch(2, torch.device("cpu"))
    logits = _logits([True, True])
    logits[:, 1] = _logits([False, False])[:, 0]  # position 1 peaked: the mean over both is 1.04 nats
    masked = torch.tensor([[True, False], [False, True]])
    assert _update(gate, logits, masked) == [True, False]  # 2.08 over position 0; 0.003 over position 1
    assert _update(gate, logits, torch.tensor([[False, False], [True, True]])) == [False, False], \
        "a trajectory with nothing masked closes"


def test_the_gate_moves_with_resampled_particles():
    gate = EntropyGate(threshold=1.0)
    gate.begin_batch(2, torch.device("cpu"))
    _update(gate, _logits([True, False]), torch.ones(2, 2, dtype=torch.bool))
    gate.reorder(torch.tensor([1, 1]))
    assert gate.open.tolist() == [False, False]


def _gated_sampler(model, reward, gate, steps=4):
    guidance = RewardGradientGuidance(guidance_config(M=2, eta=3.0, entropy_gate=gate), model=model, reward=reward)
    return DiffusionSampler(SamplerConfig(num_samples=K, max_new_tokens=LENGTH), model=model,
                            schedule=EntropySchedule(ScheduleConfig(steps=steps)), guidance=guidance)


def test_a_gate_at_zero_changes_nothing(random_model, random_reward):
    gated = _gated_sampler(random_model, random_reward, 0.0).generate(PROMPTS, IDS, seed=2)
    plain = _gated_sampler(random_model, random_reward, None).generate(PROMPTS, IDS, seed=2)
    assert torch.equal(gated.responses, plain.responses)
    assert [row["gate_open"] for row in gated.steps] == [1.0] * 4
    assert [row["reward_curve"] for row in gated.steps] == [row["reward_curve"] for row in plain.steps]


def test_a_closed_gate_gives_the_dllms_logits_and_skips_the_rm(random_model, random_reward):
    """Above log V every gate closes at step 0: the samples are unguided ones, and the RM runs that step only."""
    above = math.log(random_model.vocab_size) + 1
    gated = _gated_sampler(random_model, random_reward, above).generate(PROMPTS, IDS, seed=2)
    unguided = DiffusionSampler(SamplerConfig(num_samples=K, max_new_tokens=LENGTH), model=random_model,
                                schedule=EntropySchedule(ScheduleConfig(steps=4)), guidance=NoGuidance())
    assert torch.equal(gated.responses, unguided.generate(PROMPTS, IDS, seed=2).responses)
    assert ["reward_curve" in row for row in gated.steps] == [True, False, False, False]
    assert gated.steps[0]["gate_open"] == 0
    full = _gated_sampler(random_model, random_reward, None).generate(PROMPTS, IDS, seed=2).compute
    assert gated.compute.rm_backward_passes * 4 == full.rm_backward_passes


def test_a_gate_between_closes_some_trajectories_per_trajectory(random_model, random_reward):
    """Step 0's mean entropies of the random dLLM lie between 4.1 and 4.7 nats: a gate at 4.4 closes some rows
    at once; each prompt's samples are the same batched or alone, and equal its samples with a gate at 0 or
    above log V as its own entropy decides."""
    sampler = _gated_sampler(random_model, random_reward, 4.4)
    batched = sampler.generate(PROMPTS, IDS, seed=2)
    assert 0 < batched.steps[0]["gate_open"] < 1
    assert torch.equal(batched.responses, sampler.generate(PROMPTS, IDS, seed=2).responses)
    for i in range(len(PROMPTS)):
        alone = sampler.generate(PROMPTS[i : i + 1], IDS[i : i + 1], seed=2).responses
        assert torch.equal(alone, batched.responses[K * i : K * i + K])
    opens = [row["gate_open"] for row in batched.steps if "gate_open" in row]
    assert opens == sorted(opens, reverse=True), "gates only close"


def test_the_gate_on_the_step_context(random_model, random_reward):
    """One steer call: the closed rows get the dLLM's logits exactly, the open ones move."""
    guidance = RewardGradientGuidance(guidance_config(M=2, eta=3.0, entropy_gate=4.4), model=random_model,
                                      reward=random_reward)
    sampler = _gated_sampler(random_model, random_reward, 4.4)
    canvas, attention = sampler.build_canvas([random_model.encode_prompt(p) for p in PROMPTS])
    start = canvas.shape[1] - LENGTH
    logits = random_model.logits(canvas, attention, start)
    response = canvas[:, start:]
    guidance.begin_batch(PROMPTS, K, LENGTH)
    context = GuidanceContext(0, response, response == random_model.mask_token_id,
                              TrajectoryNoise.for_prompts(0, IDS, K), sampler.plan[0])
    steered = guidance.steer(logits, context).logits
    from entrgi.guidance.mix import entropy

    open_rows = entropy(logits).mean(-1) >= 4.4
    assert open_rows.any() and not open_rows.all()
    assert torch.equal(steered[~open_rows], logits[~open_rows].float())
    assert (steered[open_rows] != logits[open_rows]).any(-1).all()
