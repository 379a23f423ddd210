"""Experiment loggers (the `logger` config group): W&B, or nothing.

The runner calls `start`, then `log_batch` after each batch of prompts (host numbers only:
nothing here waits on the GPU inside the denoising loop), `log_judgements` once per judge of
the saved responses, then `finish` from a `finally`, so the W&B run is always closed, and
marked failed when the job raised.

One job is one W&B run across restarts: its id comes from the job directory (`wandb_run_id`) and
the run is opened with W&B's own `resume="allow"`, so a resumed job, and `python -m
entrgi.evaluate` adding judges' scores later, continue the job's run. A resumed job hands its
earlier attempts' batches to `resume`, which logs them only when W&B holds none of this run yet.

W&B never loses or stalls a job: the mode is decided when the logger is built, before any model
loads (`wandb_mode`: a bad WANDB_MODE is refused there, online without an API key runs
offline), and an online `wandb.init` that fails or outlasts `logger.init_timeout` is said in
one warning and replaced by an offline run of the same id (upload it later with `wandb sync`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from entrgi.run_directory import METADATA
from entrgi.schemas import schema
from entrgi.validation import ConfigError, ranged

log = logging.getLogger(__name__)


class NullLogger:
    """Logs nothing."""

    def __init__(self, config: Any = None):
        self.config = config

    def start(self, config: dict[str, Any], output_dir: Path, name: str) -> None:
        """Open the job's run (the one with id `wandb_run_id(output_dir)`, created or continued)."""

    def log_batch(self, samples: list[dict[str, Any]], steps: list[dict[str, Any]]) -> None:
        """One finished batch: its samples.jsonl records and its steps.jsonl rows."""

    def resume(self, batches: Iterable[tuple[list[dict[str, Any]], list[dict[str, Any]]]]) -> None:
        """The batches earlier attempts of this job committed, (records, steps) each, in order."""

    def log_judgements(self, name: str, lines: list[dict[str, Any]], records: list[dict[str, Any]]) -> None:
        """One judge's per-prompt lines (`entrgi.evaluators.scores`) and the samples.jsonl records they judge."""

    def finish(self, summary: dict[str, Any] | None, failed: bool) -> None:
        """Close the run; `summary` holds the final numbers when the job completed."""


@schema("logger", "none")
@dataclass
class NullLoggerConfig:
    _target_: str = "entrgi.loggers.NullLogger"


class WandbMode(StrEnum):
    """`logger.mode`: W&B's own modes, or `auto` (`WandbLogger.resolved_mode`)."""

    auto = "auto"
    online = "online"
    offline = "offline"
    disabled = "disabled"


@schema("logger")
@dataclass
class WandbLoggerConfig:
    _target_: str = "entrgi.loggers.WandbLogger"
    project: str = "entrgi"
    entity: str | None = None
    group: str | None = None
    tags: list[str] = field(default_factory=list)
    # auto: WANDB_MODE if set, else online when an API key is configured, else offline (`wandb_mode`).
    mode: WandbMode = WandbMode.auto
    # Seconds an online wandb.init may wait for the server before the job goes on offline.
    init_timeout: float = ranged(30.0, low=0, low_open=True)


# What WANDB_MODE may say, and the mode it means (dryrun and run are W&B's older names).
ENV_MODES = {"online": "online", "offline": "offline", "disabled": "disabled", "dryrun": "offline", "run": "online"}


def api_key_available() -> bool:
    """Whether W&B holds credentials without asking anyone: WANDB_API_KEY, WANDB_IDENTITY_TOKEN_FILE,
    or a netrc entry (`wandb login`) for its server (WANDB_BASE_URL, else W&B's default), read by
    W&B's own netrc reader. Nothing is sent over the network."""
    import wandb
    from wandb.sdk.lib.wbauth import read_netrc_auth

    if os.environ.get(wandb.env.API_KEY) or os.environ.get(wandb.env.IDENTITY_TOKEN_FILE):
        return True
    try:
        return read_netrc_auth(host=os.environ.get(wandb.env.BASE_URL) or wandb.Settings().base_url) is not None
    except wandb.errors.AuthenticationError:  # an entry W&B would refuse
        return False


def wandb_mode(config: WandbLoggerConfig) -> str:
    """The W&B mode of a job, "online", "offline" or "disabled", decided before any model loads.

    `logger.mode` online/offline/disabled is taken as it is; auto follows WANDB_MODE when it is
    set (an empty value counts as unset), else goes online when `api_key_available()`, else
    offline. Online without an API key (where W&B would stop the job or prompt for a key) is
    said in one warning and runs offline.

    Raises ConfigError when WANDB_MODE is set to a value W&B refuses, whatever `logger.mode` says
    (W&B reads the variable at every `wandb.init`).
    """
    env = os.environ.get("WANDB_MODE", "")
    if env and env not in ENV_MODES:
        raise ConfigError(f"WANDB_MODE={env!r} is not allowed: expected one of {', '.join(ENV_MODES)}, "
                          "or leave it unset")
    mode = str(config.mode)  # str(): the value of a string enum too
    if mode == "auto":
        mode = ENV_MODES[env] if env else "online" if api_key_available() else "offline"
    if mode == "online" and not api_key_available():
        log.warning("W&B: online mode but no API key (set WANDB_API_KEY or run `wandb login`); "
                    "logging offline into the job directory (upload later with `wandb sync`)")
        return "offline"
    return mode


def step_metrics(row: dict[str, Any], index: int) -> dict[str, Any]:
    """One steps.jsonl row as W&B metrics under `denoise/`, x-axis `denoise/index` (steps of all batches in order)."""
    metrics = {"denoise/index": index}
    for key in ("step", "batch", "t", "masked", "resampled_fraction", "zero_weight_fraction"):
        if key in row:
            metrics[f"denoise/{key}"] = row[key]
    for key in ("entropy_mean", "w_mean", "E_mean", "D_mean", "ess_mean", "estimate_reward_mean",
                "log_importance_mean"):
        if key in row:
            metrics[f"denoise/{key.removesuffix('_mean')}"] = row[key]
    curve = row.get("reward_curve") or []
    for i, value in enumerate(curve, start=1):
        metrics[f"denoise/relaxed_reward_iter{i}"] = value
    if curve:
        metrics["denoise/relaxed_reward_gain"] = curve[-1] - curve[0]
    return metrics


_RUN_DIR = re.compile(r"(offline-)?run-\d{8}_\d{6}-([a-z0-9]+)(?:-\d+)?")  # -1, -2: same id, same second


def local_runs(output_dir: Path) -> list[tuple[Path, str, bool]]:
    """(folder, run id, offline) of each W&B run written under `<output_dir>/wandb`, oldest first."""
    runs = []
    for path in sorted((Path(output_dir) / "wandb").glob("*run-*"), key=lambda p: p.name.removeprefix("offline-")):
        match = _RUN_DIR.fullmatch(path.name)
        if match and path.is_dir():
            runs.append((path, match.group(2), bool(match.group(1))))
    return runs


def wandb_run_id(output_dir: Path) -> str:
    """The W&B run id of the job in `output_dir`, the same at every restart.

    The id of a W&B run already written under `<output_dir>/wandb` (so a moved or copied job
    directory keeps its run), else 16 hex digits of SHA-256 over the resolved absolute directory
    and the start time of the job's first attempt (`run.json`), so `run.overwrite=true`, which
    deletes both, starts a new W&B run instead of reopening the old one.
    """
    output_dir = Path(output_dir)
    for _, run_id, _ in local_runs(output_dir):
        return run_id
    first_start = ""
    metadata = output_dir / METADATA
    if metadata.is_file():
        attempts = json.loads(metadata.read_text()).get("attempts") or [{}]
        first_start = repr(attempts[0].get("started", ""))
    key = f"{output_dir.resolve()}\n{first_start}"
    return hashlib.sha256(key.encode()).hexdigest()[:16]


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
        self.mode = wandb_mode(config)
        self.run = None
        self.output_dir: Path | None = None
        self._samples: list[dict[str, Any]] = []
        self._judged: dict[str, dict[str, Any]] = {}  # judge name -> {prompt id: its score of the best response}
        self._steps_logged = 0

    def start(self, config, output_dir, name):
        """Open the run in `self.mode`; online, a `wandb.init` that fails or outlasts
        `logger.init_timeout` seconds is said in one warning and the run opens offline, same id."""
        import wandb

        self.output_dir = Path(output_dir)
        self._samples, self._judged, self._steps_logged = [], {}, 0
        if os.environ.get("WANDB_MODE") == "":
            del os.environ["WANDB_MODE"]  # W&B refuses an empty value; unset means the same (`wandb_mode`)
        init = dict(project=self.config.project, entity=self.config.entity, group=self.config.group,
                    tags=list(self.config.tags), name=name, config=config, dir=str(output_dir),
                    id=wandb_run_id(self.output_dir), resume="allow")
        mode = self.mode
        if mode == "online":
            try:
                self.run = wandb.init(**init, mode=mode, settings=wandb.Settings(init_timeout=self.config.init_timeout))
            except Exception as error:  # whatever stops W&B from reaching its server must not stop the job
                log.warning("W&B: could not start the run online within logger.init_timeout=%gs (%s: %s); logging "
                            "offline into %s/wandb (upload later with `wandb sync`)", self.config.init_timeout,
                            type(error).__name__, str(error).splitlines()[0] if str(error) else "", output_dir)
                wandb.teardown()  # let go of the half-started online session before the offline one
                mode = "offline"
        if mode != "online":
            self.run = wandb.init(**init, mode=mode)
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

    def resume(self, batches):
        """Logs the earlier batches only when W&B holds none of this run (the earlier attempts ran with
        W&B disabled); otherwise counts them, so `prompts_done`, the running means, `denoise/index`
        and the final samples table go on from where the run stopped."""
        if not self.recording:
            return
        replay = not self._has_history()
        for records, steps in batches:
            if replay:
                self.log_batch(records, steps)
            else:
                self._samples += records
                self._steps_logged += len(steps)

    def _has_history(self) -> bool:
        """W&B continued this run (online), or an earlier offline run of this id lies in the job
        directory (`wandb sync` uploads both into the one run, in order)."""
        if self.run.resumed:
            return True
        current = Path(self.run.dir).parent
        return any(path != current and run_id == self.run.id and offline
                   for path, run_id, offline in local_runs(self.output_dir))

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
