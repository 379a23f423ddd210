"""Judging finished runs: each evaluator is loaded once and scores the saved responses of every run.

Nothing is regenerated and `samples.jsonl` is only read. An evaluator writes its own file,
`judgements/<name>.jsonl` (replaced whole and atomically), and its own keys of `summary.json`
(`<name>_top1_mean`, … and `evaluators.<name>`: the config it ran with), so judging a run again
replaces exactly that evaluator's results and nothing else. Several judging jobs may work on
one run directory at once: the summary update is serialised by a lock of its own (not the
generation lock, which marks a job as running).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from filelock import FileLock
from omegaconf import DictConfig, OmegaConf

from entrgi.components import build
from entrgi.evaluators.base import Evaluator
from entrgi.evaluators.scores import FIELDS, field_key, judged_indices, prompt_line, summary_fields
from entrgi.reporting.runs import Incomplete, ReportError, find_run_dirs, load_run
from entrgi.run_directory import JUDGEMENTS, JUDGEMENTS_LOCK, RunDirectory, read_jsonl
from entrgi.validation import ConfigError
from entrgi.weights import resolve_checkpoint

log = logging.getLogger(__name__)

Judged = dict[str, list[dict[str, Any]]]  # evaluator name -> its lines for one run


class NotJudgeable(ConfigError):
    """A path to judge is not a finished run directory (or holds none)."""


def finished_runs(paths: Sequence[str | Path]) -> list[Path]:
    """The run directories named by or found under `paths`; refuses any that has not finished."""
    try:
        found = find_run_dirs(paths)
    except ReportError as error:
        raise NotJudgeable(str(error)) from None
    if not found:
        raise NotJudgeable("no run directories (with config.yaml or summary.json) under: " + " ".join(map(str, paths)))
    usable = []
    for path in found:
        run = load_run(path)
        if isinstance(run, Incomplete) and run.corrupted:  # one damaged run must not stop a sweep's judging
            log.warning("skipped, %s", run.reason)
        elif isinstance(run, Incomplete):
            raise NotJudgeable(f"{path} is not a finished run ({run.reason}); only finished runs can be judged")
        else:
            usable.append(path)
    if not usable:
        raise NotJudgeable(f"none of the {len(found)} runs under {' '.join(map(str, paths))} can be read "
                           "(corrupted files, listed above)")
    return usable


def is_judged(run_dir: Path, name: str) -> bool:
    """Does the run hold this evaluator's judgements file (its summary keys may still be missing)?"""
    return (Path(run_dir) / JUDGEMENTS / f"{name}.jsonl").is_file()


def _summarised(run_dir: Path, name: str) -> bool:
    summary = RunDirectory(run_dir).finished() or {}
    return field_key(name, "top1_mean") in summary


def evaluator_configs(node: Mapping[str, Any] | None) -> dict[str, DictConfig]:
    """The `evaluator` node ({option: config}) keyed by evaluator name; two with one name are refused."""
    by_name: dict[str, DictConfig] = {}
    for option, config in (node or {}).items():
        if config.name in by_name:
            raise ConfigError(f"evaluator.{option}.name={config.name!r} is used by two evaluators; give each its own")
        by_name[config.name] = config
    return by_name


def locate_weights(node: Mapping[str, DictConfig] | None) -> None:
    """Find every judge's weights before any model loads: a missing 72B judge fails in seconds.

    `node` is the `evaluator` config node ({option: config}); messages name `evaluator.<option>.…`,
    the key the user sets (not the judge's name, which may differ: `rm-Skywork-…` for `reward`).
    """
    for option, config in (node or {}).items():
        for key, value in _paths(config):
            resolve_checkpoint(value, f"evaluator.{option}.{key}")


def _paths(node: DictConfig, prefix: str = "") -> list[tuple[str, str]]:
    found = []
    for key, value in node.items():
        if isinstance(value, DictConfig):
            found += _paths(value, f"{prefix}{key}.")
        elif key == "path" and isinstance(value, str):
            found.append((f"{prefix}{key}", value))
    return found


def judge_run(run_dir: Path, evaluator: Evaluator, config: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Score one finished run's responses with `evaluator` and store them; returns the per-prompt lines."""
    run = load_run(run_dir)
    if isinstance(run, Incomplete):
        raise NotJudgeable(f"{run_dir} is not a finished run ({run.reason}); only finished runs can be judged")
    records = run.samples
    pairs = [(record, index) for record in records for index in judged_indices(record, evaluator.responses)]
    judgements = evaluator.score([record["prompt"] for record, _ in pairs],
                                 [record["responses"][index] for record, index in pairs])
    if len(judgements) != len(pairs):
        raise RuntimeError(f"evaluator {evaluator.name} gave {len(judgements)} judgements for {len(pairs)} responses")
    lines, first = [], 0
    for record in records:
        count = len(judged_indices(record, evaluator.responses))
        lines.append(prompt_line(record, evaluator.responses, judgements[first : first + count]))
        first += count
    fields = _store(run_dir, evaluator.name, evaluator.responses, lines, config)
    mean = fields[field_key(evaluator.name, "top1_mean")]
    log.info("%s on %s: Top@1 response %s, %d of %d responses failed", evaluator.name, run_dir,
             "—" if mean is None else f"{mean:.4f}", fields[field_key(evaluator.name, "failures")], len(pairs))
    return lines


def _store(run_dir: Path, name: str, responses: str, lines: list[dict[str, Any]] | None,
           config: dict[str, Any] | None) -> dict[str, Any]:
    """Write an evaluator's lines (None: keep the file there) and its summary keys; returns the keys."""
    directory = RunDirectory(run_dir)
    with FileLock(str(Path(run_dir) / JUDGEMENTS_LOCK)):
        if lines is None:
            lines = read_jsonl(Path(run_dir) / JUDGEMENTS / f"{name}.jsonl").rows
        else:
            directory.write_judgements(name, lines)
        fields = summary_fields(name, lines)
        summary = directory.finished()
        for key in FIELDS:
            summary.pop(field_key(name, key), None)
        evaluators = summary.pop("evaluators", {})  # kept last, after the numbers
        evaluators[name] = {"responses": responses, **(config or {})}
        summary.update(fields, evaluators=evaluators)
        directory.write_summary(summary)
    return fields


def apply_evaluators(node: Mapping[str, Any] | None, run_dirs: Sequence[Path],
                     skip_judged: bool = False) -> dict[Path, Judged]:
    """Every evaluator of the `evaluator` config node on every run, one evaluator in memory at a time.

    With `skip_judged`, an evaluator leaves out the runs that already hold its judgements (resuming
    an interrupted judging job); otherwise it judges them again and replaces its results.
    """
    configs = evaluator_configs(node)
    results: dict[Path, Judged] = {Path(run_dir): {} for run_dir in run_dirs}
    if skip_judged:  # a job killed between the judgements file and the summary: finish its summary, no re-judging
        for name, config in configs.items():
            for run_dir in run_dirs:
                if is_judged(run_dir, name) and not _summarised(run_dir, name):
                    log.info("%s: %s judgements found without their summary keys; adding them", run_dir, name)
                    _store(Path(run_dir), name, config.responses, None,
                           OmegaConf.to_container(config, resolve=True, enum_to_str=True))
    todo = {name: [Path(d) for d in run_dirs if not (skip_judged and is_judged(d, name))]
            for name, config in configs.items()}
    locate_weights({option: config for option, config in (node or {}).items() if todo[config.name]})
    for name, config in configs.items():
        if not todo[name]:
            continue
        evaluator: Evaluator = build(config)
        try:
            stored = OmegaConf.to_container(config, resolve=True, enum_to_str=True)
            for run_dir in todo[name]:
                results[run_dir][name] = judge_run(run_dir, evaluator, stored)
        finally:
            evaluator.close()
    return results
