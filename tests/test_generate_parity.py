"""entrgi's sampler against independent restatements of Dream's and LLaDA's own generation loops.

The restatements below are written for these tests from the published algorithms (Dream's
`diffusion_generate` `_sample` loop, LLaDA's `generate`), one trajectory at a time and without
entrgi's machinery: the float32 timestep grid and `int(n · (1 − s/t))`; temperature, top-p (Dream's
rule: a token is dropped once the sorted mass before it exceeds p), top-k; the confidence of
each unmasking rule from the distribution the token was drawn from; LLaDA's blocks with
`mask_num // steps` per step. Only the network forward is shared (`model.logits`, pinned against
the raw backbone in test_models / test_real_formats). Two documented differences are fed in:
entrgi never draws `<mask>` (its logit is -inf for the draw on both sides) and ties among
confidences are broken leftmost. Random draws take the uniforms of entrgi's own streams, so
sampled trajectories must match too.
"""

from __future__ import annotations

import pytest
import torch

from entrgi.components import build
from entrgi.guidance import NoGuidance
from entrgi.noise import Stream, TrajectoryNoise
from entrgi.sampler import DiffusionSampler, SamplerConfig
from entrgi.schedule import (
    EntropySchedule,
    LowConfidenceConfig,
    LowConfidenceSchedule,
    MaskGitPlusSchedule,
    ScheduleConfig,
    TopKMarginSchedule,
)

PROMPTS = ["Describe the quiet cat.", "Why?"]
IDS = ["a", "b"]
SEED, K = 3, 2
RULES = {"maskgit_plus": MaskGitPlusSchedule, "topk_margin": TopKMarginSchedule, "entropy": EntropySchedule}


def _dream_top_p(logits: torch.Tensor, top_p: float | None) -> torch.Tensor:
    if top_p is None or top_p >= 1:
        return logits
    ordered, index = torch.sort(logits, descending=True)
    before = torch.cumsum(torch.softmax(ordered, dim=-1), dim=-1) - torch.softmax(ordered, dim=-1)
    drop = torch.zeros_like(logits, dtype=torch.bool).scatter(-1, index, before > top_p)
    return logits.masked_fill(drop, float("-inf"))


def _top_k(logits: torch.Tensor, top_k: int | None) -> torch.Tensor:
    if top_k is None:
        return logits
    return logits.masked_fill(logits < logits.topk(top_k).values[..., -1:], float("-inf"))


def dream_restated(model, canvas, attention, start, *, alg, steps, eps=1e-3, temperature=0.0, top_p=None,
                   top_k=None, uniforms=None, rank_unfiltered=False, deprioritized=()):
    """Dream's `_sample` loop, trajectory by trajectory; `uniforms(step)` [N, L] drive the draws.

    `rank_unfiltered`: the authors' entropy rule (negative entropy of softmax(logits/τ), unfiltered);
    `deprioritized`: token ids whose samples rank last (the authors' `deprioritize_eos`).
    """
    x = canvas.clone()
    timesteps = torch.linspace(1, eps, steps + 1)  # float32, as Dream
    mask_id = model.mask_token_id
    for i in range(steps):
        logits = model.logits(x, attention, start)
        t, s = timesteps[i].item(), timesteps[i + 1].item()
        for row in range(x.shape[0]):
            where = (x[row, start:] == mask_id).nonzero().flatten()
            n = len(where)
            if n == 0:
                continue
            raw = logits[row, where].clone()
            raw[:, mask_id] = float("-inf")  # entrgi never draws <mask>
            scaled = raw / temperature if temperature > 0 else raw
            probs = torch.softmax(_top_k(_dream_top_p(scaled, top_p), top_k), dim=-1)
            if temperature > 0:
                cdf = probs.double().cumsum(-1)
                u = uniforms(i)[row, where].double()
                x0 = torch.searchsorted(cdf, (u * cdf[:, -1]).unsqueeze(-1), right=True).squeeze(-1)
                confidence = probs.gather(-1, x0[:, None]).squeeze(-1)
            else:
                confidence, x0 = probs.max(dim=-1)
            if alg == "topk_margin":
                top2 = probs.sort(dim=-1, descending=True).values
                confidence = top2[:, 0] - top2[:, 1]
            elif alg == "entropy":
                unfiltered = logits[row, where] / (temperature or 1.0)
                ranked = torch.softmax(unfiltered, dim=-1) if rank_unfiltered else probs
                confidence = (ranked * torch.log(ranked + 1e-10)).sum(-1)
            confidence = torch.where(torch.isin(x0, torch.tensor(deprioritized, dtype=torch.long)),
                                     torch.full_like(confidence, -1e30), confidence)
            count = int(n * (1 - s / t)) if i < steps - 1 else n
            chosen = sorted(range(n), key=lambda j: -confidence[j].item())[:count]  # stable: leftmost ties
            for j in chosen:
                x[row, start + where[j]] = x0[j]
    return x[:, start:]


def llada_restated(model, canvas, attention, start, *, steps, block_length):
    """LLaDA's `generate` with temperature 0 and low_confidence remasking, trajectory by trajectory."""
    x = canvas.clone()
    length = x.shape[1] - start
    blocks = length // block_length
    per_block = steps // blocks
    for b in range(blocks):
        lo, hi = start + b * block_length, start + (b + 1) * block_length
        mask_num = (x[:, lo:hi] == model.mask_token_id).sum(-1)
        transfer = [[int(m) // per_block + (i < int(m) % per_block) for i in range(per_block)] for m in mask_num]
        for i in range(per_block):
            logits = torch.cat([torch.zeros(x.shape[0], start, model.vocab_size),
                                model.logits(x, attention, start)], dim=1)
            for row in range(x.shape[0]):
                p = torch.softmax(logits[row], dim=-1)
                drawable = logits[row].clone()
                drawable[:, model.mask_token_id] = float("-inf")  # entrgi never draws <mask>
                x0 = drawable.argmax(-1)
                confidence = p.gather(-1, x0[:, None]).squeeze(-1)
                masked = x[row] == model.mask_token_id
                candidates = [j for j in range(lo, hi) if masked[j]]
                chosen = sorted(candidates, key=lambda j: -confidence[j].item())[: transfer[row][i]]
                for j in chosen:
                    x[row, j] = x0[j]
    return x[:, start:]


def _entrgi(model, schedule, temperature, top_p, top_k=None, length=12):
    config = SamplerConfig(num_samples=K, max_new_tokens=length, temperature=temperature, top_p=top_p, top_k=top_k)
    sampler = DiffusionSampler(config, model=model, schedule=schedule, guidance=NoGuidance())
    canvas, attention = sampler.build_canvas([model.encode_prompt(p) for p in PROMPTS])
    noise = TrajectoryNoise.for_prompts(SEED, IDS, K)
    start = canvas.shape[1] - length
    before = canvas.clone()
    sampler.denoise(canvas, attention, noise)
    return before, attention, start, canvas[:, start:], noise


@pytest.mark.parametrize("alg", list(RULES))
@pytest.mark.parametrize("top_p", [None, 0.95])
def test_greedy_dream_trajectories_are_dreams(random_model, alg, top_p):
    """temperature 0: the argmax, confidences from the untempered (filtered) distribution, every rule."""
    schedule = RULES[alg](ScheduleConfig(steps=6, deprioritize_eos=False, order_from="drawn"))
    canvas, attention, start, ours, _ = _entrgi(random_model, schedule, 0.0, top_p or 1.0)
    theirs = dream_restated(random_model, canvas, attention, start, alg=alg, steps=6, top_p=top_p)
    assert torch.equal(ours, theirs)
    assert torch.equal(ours[0], ours[1]) and torch.equal(ours[2], ours[3])  # greedy: K identical samples


@pytest.mark.parametrize("alg", list(RULES))
def test_sampled_dream_trajectories_with_the_same_uniforms(random_model, alg):
    """τ = 0.7, top-p 0.95, top-k 40: fed entrgi's uniforms, Dream's loop takes the same path."""
    schedule = RULES[alg](ScheduleConfig(steps=6, deprioritize_eos=False, order_from="drawn"))
    canvas, attention, start, ours, noise = _entrgi(random_model, schedule, 0.7, 0.95, top_k=40)
    theirs = dream_restated(
        random_model, canvas, attention, start, alg=alg, steps=6, temperature=0.7, top_p=0.95, top_k=40,
        uniforms=lambda step: noise.uniform(Stream.COMMIT_TOKEN, step, ours.shape[1]),
    )
    assert torch.equal(ours, theirs)
    assert not torch.equal(ours[0], ours[1])  # the draws are really random


def test_the_reference_entropy_rule_ranks_on_the_unfiltered_distribution(random_model):
    """schedule=entropy's default (order_from=unguided) is the authors' ranking, not Dream's."""
    schedule = EntropySchedule(ScheduleConfig(steps=6, deprioritize_eos=False, order_from="unguided"))
    canvas, attention, start, ours, noise = _entrgi(random_model, schedule, 0.7, 0.95)
    theirs = dream_restated(
        random_model, canvas, attention, start, alg="entropy", steps=6, temperature=0.7, top_p=0.95,
        uniforms=lambda step: noise.uniform(Stream.COMMIT_TOKEN, step, ours.shape[1]), rank_unfiltered=True,
    )
    assert torch.equal(ours, theirs)


@pytest.mark.parametrize("block_length", [4, 12])
def test_greedy_llada_with_blocks_is_lladas(compose, random_paths, block_length):
    model = build(compose(["model=random-llada"]).model)
    schedule = LowConfidenceSchedule(LowConfidenceConfig(
        steps=6, block_length=block_length, deprioritize_eos=False, order_from="guided",
        order_temperature="untempered",
    ))
    canvas, attention, start, ours, _ = _entrgi(model, schedule, 0.0, 1.0)
    theirs = llada_restated(model, canvas, attention, start, steps=6, block_length=block_length)
    assert torch.equal(ours, theirs)


@pytest.mark.slow
def test_the_greedy_tiny_experiment_is_the_greedy_restatement(compose, toy_model):
    """`experiment=tiny sampler.temperature=0`: guidance leaves greedy logits alone (softmax(φ/0) has no
    gradient), so all K samples equal the greedy restatement of the authors' ranking (entropy on the
    unguided, unfiltered softmax, EOS deprioritised)."""
    from omegaconf import OmegaConf

    cfg = compose(["experiment=tiny", "sampler.temperature=0"])
    guidance = build(cfg.guidance, model=toy_model, reward=build(cfg.reward))
    sampler = DiffusionSampler(OmegaConf.to_object(cfg.sampler), model=toy_model, schedule=build(cfg.schedule),
                               guidance=guidance)
    prompts = [p.text for p in build(cfg.benchmark).slice()[:3]]
    canvas, attention = sampler.build_canvas([toy_model.encode_prompt(p) for p in prompts])
    start = canvas.shape[1] - cfg.sampler.max_new_tokens
    before = canvas.clone()
    sampler.guidance.begin_batch(prompts, cfg.sampler.num_samples, cfg.sampler.max_new_tokens)
    sampler.denoise(canvas, attention, TrajectoryNoise.for_prompts(1, ["a", "b", "c"], cfg.sampler.num_samples))
    theirs = dream_restated(toy_model, before, attention, start, alg="entropy", steps=cfg.schedule.steps,
                            top_p=cfg.sampler.top_p, rank_unfiltered=True, deprioritized=toy_model.stop_token_ids)
    assert torch.equal(canvas[:, start:], theirs)
    assert all(torch.equal(row, canvas[0, start:]) for row in canvas[: cfg.sampler.num_samples, start:])
