"""`python -m entrgi.perf`: where the time of a guided denoising step goes.

For each guidance method it runs the sampler on one batch of the configured benchmark and
splits the seconds per denoising step into the dLLM forward, the RM forward, the RM
backward, and everything else (the overhead the framework adds: sampling, top-p, the
mixing math, Adam, bookkeeping). Medians over repeats after a warm-up; printed as a table
and written to `perf.json` in the job directory. Then each vocabulary-sized operation of a
step (top-p draw, softmax, entropy, soft embedding, ranking) is timed alone on the preset's
shapes, the masked logits of the batch's first dLLM forward.

The split is measured by wrapping the two models from outside: timing never enters the
sampler or guidance code. The RM backward is bracketed by two identity autograd nodes, one
on the scores (its backward runs first) and one on the response embeddings (runs last).
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import torch
from hydra import compose
from hydra.core.hydra_config import HydraConfig
from hydra.errors import ConfigCompositionException
from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from entrgi.categorical import draw_logits, sample_nucleus
from entrgi.cli import describe, hydra_command
from entrgi.components import build
from entrgi.guidance.mix import entropy, entropy_weight, relaxed_embeddings, soft_distribution
from entrgi.noise import TrajectoryNoise
from entrgi.rewards import RewardModel
from entrgi.rewards.vocab_bridge import BridgedReward
from entrgi.sampler import DiffusionSampler
from entrgi.validation import ConfigError, validate
from entrgi.weights import ResourceUnavailable

PARTS = ("dllm_forward", "rm_forward", "rm_backward")
OPERATIONS = ("nucleus", "softmax", "entropy", "soft_embedding", "ranking")


@dataclass
class Clock:
    """Accumulates seconds per part; synchronises the device before every reading."""

    device: torch.device
    seconds: dict[str, float] = field(default_factory=dict)
    marks: dict[str, float] = field(default_factory=dict)
    peak_rss: int = 0

    def now(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def add(self, part: str, seconds: float) -> None:
        self.seconds[part] = self.seconds.get(part, 0.0) + seconds
        self.peak_rss = max(self.peak_rss, psutil.Process().memory_info().rss)


class _Mark(torch.autograd.Function):
    """Identity whose backward records the time it runs at."""

    @staticmethod
    def forward(ctx, tensor, clock, name):
        ctx.clock, ctx.name = clock, name
        return tensor.view_as(tensor)

    @staticmethod
    def backward(ctx, grad):
        ctx.clock.marks[ctx.name] = ctx.clock.now()
        if ctx.name == "rm_backward_end":
            ctx.clock.add("rm_backward", ctx.clock.marks["rm_backward_end"] - ctx.clock.marks["rm_backward_start"])
        return grad, None, None


def instrument(model, reward, clock: Clock) -> None:
    """Wrap `model.logits`, `model.window_logits` (the forwards of `model.cache`) and `reward.score_embeds`
    (instance attributes) to time them."""
    score_embeds = reward.score_embeds

    def timed_dllm(forward):
        def timed(*args, **kwargs):
            start = clock.now()
            out = forward(*args, **kwargs)
            clock.add("dllm_forward", clock.now() - start)
            return out

        return timed

    def timed_score_embeds(layout, response_embeds, visible, **targets):  # targets: reward=ar-likelihood
        start = clock.now()
        if response_embeds.requires_grad:
            response_embeds = _Mark.apply(response_embeds, clock, "rm_backward_end")
        scores = score_embeds(layout, response_embeds, visible, **targets)
        clock.add("rm_forward", clock.now() - start)
        return _Mark.apply(scores, clock, "rm_backward_start") if scores.requires_grad else scores

    model.logits, model.window_logits = timed_dllm(model.logits), timed_dllm(model.window_logits)
    reward.score_embeds = timed_score_embeds


def measure(cfg: DictConfig, model, reward, repeats: int, warmup: int) -> dict[str, Any]:
    """Seconds per denoising step by part (medians over repeats) for the guidance in `cfg`."""
    _, guidance, sampler = _components(cfg, model, reward)
    prompts = build(cfg.benchmark).prompts()[: cfg.sampler.batch_size]
    texts, ids = [p.text for p in prompts], [p.id for p in prompts]
    clock = Clock(model.device)
    instrument(model, reward, clock)
    if model.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(model.device)
    runs = []
    try:
        for repeat in tqdm(range(warmup + repeats), desc=f"perf {cfg.name} ({warmup} warm-up + {repeats} timed)",
                           unit="batch"):
            canvas, attention = sampler.build_canvas([model.encode_prompt(t) for t in texts])
            noise = TrajectoryNoise.for_prompts(cfg.seed, ids, sampler.num_samples, device=canvas.device)
            guidance.begin_batch(texts, sampler.num_samples, sampler.max_new_tokens)
            clock.seconds.clear()
            start = clock.now()
            steps_run = len(sampler.denoise(canvas, attention, noise).steps)  # < schedule.steps if a threshold ends it
            total = clock.now() - start
            if repeat >= warmup:
                runs.append({"total": total, "steps": steps_run, **{p: clock.seconds.get(p, 0.0) for p in PARTS}})
    finally:  # the wrappers are instance attributes: deleting them restores the methods
        del model.logits, model.window_logits, reward.score_embeds
    steps = statistics.median(run["steps"] for run in runs)
    per_step = {key: statistics.median(run[key] / run["steps"] for run in runs) for key in ("total", *PARTS)}
    per_step["overhead"] = statistics.median((run["total"] - sum(run[p] for p in PARTS)) / run["steps"] for run in runs)
    tokens = canvas.shape[0] * sampler.max_new_tokens
    peak = torch.cuda.max_memory_allocated(model.device) if model.device.type == "cuda" else clock.peak_rss
    return {
        "seconds_per_step": per_step,
        "overhead_fraction": per_step["overhead"] / per_step["total"],
        "tokens_per_second": tokens / (per_step["total"] * steps),
        "peak_memory_mb": peak / 2**20,
        "peak_memory_kind": "cuda allocator" if model.device.type == "cuda" else "process RSS",
        "trajectories": canvas.shape[0],
        "steps": steps,
        "repeats": repeats,
    }


def _components(cfg: DictConfig, model, reward):
    """(schedule, guidance, sampler) of the composed job `cfg`."""
    schedule = build(cfg.schedule)
    guidance = build(cfg.guidance, model=model, reward=reward)
    sampler = DiffusionSampler(OmegaConf.to_object(cfg.sampler), model=model, schedule=schedule, guidance=guidance)
    return schedule, guidance, sampler


def time_operations(cfg: DictConfig, model, reward, repeats: int) -> dict[str, Any]:
    """Seconds per call of each vocabulary-sized operation, timed alone (median of `repeats` after one
    warm-up call) on the masked logits φ [N, L, V] of the first dLLM forward of one batch of `cfg`:

        nucleus: `sample_nucleus` of the commit draw's logits (φ/τ, <mask> excluded) at the sampler's top-p/top-k;
        softmax: softmax(φ) in float32;
        entropy: `entropy(φ)`;
        soft_embedding: `soft_distribution` and `relaxed_embeddings` (EntRGi weight), forward and backward into φ,
            as a guidance iteration runs them;
        ranking: the schedule's confidence from the draw's distribution softmax(φ/τ) and the drawn tokens.

    A guided step runs the nucleus M + 1 times and the others about M times, over its masked positions.
    """
    schedule, _, sampler = _components(cfg, model, reward)
    texts = [p.text for p in build(cfg.benchmark).prompts()[: cfg.sampler.batch_size]]
    canvas, attention = sampler.build_canvas([model.encode_prompt(t) for t in texts])
    logits = model.logits(canvas, attention, canvas.shape[1] - sampler.max_new_tokens)
    temperature = cfg.sampler.temperature or 1.0
    scaled = draw_logits(logits, temperature, model.mask_token_id)
    generator = torch.Generator(logits.device).manual_seed(cfg.seed)
    uniforms = torch.rand(logits.shape[:-1], generator=generator, device=logits.device)
    table = BridgedReward(model, reward).table
    weight = entropy_weight(logits)
    tokens = sample_nucleus(scaled, uniforms, cfg.sampler.top_p, cfg.sampler.top_k)
    probs = torch.softmax(scaled, dim=-1)
    grad = torch.randn(*logits.shape[:-1], table.shape[1], generator=generator, device=logits.device, dtype=table.dtype)

    def soft_embedding():
        phi = logits.detach().requires_grad_(True)
        soft, ent = soft_distribution(phi, temperature)
        mix = relaxed_embeddings(phi, table, tokens, weight, temperature, entropy_nats=ent, soft_probs=soft)
        mix.embeds.backward(grad)

    operations = {
        "nucleus": lambda: sample_nucleus(scaled, uniforms, cfg.sampler.top_p, cfg.sampler.top_k),
        "softmax": lambda: torch.softmax(logits, dim=-1),
        "entropy": lambda: entropy(logits),
        "soft_embedding": soft_embedding,
        "ranking": lambda: schedule.confidence(probs, tokens),
    }
    clock = Clock(model.device)
    seconds = {}
    for name in tqdm(OPERATIONS, desc=f"vocabulary-sized operations ({repeats} timed each)", unit="op"):
        runs = []
        for repeat in range(repeats + 1):
            start = clock.now()
            operations[name]()
            if repeat:  # the first call warms up
                runs.append(clock.now() - start)
        seconds[name] = statistics.median(runs)
    return {"shape": list(logits.shape), "seconds_per_call": seconds, "repeats": repeats}


def format_operations(operations: dict[str, Any]) -> str:
    if operations.get("out_of_memory"):
        return "Vocabulary-sized operations alone: out of memory"
    n, length, vocab = operations["shape"]
    lines = [f"Vocabulary-sized operations alone, on the first step's masked logits [{n}, {length}, {vocab}] "
             f"(median of {operations['repeats']}):", "| operation | ms/call |", "|---|---|"]
    lines += [f"| {name} | {1000 * s:.1f} |" for name, s in operations["seconds_per_call"].items()]
    return "\n".join(lines)


def format_table(results: dict[str, dict[str, Any]]) -> str:
    header = "| guidance | s/step | dLLM fwd | RM fwd | RM bwd | overhead | overhead % | tok/s | peak MB |"
    lines = [header, "|" + "---|" * 9]
    for name, r in results.items():
        if r.get("out_of_memory"):
            lines.append(f"| {name} | out of memory |" + " |" * 7)
            continue
        s = r["seconds_per_step"]
        lines.append(
            f"| {name} | {s['total']:.4f} | {s['dllm_forward']:.4f} | {s['rm_forward']:.4f} | {s['rm_backward']:.4f} "
            f"| {s['overhead']:.4f} | {100 * r['overhead_fraction']:.1f} | {r['tokens_per_second']:.1f} "
            f"| {r['peak_memory_mb']:.0f} |"
        )
    return "\n".join(lines)


@hydra_command(config_name="perf", prog="entrgi.perf")
def main(cfg: DictConfig) -> None:
    try:
        validate(cfg)
        if not issubclass(get_class(cfg.reward._target_), RewardModel):
            raise ConfigError(f"reward={HydraConfig.get().runtime.choices.get('reward')} is not a reward model: "
                              "entrgi.perf times the RM's forward and backward passes (use reward=tiny or skywork-*)")
        overrides = [o for o in HydraConfig.get().overrides.task if not o.startswith("guidance=")]
        method_cfgs = {method: _compose_method(overrides, method) for method in cfg.perf.methods}
        model, reward = build(cfg.model), build(cfg.reward)
    except (ConfigError, ResourceUnavailable) as error:
        print(f"entrgi.perf: error: {error}", file=sys.stderr)
        sys.exit(2)
    report = {"overrides": overrides, **measure_all(cfg, method_cfgs, model, reward)}
    out = Path(HydraConfig.get().runtime.output_dir) / cfg.perf.output
    out.write_text(json.dumps(report, indent=2))
    print(format_table(report["results"]))
    if "operations" in report:
        print(format_operations(report["operations"]))
    print(f"written to {out}")


def measure_all(cfg: DictConfig, method_cfgs: dict[str, DictConfig], model, reward) -> dict[str, Any]:
    """{"results": the split of each method, "operations": the vocabulary-sized operations (unless
    `perf.operation_repeats` is 0)}. A part that runs out of device memory is recorded as
    {"out_of_memory": true} and the rest goes on: on a GPU this is a memory benchmark."""
    results = {}
    for method, method_cfg in method_cfgs.items():
        try:
            results[method] = measure(method_cfg, model, reward, cfg.perf.repeats, cfg.perf.warmup)
        except torch.OutOfMemoryError:
            results[method] = {"out_of_memory": True}
        if model.device.type == "cuda":
            torch.cuda.empty_cache()
    report = {"results": results}
    if cfg.perf.operation_repeats:  # after the methods: its temporaries would count in their peak memory
        try:
            report["operations"] = time_operations(cfg, model, reward, cfg.perf.operation_repeats)
        except torch.OutOfMemoryError:
            report["operations"] = {"out_of_memory": True}
    return report


def _compose_method(overrides: list[str], method: str) -> DictConfig:
    """The perf config with `guidance=<method>`, composed and checked before any model loads.

    Raises:
        ConfigError: `method` is not a guidance option, or the composed config has a bad value.
    """
    try:
        method_cfg = compose(config_name="perf", overrides=[*overrides, f"guidance={method}"])
    except ConfigCompositionException as error:
        raise ConfigError(f"perf.methods: {describe(error)}") from None
    validate(method_cfg)
    return method_cfg


if __name__ == "__main__":
    main()
