"""The denoising loop never reads a device value on the host (the guided step must not wait on the GPU).

On a CPU there is no device to wait for, so the check is structural: while `denoise` runs,
every Tensor method that copies a value to the host raises. Adam's step counter is a CPU
tensor by design (also on CUDA) and is read inside torch.optim; that is allowed. `numpy` is
not on the list: only a CPU tensor has a numpy view (a CUDA one raises), and that view shares
its memory, so it cannot hide a wait on the device (`entrgi.categorical` sorts through it on CPU).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import sys

import pytest
import torch
from conftest import guidance_config, nan_from_call

from entrgi.guidance import FKConfig, FKGuidance, NoGuidance, RewardGradientGuidance, SMCConfig, SMCGuidance
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

HOST_READS = ["item", "tolist", "cpu", "__bool__", "__int__", "__float__", "__index__", "nonzero"]


@contextlib.contextmanager
def host_reads_forbidden(allowed: list | None = None):
    """Every host read raises, but Adam's; with `allowed` (a list), the reads of `entrgi.host_flag` (the one
    read of the options that skip work) go through and are appended to it."""
    saved = {name: getattr(torch.Tensor, name) for name in HOST_READS}

    def forbid(name):
        def read(self, *args, **kwargs):
            caller = sys._getframe(1).f_code.co_filename
            if allowed is not None and caller.endswith("entrgi/host_flag.py"):
                allowed.append(name)
                return saved[name](self, *args, **kwargs)
            if "torch/optim" in caller:
                return saved[name](self, *args, **kwargs)
            raise AssertionError(f"Tensor.{name} called inside the denoising loop")

        return read

    for name in HOST_READS:
        setattr(torch.Tensor, name, forbid(name))
    try:
        yield
    finally:
        for name, method in saved.items():
            setattr(torch.Tensor, name, method)


def test_the_guard_catches_a_host_read():
    with pytest.raises(AssertionError, match="item"), host_reads_forbidden():
        torch.ones(1).sum().item()


PROMPTS = ["Describe the cat.", "Why is the old robot happy?"]


def _denoise_reading_nothing(model, guidance, schedule, temperature: float = 0.7, patched=None, allowed=None):
    """Run the denoising loop on PROMPTS (K = 2, 6 tokens) with every host read raising (but `allowed`'s),
    inside `patched`."""
    sampler = DiffusionSampler(SamplerConfig(num_samples=2, max_new_tokens=6, temperature=temperature), model=model,
                               schedule=schedule, guidance=guidance)
    canvas, attention = sampler.build_canvas([model.encode_prompt(p) for p in PROMPTS])
    guidance.begin_batch(PROMPTS, 2, 6)
    with patched or contextlib.nullcontext(), host_reads_forbidden(allowed):
        return sampler.denoise(canvas, attention, TrajectoryNoise.for_prompts(0, ["a", "b"], 2))


@pytest.mark.parametrize("rule", [None, "soft", "aps", "entrgi"])
@pytest.mark.parametrize("schedule", [EntropySchedule, MaskGitPlusSchedule, OriginSchedule, LowConfidenceSchedule])
def test_denoise_reads_nothing_back(random_model, random_reward, rule, schedule):
    guidance = (RewardGradientGuidance(guidance_config(rule=rule, keep="best"), model=random_model,
                                       reward=random_reward)
                if rule else NoGuidance())
    config = LowConfidenceConfig(steps=4, block_length=3) if schedule is LowConfidenceSchedule else \
        ScheduleConfig(steps=4, alg_temp=0.5)
    denoised = _denoise_reading_nothing(random_model, guidance, schedule(config))
    assert len(denoised.steps) == 4
    assert denoised.nonfinite.read() == {}


@pytest.mark.parametrize("mode", ["prefix", "dual"])
def test_the_dllm_cache_reads_nothing_back(random_model, random_reward, mode):
    """model.cache: block boundaries are host ints; fk reorders the cached rows on the device."""
    cached = copy.copy(random_model)
    cached.config = dataclasses.replace(random_model.config, cache=mode)
    guidance = FKGuidance(FKConfig(resample_every=1, ess_threshold=1.0), model=cached, reward=random_reward)
    denoised = _denoise_reading_nothing(cached, guidance, LowConfidenceSchedule(LowConfidenceConfig(steps=4,
                                                                                                    block_length=3)))
    assert len(denoised.steps) == 4
    assert denoised.compute.dllm_forward_tokens < 4 * 4 * (6 + max(len(cached.encode_prompt(p)) for p in PROMPTS))


@pytest.mark.parametrize("source", ["dllm", "guided"])
def test_the_non_finite_check_reads_nothing_back(random_model, random_reward, source):
    """NaN logits from step 2 on (the dLLM's, or the guided ones through a NaN reward) are recorded on the device."""
    guidance = RewardGradientGuidance(guidance_config(rule="entrgi", M=1), model=random_model, reward=random_reward)
    patched = (random_model, "logits") if source == "dllm" else (random_reward, "score_embeds")
    denoised = _denoise_reading_nothing(random_model, guidance, EntropySchedule(ScheduleConfig(steps=4)),
                                        patched=nan_from_call(*patched, 2))
    assert denoised.nonfinite.read() == ({"dllm": 2, "guided": 2} if source == "dllm" else {"guided": 2})


@pytest.mark.parametrize("resampling", ["systematic", "multinomial"])
@pytest.mark.parametrize("estimate", ["argmax", "sample"])
def test_resampling_reads_nothing_back(random_model, random_reward, resampling, estimate):
    """fk scores, weighs and resamples on the device: on a schedule and by ESS, decided by tensor masks."""
    guidance = FKGuidance(FKConfig(resampling=resampling, estimate=estimate, resample_every=2, ess_threshold=0.9),
                          model=random_model, reward=random_reward)
    steps = _denoise_reading_nothing(random_model, guidance, EntropySchedule(ScheduleConfig(steps=4))).steps
    assert [("resampled_fraction" in row) for row in steps] == [True, True, True, False]


@pytest.mark.parametrize("temperature", [0.7, 0.0])
@pytest.mark.parametrize("schedule", [EntropySchedule, OriginSchedule])
def test_smc_reads_nothing_back(random_model, random_reward, schedule, temperature):
    """entrgi-smc: guided proposal, importance ratios at the committed positions (planned or not, drawn or
    greedy), weights and resampling, all on the device."""
    config = SMCConfig(proposal=guidance_config(rule="entrgi", M=2, temperature=0.7),
                       steering=FKConfig(resample_every=2, ess_threshold=0.9))
    guidance = SMCGuidance(config, model=random_model, reward=random_reward)
    steps = _denoise_reading_nothing(random_model, guidance, schedule(ScheduleConfig(steps=4)), temperature).steps
    assert [("log_importance_mean" in row) for row in steps] == [True, True, True, False]


@pytest.mark.parametrize(("gate", "reads"), [(0.0, 4), (100.0, 2)])
def test_the_entropy_gate_reads_one_flag_per_guided_step_until_every_gate_closed(random_model, random_reward, gate,
                                                                                   reads):
    """Open throughout (0 nats): one read per step. Closed at step 0 (above log V): step 0's and step 1's, then none."""
    guidance = RewardGradientGuidance(guidance_config(rule="entrgi", entropy_gate=gate), model=random_model,
                                      reward=random_reward)
    allowed = []
    steps = _denoise_reading_nothing(random_model, guidance, EntropySchedule(ScheduleConfig(steps=4)),
                                     allowed=allowed).steps
    assert len(allowed) == reads
    guided = 4 if gate == 0 else 1
    assert ["reward_curve" in row for row in steps] == [True] * guided + [False] * (4 - guided)


@pytest.mark.parametrize("rule", [None, "entrgi"])
def test_threshold_decoding_reads_one_flag_per_step(random_model, random_reward, rule):
    """Whether anything is still masked, after each step's commit but the last; the loop stops at the first no."""
    guidance = (RewardGradientGuidance(guidance_config(rule=rule), model=random_model, reward=random_reward)
                if rule else NoGuidance())
    allowed = []
    schedule = MaskGitPlusSchedule(ScheduleConfig(steps=6, confidence_threshold=0.2))
    steps = _denoise_reading_nothing(random_model, guidance, schedule, allowed=allowed).steps
    assert len(allowed) == len(steps) - (len(steps) == 6)
