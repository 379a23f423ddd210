"""`python -m entrgi.perf`: where the time of a guided denoising step goes.

For each guidance method it runs the sampler on one batch of the configured benchmark and
splits the seconds per denoising step into the dLLM forward, the RM forward, the RM
backward, and everything else (the overhead the framework adds: sampling, top-p, the
mixing math, Adam, bookkeeping). Medians over repeats after a warm-up; printed as a table
and written to `perf.json` in the job directory.

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

from entrgi.cli import describe, hydra_command
from entrgi.components import build
from entrgi.noise import TrajectoryNoise
from entrgi.rewards import RewardModel
from entrgi.sampler import DiffusionSampler
from entrgi.validation import ConfigError, validate
from entrgi.weights import ResourceUnavailable

PARTS = ("dllm_forward", "rm_forward", "rm_backward")


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

    def timed_score_embeds(layout, response_embeds, visible):
        start = clock.now()
        if response_embeds.requires_grad:
            response_embeds = _Mark.apply(response_embeds, clock, "rm_backward_end")
        scores = score_embeds(layout, response_embeds, visible)
        clock.add("rm_forward", clock.now() - start)
        return _Mark.apply(scores, clock, "rm_backward_start") if scores.requires_grad else scores

    model.logits, model.window_logits = timed_dllm(model.logits), timed_dllm(model.window_logits)
    reward.score_embeds = timed_score_embeds


def measure(cfg: DictConfig, model, reward, repeats: int, warmup: int) -> dict[str, Any]:
    """Seconds per denoising step by part (medians over repeats) for the guidance in `cfg`."""
    schedule = build(cfg.schedule)
    guidance = build(cfg.guidance, model=model, reward=reward)
    sampler = DiffusionSampler(OmegaConf.to_object(cfg.sampler), model=model, schedule=schedule, guidance=guidance)
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
            sampler.denoise(canvas, attention, noise)
            total = clock.now() - start
            if repeat >= warmup:
                runs.append({"total": total, **{part: clock.seconds.get(part, 0.0) for part in PARTS}})
    finally:  # the wrappers are instance attributes: deleting them restores the methods
        del model.logits, model.window_logits, reward.score_embeds
    steps = schedule.steps
    per_step = {key: statistics.median(run[key] for run in runs) / steps for key in ("total", *PARTS)}
    per_step["overhead"] = statistics.median(run["total"] - sum(run[p] for p in PARTS) for run in runs) / steps
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


def format_table(results: dict[str, dict[str, Any]]) -> str:
    header = "| guidance | s/step | dLLM fwd | RM fwd | RM bwd | overhead | overhead % | tok/s | peak MB |"
    lines = [header, "|" + "---|" * 9]
    for name, r in results.items():
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
    results = {method: measure(method_cfg, model, reward, cfg.perf.repeats, cfg.perf.warmup)
               for method, method_cfg in method_cfgs.items()}
    out = Path(HydraConfig.get().runtime.output_dir) / cfg.perf.output
    out.write_text(json.dumps({"overrides": overrides, "results": results}, indent=2))
    print(format_table(results))
    print(f"written to {out}")


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
