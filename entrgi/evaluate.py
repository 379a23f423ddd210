"""`python -m entrgi.evaluate RUN_DIR… evaluator=[lmunit,reward] [logger=wandb]`: judge finished runs.

RUN_DIRs are run directories, sweep directories (searched recursively) or quoted globs, as for
`entrgi.report`. Nothing is regenerated: each judge scores the saved responses and writes its
own `judgements/<name>.jsonl` and `summary.json` keys (a rerun replaces them; `skip_judged=true`
leaves out runs that already have them). Unfinished runs are refused with one line (exit 2).

The paths are turned into a Hydra override before Hydra reads the command line: `runs=[A,B]`,
one job that loads each judge once and scores every run; with `-m`, `runs=[A],[B]`, one job
per argument (e.g. per sweep directory), so a launcher can give each job its own GPUs:

    python -m entrgi.evaluate -m 'outputs/multirun/experiment=paper-grid' evaluator=lmunit hydra/launcher=slurm-judge

With `logger=wandb` each judged run's W&B run (found under `<run dir>/wandb`) is reopened and
gets the judges' summary keys and a `judgements/<name>` table.
"""

from __future__ import annotations

import glob
import logging
import os
import sys
from importlib.resources import files
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from entrgi.cli import hydra_command
from entrgi.components import build
from entrgi.evaluators.judging import Judged, apply_evaluators, finished_runs
from entrgi.evaluators.scores import field_key
from entrgi.preflight import check_devices
from entrgi.reporting.runs import Run, load_run
from entrgi.validation import ConfigError, validate
from entrgi.weights import ResourceUnavailable

log = logging.getLogger(__name__)

# Hydra's options that take the next argument as their value (never a run directory).
_VALUE_FLAGS = {"--config-path", "-cp", "--config-name", "-cn", "--config-dir", "-cd", "--cfg", "-c", "--package",
                "-p", "--experimental-rerun"}


def _is_path(argument: str) -> bool:
    """A run path (existing or not), as opposed to a Hydra override: a path that does not exist must
    reach `finished_runs` and fail there with one line, not as a Hydra grammar error."""
    if os.path.exists(argument) or (glob.has_magic(argument) and bool(glob.glob(argument, recursive=True))):
        return True
    if argument.startswith(("/", "./", "../", "~/")) or "=" not in argument and not argument.startswith("~"):
        return True
    # Run directory names hold `=` (outputs/runs/experiment=tiny,seed=1); a group override's key holds
    # `/` only under a config group folder (hydra/launcher=slurm-judge).
    key = argument.split("=", 1)[0].lstrip("+~")
    group = key.split("/", 1)[0].split("@", 1)[0]
    return "/" in key and group != "hydra" and not files("entrgi.conf").joinpath(group).is_dir()


def _quoted(path: str) -> str:
    """A path as a Hydra string: run directory names hold `=` and `,`."""
    return "'" + path.replace("\\", "\\\\").replace("'", "\\'") + "'"


def paths_to_override(argv: list[str]) -> list[str]:
    """argv with its run paths replaced by one `runs=` override (see the module docstring)."""
    paths, rest = [], []
    takes_value = False
    for argument in argv:
        if takes_value or argument.startswith("-") or not _is_path(argument):
            rest.append(argument)
            takes_value = argument in _VALUE_FLAGS
        else:
            paths.append(argument)
    if not paths:
        return rest
    if "-m" in rest or "--multirun" in rest:
        return [*rest, "runs=" + ",".join(f"[{_quoted(p)}]" for p in paths)]
    return [*rest, "runs=[" + ",".join(_quoted(p) for p in paths) + "]"]


def evaluate(cfg: DictConfig) -> dict[Path, dict[str, Any]]:
    """Judge every run of `cfg.runs` with every evaluator; returns each judged run's new summary."""
    validate(cfg)
    if not cfg.evaluator:
        shipped = files("entrgi.conf").joinpath("evaluator").iterdir()
        options = ", ".join(sorted(p.name.removesuffix(".yaml") for p in shipped if p.name.endswith(".yaml")))
        raise ConfigError(f"evaluator is empty: name the judges, e.g. evaluator=[lmunit] (options: {options})")
    if not cfg.runs:
        raise ConfigError("no runs to judge: pass run or sweep directories, e.g. "
                          "python -m entrgi.evaluate outputs/runs/experiment=tiny,seed=1 evaluator=[tiny-judge]")
    check_devices(cfg)
    runs = finished_runs(list(cfg.runs))
    judged = apply_evaluators(cfg.evaluator, runs, skip_judged=cfg.skip_judged)
    summaries = {}
    for run_dir, lines in judged.items():
        if lines:
            run = load_run(run_dir)
            _log(cfg.logger, run, lines)
            summaries[run_dir] = run.summary
    return summaries


def _log(logger_cfg: DictConfig, run: Run, judged: Judged) -> None:
    """Add the judges' results to the run's own W&B run (or a new one, grouped with it)."""
    if "group" in logger_cfg:
        logger_cfg = OmegaConf.merge(logger_cfg, {"group": run.method})
    logger = build(logger_cfg)
    logger.start(run.config, run.path, name=f"{run.method}-seed{run.seed}")  # the job's own run, continued
    completed = False
    try:
        for name, lines in judged.items():
            logger.log_judgements(name, lines, run.samples)
        completed = True
    finally:
        logger.finish(run.summary, failed=not completed)


def _describe(summary: dict[str, Any], names: list[str]) -> str:
    parts = []
    for name in names:
        mean = summary.get(field_key(name, "top1_mean"))
        shown = "—" if mean is None else f"{mean:.4f}"
        avgk = summary.get(field_key(name, "avgk_mean"))
        shown += "" if avgk is None else f" (Avg@K {avgk:.4f})"
        parts.append(f"{name} {shown}, {summary.get(field_key(name, 'failures'))} of "
                     f"{summary.get(field_key(name, 'judged'))} failed")
    return "; ".join(parts)


@hydra_command(config_name="evaluate", prog="entrgi.evaluate")
def main(cfg: DictConfig) -> None:
    multirun = HydraConfig.get().mode == RunMode.MULTIRUN
    try:
        summaries = evaluate(cfg)
    except (ConfigError, ResourceUnavailable) as error:
        if multirun:
            raise
        print(f"entrgi.evaluate: error: {error}", file=sys.stderr)
        sys.exit(2)
    names = [config.name for config in cfg.evaluator.values()]
    for run_dir, summary in summaries.items():
        print(f"{run_dir}: {_describe(summary, names)}")
    if not summaries:
        print("nothing to judge: every run already holds these judgements (skip_judged=true)")


def cli() -> None:
    """`entrgi-evaluate` and `python -m entrgi.evaluate`: run paths become the `runs` override, then Hydra."""
    sys.argv[1:] = paths_to_override(sys.argv[1:])
    main()


if __name__ == "__main__":
    cli()
