"""Fast-dLLM's block-wise key/value cache (`model.cache`, `entrgi.models.block_cache`).

Exact where it must be: at a block's first step, and for a one-layer dLLM (whose keys/values depend on
their own column only) at every step; approximate otherwise, and then really used.
"""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

from entrgi.components import build
from entrgi.guidance import FKConfig, FKGuidance, NoGuidance
from entrgi.models import BlockCache, DiffusionLM
from entrgi.noise import TrajectoryNoise
from entrgi.preflight import check_job
from entrgi.sampler import DiffusionSampler, SamplerConfig
from entrgi.schedule import EntropySchedule, LowConfidenceConfig, LowConfidenceSchedule, ScheduleConfig
from entrgi.validation import ConfigError

PROMPTS = ["Hi", "Tell me a short story about a quiet garden, please.", "Why is the robot happy?"]
IDS = ["p-hi", "p-story", "p-robot"]
LENGTH, K = 8, 2


@pytest.fixture(scope="module", params=["dream", "llada"])
def dllm(request, random_model, compose) -> DiffusionLM:
    """The random world's Dream-format (Qwen2, logit shift) and LLaDA-format (Llama, no shift) dLLMs."""
    return random_model if request.param == "dream" else build(compose(["model=random-llada"]).model)


def _cached(model: DiffusionLM, mode: str) -> DiffusionLM:
    """The same network with `model.cache=mode`."""
    other = copy.copy(model)
    other.config = dataclasses.replace(model.config, cache=mode)
    return other


def _one_layer(model: DiffusionLM) -> DiffusionLM:
    """`model` cut to its first layer: its keys/values depend on their own column's token only."""
    other = copy.deepcopy(model)
    other.network.model.layers = other.network.model.layers[:1]
    other.network.config.num_hidden_layers = 1
    return other


def _canvas(model: DiffusionLM) -> tuple[torch.Tensor, torch.Tensor, int]:
    sampler = DiffusionSampler(SamplerConfig(num_samples=1, max_new_tokens=LENGTH), model=model,
                               schedule=EntropySchedule(ScheduleConfig(steps=LENGTH)), guidance=NoGuidance())
    canvas, attention = sampler.build_canvas([model.encode_prompt(p) for p in PROMPTS])
    return canvas, attention, canvas.shape[1] - LENGTH


def _two_steps(model: DiffusionLM, mode: str, block: tuple[int, int]):
    """Logits and widths of a block's first step and of a step after some of its tokens (and one before it)
    were committed, with the uncached logits of that second canvas."""
    canvas, attention, start = _canvas(model)
    canvas[:, start : start + block[0]] = 11  # finished blocks
    cache = BlockCache(model, mode)
    first, first_width = cache.logits_and_width(canvas, attention, start, block)
    exact_first = model.logits(canvas, attention, start)
    canvas[:, start + block[0]] = 7
    canvas[:, start + block[0] + 2] = 9
    inner, inner_width = cache.logits_and_width(canvas, attention, start, block)
    return (first, exact_first, first_width), (inner, model.logits(canvas, attention, start), inner_width), start


@pytest.mark.parametrize("mode", ["prefix", "dual"])
def test_a_blocks_first_step_is_the_full_forward_then_fewer_columns(dllm, mode):
    (first, exact, first_width), (inner, uncached, inner_width), start = _two_steps(dllm, mode, (2, 6))
    assert torch.equal(first, exact)
    assert first_width == start + LENGTH
    shift = int(dllm.logit_shift)  # the column before the block is recomputed under the shift
    assert inner_width == (LENGTH - 2 if mode == "prefix" else 4) + shift
    assert inner.shape == uncached.shape
    # Two layers: the kept keys/values are stale, and the block's logits move (the cache is really read).
    assert (inner[:, 2:6] - uncached[:, 2:6]).abs().max() > 1e-3


@pytest.mark.parametrize("mode", ["prefix", "dual"])
@pytest.mark.parametrize("block", [(0, 4), (4, 8), (2, 6)])
def test_a_one_layer_dllm_is_cached_exactly(dllm, mode, block):
    """With the logit shift the block's first position reads the column before it: recomputed, so exact too."""
    model = _one_layer(dllm)
    _, (inner, uncached, _), _ = _two_steps(model, mode, block)
    fresh = slice(block[0], LENGTH if mode == "prefix" else block[1])
    torch.testing.assert_close(inner[:, fresh], uncached[:, fresh], rtol=1e-5, atol=1e-5)
    multi_layer = _two_steps(dllm, mode, block)[1]
    assert (multi_layer[0][:, fresh] - multi_layer[1][:, fresh]).abs().max() > 1e-3


def _sampler(model, mode, block_length, guidance=None, steps=4) -> DiffusionSampler:
    return DiffusionSampler(SamplerConfig(num_samples=K, max_new_tokens=LENGTH, temperature=0.7),
                            model=_cached(model, mode),
                            schedule=LowConfidenceSchedule(LowConfidenceConfig(steps=steps, block_length=block_length)),
                            guidance=guidance or NoGuidance())


@pytest.mark.parametrize("mode", ["prefix", "dual"])
@pytest.mark.parametrize("block_length", [2, 4, 8])
def test_one_layer_samples_equal_the_uncached_ones(dllm, mode, block_length):
    model = _one_layer(dllm)
    uncached = _sampler(model, "none", block_length, steps=8).generate(PROMPTS, IDS, seed=3)
    cached = _sampler(model, mode, block_length, steps=8).generate(PROMPTS, IDS, seed=3)
    assert torch.equal(cached.responses, uncached.responses)
    assert cached.compute.dllm_forward_tokens < uncached.compute.dllm_forward_tokens


def test_reordered_rows_read_their_ancestors_cache(dllm):
    """After `reorder(rows)` a row's cache is the one built on the canvas row it was copied from."""
    canvas, attention, start = _canvas(dllm)
    canvas[:, start : start + 2] = torch.tensor([[11, 12], [13, 14], [15, 16]])  # a finished block per row
    rows = torch.tensor([2, 2, 0])
    moved, fresh = BlockCache(dllm, "prefix"), BlockCache(dllm, "prefix")
    moved.logits_and_width(canvas, attention, start, (2, 6))
    moved.reorder(rows)
    canvas, attention = canvas.index_select(0, rows), attention.index_select(0, rows)
    fresh.logits_and_width(canvas, attention, start, (2, 6))
    canvas[:, start + 3] = 9
    torch.testing.assert_close(moved.logits_and_width(canvas, attention, start, (2, 6))[0],
                               fresh.logits_and_width(canvas, attention, start, (2, 6))[0], rtol=1e-6, atol=1e-6)


def test_particles_carry_their_cache_when_resampled(random_model, random_reward):
    """fk resamples inside each block: a slot reads its ancestor's cached prefix (one layer: exact samples)."""
    model = _one_layer(random_model)
    fk = FKConfig(resample_every=1, ess_threshold=1.0, strength=10.0, resampling="multinomial")
    runs = {mode: _sampler(model, mode, 2, FKGuidance(fk, model=model, reward=random_reward), steps=8)
            .generate(PROMPTS, IDS, seed=4) for mode in ("none", "prefix")}
    assert all(row["resampled_fraction"] == 1.0 for row in runs["prefix"].steps[:-1])
    assert torch.equal(runs["prefix"].responses, runs["none"].responses)


def test_cached_sampling_keeps_the_sampler_invariants(random_model):
    """Two layers (approximate): prompts kept, masks only decrease, seeded, batch-size invariant, counted."""
    sampler = _sampler(random_model, "prefix", 4)
    canvas, attention = sampler.build_canvas([random_model.encode_prompt(p) for p in PROMPTS])
    prompt = canvas[:, : canvas.shape[1] - LENGTH].clone()
    denoised = sampler.denoise(canvas, attention, TrajectoryNoise.for_prompts(2, IDS, K))
    assert torch.equal(canvas[:, : prompt.shape[1]], prompt)
    assert not (canvas == random_model.mask_token_id).any()
    masked = [row["masked"] for row in denoised.steps]
    assert masked == sorted(masked, reverse=True)
    width, rows, shift = canvas.shape[1], canvas.shape[0], int(random_model.logit_shift)
    # Steps 0 and 2 start a block (the full canvas); 1 and 3 run from the block's first column on.
    expected = rows * (2 * width + (LENGTH + shift) + (LENGTH - 4 + shift))
    assert denoised.compute.dllm_forward_tokens == expected
    a = sampler.generate(PROMPTS, IDS, seed=8).responses
    assert torch.equal(a, sampler.generate(PROMPTS, IDS, seed=8).responses)
    for b, (p, pid) in enumerate(zip(PROMPTS, IDS, strict=True)):
        assert torch.equal(sampler.generate([p], [pid], seed=8).responses, a[b * K : (b + 1) * K])
    assert not torch.equal(a, _sampler(random_model, "none", 4).generate(PROMPTS, IDS, seed=8).responses)


def test_a_cache_needs_blocks(compose, random_model):
    cfg = compose(["experiment=tiny", "model.cache=prefix"])
    with pytest.raises(ConfigError, match=r"model.cache=prefix needs a block-wise schedule"):
        check_job(cfg, build(cfg.schedule))
    blocks = compose(["experiment=tiny", "model.cache=dual", "schedule=low_confidence", "schedule.block_length=8"])
    check_job(blocks, build(blocks.schedule))
    with pytest.raises(ConfigError, match="model.cache=dual"):
        DiffusionSampler(SamplerConfig(max_new_tokens=LENGTH), model=_cached(random_model, "dual"),
                         schedule=EntropySchedule(ScheduleConfig(steps=4)), guidance=NoGuidance())
