"""Experiment loggers (the `logger` config group): W&B, or nothing.

The runner calls `start`, then `log_batch` after each batch of prompts (host numbers only:
nothing here waits on the GPU inside the denoising loop), `log_judgements` once per judge of
the saved responses, then `finish` from a `finally`, so the W&B run is always closed, and
marked failed when the job raised. `python -m entrgi.evaluate` reopens a job's W&B run
(`resume_id`) to add its judges' scores.
"""

from __future__ import annotations

import json
import logging
import netrc
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from entrgi.schemas import schema
from entrgi.validation import one_of

log = logging.getLogger(__name__)


class NullLogger:
    """Logs nothing."""

    def __init__(self, config: Any = None):
        self.config = config

    def start(self, config: dict[str, Any], output_dir: Path, name: str, resume_id: str | None = None) -> None:
        """Open the run (`resume_id`: add to the run with that id)."""

    def log_batch(self, samples: list[dict[str, Any]], steps: list[dict[str, Any]]) -> None:
        """One finished batch: its samples.jsonl records and its steps.jsonl rows."""

    def log_judgements(self, name: str, lines: list[dict[str, Any]], records: list[dict[str, Any]]) -> None:
        """One judge's per-prompt lines (`entrgi.evaluators.scores`) and the samples.jsonl records they judge."""

    def finish(self, summary: dict[str, Any] | None, failed: bool) -> None:
        """Close the run; `summary` holds the final numbers when the job completed."""


@schema("logger", "none")
@dataclass
class NullLoggerConfig:
    _target_: str = "entrgi.loggers.NullLogger"


@schema("logger")
@dataclass
class WandbLoggerConfig:
    _target_: str = "entrgi.loggers.WandbLogger"
    project: str = "entrgi"
    entity: str | None = None
    group: str | None = None
    tags: list[str] = field(default_factory=list)
    # auto: WANDB_MODE if set, else online when an API key is configured, else offline.
    mode: str = one_of("auto", "auto", "online", "offline", "disabled")


def _logged_in() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (OSError, netrc.NetrcParseError):
        return False


def step_metrics(row: dict[str, Any], index: int) -> dict[str, Any]:
    """One steps.jsonl row as W&B metrics under `denoise/`, x-axis `denoise/index` (steps of all batches in order)."""
    metrics = {"denoise/index": index}
    for key in ("step", "batch", "t", "masked"):
        if key in row:
            metrics[f"denoise/{key}"] = row[key]
    for key in ("entropy_mean", "w_mean", "E_mean", "D_mean"):
        if key in row:
            metrics[f"denoise/{key.removesuffix('_mean')}"] = row[key]
    curve = row.get("reward_curve") or []
    for i, value in enumerate(curve, start=1):
        metrics[f"denoise/relaxed_reward_iter{i}"] = value
    if curve:
        metrics["denoise/relaxed_reward_gain"] = curve[-1] - curve[0]
    return metrics


_RUN_DIR = re.compile(r"(?:offline-)?run-\d{8}_\d{6}-([a-z0-9]+)(?:-\d+)?")


def wandb_run_id(output_dir: Path) -> str | None:
    """The id of the W&B run a job wrote under `<output_dir>/wandb`, if any (to add to it later)."""
    for path in sorted((Path(output_dir) / "wandb").glob("*run-*")):
        match = _RUN_DIR.fullmatch(path.name)
        if match and path.is_dir():
            return match.group(1)
    return None


def judgement_table_row(line: dict[str, Any], record: dict[str, Any]) -> list[Any]:
    """A judgements line as a row of a W&B `judgements/<name>` table (see `WandbLogger.JUDGEMENT_COLUMNS`)."""
    best = record["best_index"]
    details = line.get("details")
    return [line["prompt_id"], record["prompt"], record["responses"][best], line["top1"], line.get("avgk"),
            sum(score is None for score in line["scores"]),
            json.dumps(details[line["indices"].index(best)]) if details else None]


def sample_table_row(record: dict[str, Any], k: int) -> list[Any]:
    """A samples.jsonl record as a row of the W&B samples table (see `WandbLogger.SAMPLE_COLUMNS`)."""
    rewards = list(record["rewards"]) + [None] * (k - len(record["rewards"]))
    best = record["best_index"]
    return [record["prompt_id"], record.get("category"), record["prompt"], record["responses"][best],
            record["top1"], record["avgk"], *rewards[:k]]


class WandbLogger(NullLogger):
    """One W&B run per job, written under the job's directory.

    Per denoising step: `denoise/*` (entropy, w, E, D, the relaxed reward at each Adam
    iteration) against `denoise/index`; per batch: running Top@1 / Avg@K against
    `prompts_done`; per judge: a `judgements/<name>` table; at the end: summary.json as the run
    summary (judges' means included), a `samples` table (with a column of each judge's score of
    the best response) and the run's figures (`figures/*`) as images.
    """

    SAMPLE_COLUMNS = ["prompt_id", "category", "prompt", "best_response", "best_reward", "avgk"]
    JUDGEMENT_COLUMNS = ["prompt_id", "prompt", "best_response", "score", "avgk_score", "failures", "details"]

    def __init__(self, config: WandbLoggerConfig):
        super().__init__(config)
        self.run = None
        self.output_dir: Path | None = None
        self._samples: list[dict[str, Any]] = []
        self._judged: dict[str, dict[str, Any]] = {}  # judge name -> {prompt id: its score of the best response}
        self._steps_logged = 0

    def resolved_mode(self) -> str:
        if self.config.mode != "auto":
            return self.config.mode
        return os.environ.get("WANDB_MODE") or ("online" if _logged_in() else "offline")

    def start(self, config, output_dir, name, resume_id=None):
        import wandb

        self.output_dir = Path(output_dir)
        self._samples, self._judged, self._steps_logged = [], {}, 0
        self.run = wandb.init(
            project=self.config.project, entity=self.config.entity, group=self.config.group,
            tags=list(self.config.tags), name=name,
            config=config, dir=str(output_dir), mode=self.resolved_mode(), id=resume_id,
            resume="allow" if resume_id else None,
        )
        self.run.define_metric("denoise/index")
        self.run.define_metric("denoise/*", step_metric="denoise/index")
        self.run.define_metric("prompts_done")
        self.run.define_metric("running/*", step_metric="prompts_done")

    @property
    def recording(self) -> bool:
        return self.run is not None and not getattr(self.run, "disabled", False)

    def log_batch(self, samples, steps):
        if not self.recording:
            return
        for row in steps:
            self.run.log(step_metrics(row, self._steps_logged))
            self._steps_logged += 1
        self._samples += samples
        n = len(self._samples)
        self.run.log({
            "prompts_done": n,
            "running/top1_mean": sum(r["top1"] for r in self._samples) / n,
            "running/avgk_mean": sum(r["avgk"] for r in self._samples) / n,
        })

    def log_judgements(self, name, lines, records):
        if not self.recording:
            return
        import wandb

        by_id = {record["prompt_id"]: record for record in records}
        rows = [judgement_table_row(line, by_id[line["prompt_id"]]) for line in lines]
        self.run.log({f"judgements/{name}": wandb.Table(columns=self.JUDGEMENT_COLUMNS, data=rows)})
        self._judged[name] = {line["prompt_id"]: line["top1"] for line in lines}

    def _log_results(self) -> None:
        """The samples table and the run's figures (drawn from the finished run directory)."""
        if not self._samples:  # a judging-only session (entrgi.evaluate) adds no samples
            return
        import wandb

        from entrgi.reporting.figures import run_figures
        from entrgi.reporting.runs import Run, load_run

        k = max((len(r["rewards"]) for r in self._samples), default=0)
        columns = self.SAMPLE_COLUMNS + [f"reward_{i}" for i in range(k)] + list(self._judged)
        data = [sample_table_row(r, k) + [scores.get(r["prompt_id"]) for scores in self._judged.values()]
                for r in self._samples]
        self.run.log({"samples": wandb.Table(columns=columns, data=data)})
        run = load_run(self.output_dir)
        if isinstance(run, Run):
            paths = run_figures(run, self.output_dir / "figures")
            self.run.log({f"figures/{path.stem}": wandb.Image(str(path)) for path in paths})

    def finish(self, summary, failed):
        if self.run is None:
            return
        try:
            if summary and self.recording:
                self.run.summary.update(summary)
                try:
                    self._log_results()
                except Exception as error:  # the job's results are on disk; a drawing error must not fail it
                    log.warning("W&B: could not log the samples table or figures: %r", error)
        finally:
            self.run.finish(exit_code=1 if failed else 0)
            self.run = None
