"""GPU-only checks (`gpu` marker, skipped without CUDA by conftest): the bf16 path of a guided step and
a denoising loop that never waits on the device (`torch.cuda.set_sync_debug_mode("error")`)."""

from __future__ import annotations

import pytest
import torch
from conftest import guidance_config

from entrgi.guidance import FKConfig, FKGuidance, RewardGradientGuidance, SMCConfig, SMCGuidance
from entrgi.models import DiffusionLM, DiffusionLMConfig
from entrgi.noise import TrajectoryNoise
from entrgi.rewards import RewardModel, RewardModelConfig
from entrgi.sampler import DiffusionSampler, SamplerConfig
from entrgi.schedule import EntropySchedule, ScheduleConfig

pytestmark = pytest.mark.gpu
PROMPTS = ["Describe the cat.", "Why is the old robot happy?"]


@pytest.fixture(scope="module")
def bf16_models(random_paths):
    model = DiffusionLM(DiffusionLMConfig(path=str(random_paths["dllm"]), tokenizer_class="Qwen2Tokenizer",
                                          device="cuda", dtype="bfloat16"))
    reward = RewardModel(RewardModelConfig(path=str(random_paths["reward"]), device="cuda", dtype="bfloat16"))
    return model, reward


def _sampler(model, guidance, temperature: float = 0.7) -> DiffusionSampler:
    return DiffusionSampler(SamplerConfig(num_samples=2, max_new_tokens=6, temperature=temperature), model=model,
                            schedule=EntropySchedule(ScheduleConfig(steps=4)), guidance=guidance)


def _denoise_without_syncs(model, guidance, temperature: float = 0.7):
    """Run the denoising loop on PROMPTS with any host-device sync raising; (its Denoised, the canvas)."""
    sampler = _sampler(model, guidance, temperature)
    canvas, attention = sampler.build_canvas([model.encode_prompt(p) for p in PROMPTS])
    guidance.begin_batch(PROMPTS, 2, 6)
    noise = TrajectoryNoise.for_prompts(0, ["a", "b"], 2, device=canvas.device)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        denoised = sampler.denoise(canvas, attention, noise)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert (canvas[:, -6:] != model.mask_token_id).all()
    return denoised


@pytest.mark.parametrize("rule", ["soft", "aps", "entrgi"])
def test_bf16_guided_generation_completes_with_finite_statistics(bf16_models, rule):
    """Both models in bf16 on CUDA: every response is unmasked, the relaxed reward curve is finite and w in [0, 1]."""
    model, reward = bf16_models
    guidance = RewardGradientGuidance(guidance_config(rule=rule), model=model, reward=reward)
    generation = _sampler(model, guidance).generate(PROMPTS, ["a", "b"], seed=1)
    assert generation.responses.shape == (2 * 2, 6)
    assert (generation.responses != model.mask_token_id).all()
    guided = [row for row in generation.steps if "E_mean" in row]
    assert len(guided) == 4 and all(torch.isfinite(torch.tensor(row["reward_curve"])).all() for row in guided)
    assert all(0.0 <= row["w_mean"] <= 1.0 for row in guided)


@pytest.mark.parametrize("rule", ["soft", "aps", "entrgi"])
def test_denoising_loop_never_syncs_with_the_device(bf16_models, rule):
    model, reward = bf16_models
    guidance = RewardGradientGuidance(guidance_config(rule=rule), model=model, reward=reward)
    denoised = _denoise_without_syncs(model, guidance)
    assert len(denoised.steps) == 4 and denoised.nonfinite.read() == {}


@pytest.mark.parametrize("resampling", ["systematic", "multinomial"])
def test_fk_resampling_never_syncs_with_the_device(bf16_models, resampling):
    """fk scores, weighs and resamples every step (by ESS and on a schedule) without waiting on the GPU."""
    model, reward = bf16_models
    guidance = FKGuidance(FKConfig(resampling=resampling, resample_every=2, ess_threshold=0.9), model=model,
                          reward=reward)
    steps = _denoise_without_syncs(model, guidance).steps
    assert [("ess_mean" in row) for row in steps] == [True, True, True, False]


@pytest.mark.parametrize("temperature", [0.7, 0.0])
def test_smc_never_syncs_with_the_device(bf16_models, temperature):
    """entrgi-smc: the guided proposal, its importance ratios (drawn or greedy), weights and resampling, on the GPU."""
    model, reward = bf16_models
    config = SMCConfig(proposal=guidance_config(rule="entrgi", M=2, temperature=0.7),
                       steering=FKConfig(resample_every=2, ess_threshold=0.9))
    guidance = SMCGuidance(config, model=model, reward=reward)
    steps = _denoise_without_syncs(model, guidance, temperature).steps
    assert [("log_importance_mean" in row) for row in steps] == [True, True, True, False]


def test_gpu_shapes_seam_builds_on_the_device_and_never_syncs(random_paths):
    """experiment=gpu-shapes at reduced size: both networks built from a config directly on the GPU in bf16
    (Dream's and Qwen3's vocabulary rows, past the tiny tokenizers), and the guided loop never waits on the GPU."""
    common = {"intermediate_size": 512, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2}
    model = DiffusionLM(DiffusionLMConfig(path=str(random_paths["dllm"]), tokenizer_class="Qwen2Tokenizer",
                                          device="cuda", dtype="bfloat16",
                                          shapes={**common, "hidden_size": 256, "vocab_size": 152064}))
    reward = RewardModel(RewardModelConfig(path=str(random_paths["reward"]), device="cuda", dtype="bfloat16",
                                           shapes={**common, "hidden_size": 256, "head_dim": 64,
                                                   "vocab_size": 151936}))
    weight = model.network.get_output_embeddings().weight
    assert (weight.device.type, weight.dtype, model.vocab_size) == ("cuda", torch.bfloat16, 152064)
    assert reward.embedding_table.shape == (151936, 256) and reward.embedding_table.is_cuda
    guidance = RewardGradientGuidance(guidance_config(rule="entrgi"), model=model, reward=reward)
    denoised = _denoise_without_syncs(model, guidance)
    assert len(denoised.steps) == 4 and denoised.nonfinite.read() == {}
