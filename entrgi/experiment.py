"""One job: load the components a config names, generate, score, and write the run directory."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from entrgi.benchmarks import Prompt
from entrgi.checkpoints import resolve_checkpoint
from entrgi.rewards import RewardModel
from entrgi.sampler import DiffusionSampler
from entrgi.tracking import RunDirectory
from entrgi.validation import validate

log = logging.getLogger(__name__)


def _sample_record(prompt: Prompt, responses: list[str], rewards: list[float]) -> dict[str, Any]:
    best = max(range(len(rewards)), key=rewards.__getitem__)
    return {
        "prompt_id": prompt.id,
        "prompt": prompt.text,
        "category": prompt.category,
        "responses": responses,
        "rewards": rewards,
        "best_index": best,
        "top1": rewards[best],
        "avgk": sum(rewards) / len(rewards),
    }


def run_experiment(cfg: DictConfig, output_dir: str | Path) -> dict[str, Any]:
    """Run the job `cfg` describes; returns the summary also written to summary.json."""
    validate(cfg)
    schedule = instantiate(cfg.schedule)
    schedule.check_length(cfg.sampler.max_new_tokens)
    # Locate both checkpoints before loading either: a missing 7B fails in seconds.
    resolve_checkpoint(cfg.model.path, "model.path")
    resolve_checkpoint(cfg.reward.path, "reward.path")

    run_dir = RunDirectory(output_dir)
    prompts: list[Prompt] = instantiate(cfg.benchmark).prompts()
    run_dir.write_metadata(cfg, {"seed": cfg.seed, "prompt_ids": [p.id for p in prompts]})
    torch.manual_seed(cfg.seed)  # nothing should draw from it; a guard for third-party code

    model = instantiate(cfg.model)
    reward: RewardModel = instantiate(cfg.reward)
    guidance = instantiate(cfg.guidance, model=model, reward=reward)
    sampler = DiffusionSampler.from_config(model, schedule, guidance, cfg.sampler)
    logger = instantiate(cfg.logger)
    logger.start(OmegaConf.to_container(cfg, resolve=True), run_dir.path, name=f"{cfg.name}-seed{cfg.seed}")
    summary = None
    try:
        summary = _generate_all(cfg, prompts, sampler, reward, run_dir, logger)
        summary.update(guidance.summary())
        for name, content in guidance.artifacts().items():
            run_dir.write_json(name, content)
        run_dir.write_summary(summary)
        return summary
    finally:
        logger.finish(summary, failed=summary is None)


def _generate_all(cfg, prompts, sampler, reward, run_dir, logger) -> dict[str, Any]:
    k, batch_size = cfg.sampler.num_samples, cfg.sampler.batch_size
    started = time.perf_counter()
    top1, avgk = [], []
    step_means: dict[str, list[float]] = {}
    progress = tqdm(total=len(prompts), desc=f"{cfg.name} prompts", unit="prompt")
    for first in range(0, len(prompts), batch_size):
        batch = prompts[first : first + batch_size]
        generation = sampler.generate([p.text for p in batch], [p.id for p in batch], seed=cfg.seed)
        texts = [sampler.model.decode(row) for row in generation.responses.tolist()]
        rewards = reward.score_texts([p.text for p in batch for _ in range(k)], texts).tolist()
        records = [
            _sample_record(p, texts[i * k : (i + 1) * k], rewards[i * k : (i + 1) * k]) for i, p in enumerate(batch)
        ]
        steps = [{"batch": first // batch_size, **row} for row in generation.steps]
        run_dir.append_samples(records)
        run_dir.append_steps(steps)
        for row in generation.steps:
            for key in ("entropy_mean", "w_mean", "E_mean", "D_mean"):
                if key in row:
                    step_means.setdefault(key, []).append(row[key])
        top1 += [r["top1"] for r in records]
        avgk += [r["avgk"] for r in records]
        logger.log_batch(records, steps)
        progress.update(len(batch))
    progress.close()
    return {
        "top1_mean": sum(top1) / len(top1),
        "avgk_mean": sum(avgk) / len(avgk),
        "n_prompts": len(top1),
        "num_samples": k,
        "guidance": cfg.name,
        "benchmark": cfg.benchmark.name,
        "seed": cfg.seed,
        "wall_seconds": time.perf_counter() - started,
        # Means over guided steps of the per-step means over masked positions.
        **{key: sum(values) / len(values) for key, values in step_means.items()},
    }
