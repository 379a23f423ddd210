"""One job: load the components a config names, generate, score, and write the run directory.

Rerunning a job on its directory resumes it (`entrgi.run_directory`): a finished run returns its
summary without loading a model; otherwise the prompts already committed to `samples.jsonl`
are kept and only the others are generated. The summary, the step statistics and the
entropy/error histogram always cover every prompt of the job, those of earlier attempts
included (histogram counts are persisted per batch in `artifact_parts.jsonl`); `wall_seconds`
is the generation time of the attempt that finished the job. Each prompt's line carries its share
of its batch's compute (dLLM and RM passes and tokens, estimated FLOPs, wall seconds of generation
and scoring; `entrgi.compute`) and `summary.json` their sums. A resumed job continues its own
W&B run (`entrgi.loggers`), which then covers every prompt. `run.overwrite=true` starts afresh.

The judges of `cfg.evaluator` score the saved responses once generation is complete and
`summary.json` written (the dLLM and the guiding RM are freed first); a rerun of a finished
job applies the ones whose judgements are still missing (`entrgi.evaluators.judging`).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from entrgi.benchmarks import Prompt
from entrgi.components import build
from entrgi.compute import COMPUTE, ModelSizes, job_totals, non_embedding_parameters, prompt_share, reward_parameters
from entrgi.evaluators.base import release_memory
from entrgi.evaluators.judging import apply_evaluators, evaluator_configs, locate_weights
from entrgi.preflight import check_inputs, check_job, configure_threads, reward_models
from entrgi.reporting.runs import load_run
from entrgi.rewards import RewardModel, TextReward
from entrgi.rewards.vocab_bridge import GeneratedCoverage
from entrgi.run_directory import Progress, RunDirectory, additive, counts_increment, sum_increments
from entrgi.sampler import DiffusionSampler
from entrgi.validation import validate
from entrgi.weights import ResourceUnavailable, resolve_checkpoint

log = logging.getLogger(__name__)


def _sample_record(prompt: Prompt, responses: list[str], rewards: list[float], batch: int,
                   batch_size: int, compute: dict[str, float]) -> dict[str, Any]:
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
        "batch": batch,  # which batch committed it and how many prompts that batch had (resume)
        "batch_size": batch_size,
        COMPUTE: compute,  # this prompt's share of its batch's work (entrgi.compute)
    }


class OutOfMemory(ResourceUnavailable):
    """The job does not fit the device's memory; the message names the settings that shrink it."""


def run_experiment(cfg: DictConfig, output_dir: str | Path) -> dict[str, Any]:
    """Run (or resume, or just report) the job `cfg` describes; returns the summary written to summary.json.

    Raises ConfigError / ResourceUnavailable for what the user can fix, most of them before any
    model loads (`entrgi.preflight`), and OutOfMemory naming the knobs to lower.
    """
    try:
        return _run_experiment(cfg, output_dir)
    except torch.OutOfMemoryError as error:
        scoring = OmegaConf.select(cfg, "reward.batch_size")  # a reward model's; a text scorer has none
        raise OutOfMemory(
            f"out of memory on the GPU ({str(error).splitlines()[0][:120]}); lower sampler.batch_size "
            f"(now {cfg.sampler.batch_size}) or sampler.num_samples, set reward.gradient_checkpointing=true"
            + (f", or lower reward.batch_size (now {scoring}) for the final scoring" if scoring is not None else "")
        ) from error


def _run_experiment(cfg: DictConfig, output_dir: str | Path) -> dict[str, Any]:
    validate(cfg)
    evaluator_configs(cfg.evaluator)  # two judges with one name: refused before anything runs
    schedule = build(cfg.schedule)
    schedule.check_length(cfg.sampler.max_new_tokens)
    check_job(cfg, schedule)
    threads = configure_threads(cfg)
    log.debug("torch uses %d CPU thread(s) (run.threads)", threads)
    run_dir = RunDirectory(output_dir)
    with run_dir.lock():
        if OmegaConf.select(cfg, "run.overwrite", default=False):
            run_dir.reset()
        run_dir.check_config(cfg)
        finished = run_dir.finished()
        if finished is not None:
            log.info("%s is finished already (run.overwrite=true to redo it)", run_dir.path)
            if cfg.evaluator:
                apply_evaluators(cfg.evaluator, [run_dir.path], skip_judged=True)
                finished = run_dir.finished()
            return finished
        return _run(cfg, schedule, run_dir)


def _run(cfg: DictConfig, schedule, run_dir: RunDirectory) -> dict[str, Any]:
    logger = build(cfg.logger)  # decides the W&B mode (refuses a bad WANDB_MODE) before anything loads
    # Locate every checkpoint (the dLLM's, each reward model's, each judge's) before loading any: a missing
    # 7B fails in seconds (check_inputs then checks the folders' files and tokenizers against the prompts).
    resolve_checkpoint(cfg.model.path, "model.path")
    for key, node in reward_models(cfg):
        resolve_checkpoint(node.path, f"{key}.path")
    locate_weights(cfg.evaluator)
    benchmark = build(cfg.benchmark)
    whole = benchmark.slice()
    prompts: list[Prompt] = check_inputs(cfg, benchmark.shard_of(whole))
    done = run_dir.resume([p.id for p in prompts])
    if done.records:
        log.info("resuming %s: %d of %d prompts done", run_dir.path, len(done.records), len(prompts))
    run_dir.write_metadata(cfg, {
        "seed": cfg.seed,
        "fidelity": cfg.fidelity,
        "prompt_ids": [p.id for p in prompts],
        "slice_size": len(whole),
        "shard": {"index": cfg.benchmark.shard, "num_shards": cfg.benchmark.num_shards,
                  "rule": "prompt j of the slice (in slice order) belongs to shard j mod num_shards"},
        "resumed_prompts": len(done.records),
    })
    torch.manual_seed(cfg.seed)  # nothing should draw from it; a guard for third-party code

    model = build(cfg.model)
    reward: TextReward = build(cfg.reward)  # a reward model or a text scorer (entrgi.rewards.text)
    guidance = build(cfg.guidance, model=model, reward=reward)
    sampler = DiffusionSampler(OmegaConf.to_object(cfg.sampler), model=model, schedule=schedule, guidance=guidance)
    # With a reward model: the share of generated tokens that map exactly into its vocabulary (summary.json).
    coverage = GeneratedCoverage(model, reward) if isinstance(reward, RewardModel) else None
    config = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    logger.start(config, run_dir.path, name=f"{cfg.name}-seed{cfg.seed}")
    summary, completed = None, False
    try:
        logger.resume(done.batches())  # earlier attempts' batches: the W&B run goes on after them
        todo = [p for p in prompts if p.id not in done.ids]
        state = Progress(records=list(done.records), steps=list(done.steps), parts=list(done.parts))
        summary = _generate_all(cfg, todo, state, sampler, guidance, reward, run_dir, logger, coverage)
        summary.update(guidance.summary())
        for name, content in _artifacts(guidance, coverage).items():
            increments = [part[name] for part in state.parts if name in part]
            content = sum_increments(content, increments) if additive(content) else content
            run_dir.write_json(name, content)
            if name == GeneratedCoverage.ARTIFACT:
                summary.update(GeneratedCoverage.summary(content))
        run_dir.write_summary(summary)
        if cfg.evaluator:
            del sampler, guidance, model, reward  # the judges need the memory
            release_memory()
            judged = apply_evaluators(cfg.evaluator, [run_dir.path])[run_dir.path]
            records = load_run(run_dir.path).samples
            for name, lines in judged.items():
                logger.log_judgements(name, lines, records)
            summary = run_dir.finished()
        completed = True
        return summary
    finally:
        logger.finish(summary, failed=not completed)


def _artifacts(guidance, coverage: GeneratedCoverage | None) -> dict[str, Any]:
    """The job's artifacts: the guidance's, and the counts of generated tokens the RM vocabulary covers."""
    return {**guidance.artifacts(), **(coverage.artifacts() if coverage is not None else {})}


def _generate_all(cfg, prompts, state: Progress, sampler, guidance, reward, run_dir, logger,
                  coverage: GeneratedCoverage | None = None) -> dict[str, Any]:
    """Generate `prompts` batch by batch, committing each to `run_dir` and to `state` (which holds
    the earlier attempts' batches); the summary covers everything in `state`."""
    k, batch_size = cfg.sampler.num_samples, cfg.sampler.batch_size
    sizes = ModelSizes(non_embedding_parameters(sampler.model.network), reward_parameters(reward))
    resumed = len(state.records)
    started = time.perf_counter()
    snapshot: dict[str, Any] = {}  # additive artifacts as of the previous batch of this attempt
    # Closed on an error too, so that the bar's line ends before the error's (`entrgi.run`).
    with tqdm(total=resumed + len(prompts), initial=resumed, desc=f"{cfg.name} prompts", unit="prompt") as progress:
        for first in range(0, len(prompts), batch_size):
            batch_index = state.next_batch
            batch = prompts[first : first + batch_size]
            batch_started = time.perf_counter()
            generation = sampler.generate([p.text for p in batch], [p.id for p in batch], seed=cfg.seed)
            texts = [sampler.model.decode(row) for row in generation.responses.tolist()]
            if coverage is not None:
                coverage.add(generation.responses)
            rewards = reward.score_texts([p.text for p in batch for _ in range(k)], texts,
                                         ledger=generation.compute).tolist()
            share = prompt_share(generation.compute, sizes, time.perf_counter() - batch_started, len(batch))
            records = [
                _sample_record(p, texts[i * k : (i + 1) * k], rewards[i * k : (i + 1) * k], batch_index, len(batch),
                               share)
                for i, p in enumerate(batch)
            ]
            steps = [{"batch": batch_index, **row} for row in generation.steps]
            parts = {}
            for name, content in _artifacts(guidance, coverage).items():
                if additive(content):
                    parts[name] = counts_increment(content, snapshot.get(name))
                    snapshot[name] = content
            run_dir.append_batch(records, steps, parts)
            state.records += records
            state.steps += steps
            state.parts.append(parts)
            logger.log_batch(records, steps)
            progress.update(len(batch))
    step_means: dict[str, list[float]] = {}
    for row in state.steps:
        for key in ("entropy_mean", "w_mean", "E_mean", "D_mean", "ess_mean", "resampled_fraction",
                    "zero_weight_fraction", "log_importance_mean"):
            if key in row:
                step_means.setdefault(key, []).append(row[key])
    top1 = [r["top1"] for r in state.records]
    avgk = [r["avgk"] for r in state.records]
    return {
        "top1_mean": sum(top1) / len(top1),
        "avgk_mean": sum(avgk) / len(avgk),
        "n_prompts": len(top1),
        "num_samples": k,
        "guidance": cfg.name,
        "benchmark": cfg.benchmark.name,
        "seed": cfg.seed,
        "wall_seconds": time.perf_counter() - started,
        "resumed_prompts": resumed,
        COMPUTE: job_totals(state.records, sizes),
        # Means over the steps that have them (guided or scored) of the per-step means.
        **{key: sum(values) / len(values) for key, values in step_means.items()},
    }
