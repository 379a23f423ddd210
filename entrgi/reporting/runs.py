"""Run directories as the report sees them: found under any paths, loaded, shards merged.

A run directory is what one job writes (`entrgi.run_directory`): `config.yaml` and `run.json`
at the start, `samples.jsonl` / `steps.jsonl` batch by batch, `summary.json` last, and later
`judgements/<name>.jsonl` per judge (`entrgi.evaluators`). A directory without `summary.json`
is an incomplete run: it is listed, never averaged in.

Shards of one run — jobs whose configs are equal except for `SHARD_KEYS`, with disjoint
prompt ids — are merged into one `Run` before anything is averaged. Two jobs with equal
configs and overlapping prompts are the same run twice (a rerun): the newest is kept.
"""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import yaml

from entrgi.compute import COMPUTE, merged_totals
from entrgi.evaluators.scores import summary_fields
from entrgi.run_directory import (
    CONFIG,
    ERROR,
    FIGURES,
    HISTOGRAM,
    JUDGEMENTS,
    METADATA,
    SAMPLES,
    STEPS,
    SUMMARY,
    WANDB,
    read_jsonl,
)

# Folders inside a job directory (or beside it) that are never runs themselves.
NOT_RUNS = {WANDB, ".hydra", FIGURES, "__pycache__", ".git", ".submitit", ".devices", JUDGEMENTS}
# Config keys that differ between the shards of one run (`benchmark.shard=i benchmark.num_shards=n`).
SHARD_KEYS: tuple[str, ...] = ("benchmark.shard", "benchmark.num_shards")
# Config keys (or prefixes) that say how a job ran, not what it computed. `run` holds run
# control (`run.overwrite`). Also left out of job directory names (entrgi.sweeps). The judges
# (`evaluator`) score the saved responses and change nothing that was generated: adding one to a
# finished job's command judges it instead of starting another job.
EXECUTION_KEYS: tuple[str, ...] = (
    "run", "logger", "model.device", "reward.device", "reward.batch_size", "sampler.batch_size", "evaluator",
)
# Per-step statistics that summary.json averages over guided steps.
STEP_MEANS = ("entropy_mean", "w_mean", "E_mean", "D_mean")


class ReportError(Exception):
    """A problem with the runs the user passed; the message says what to do."""


def flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}; lists become tuples so values are hashable."""
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for key, value in node.items():
            out.update(flatten(value, f"{prefix}{key}."))
        return out
    if isinstance(node, list):
        node = tuple(node)
    return {prefix[:-1]: node}


def key_under(key: str, names: Iterable[str]) -> bool:
    """Is `key` one of `names`, or inside one of them (`logger.mode` is under `logger`)?"""
    return any(key == name or key.startswith(name + ".") for name in names)


@dataclass
class Run:
    """One finished run: one job directory, or several shards of one run merged."""

    paths: tuple[Path, ...]
    config: dict[str, Any]
    summary: dict[str, Any]
    prompt_ids: tuple[str, ...]
    finished: float  # newest summary.json mtime, to pick the latest of duplicates
    notes: list[str] = field(default_factory=list)

    @property
    def path(self) -> Path:
        return self.paths[0]

    @cached_property
    def flat_config(self) -> dict[str, Any]:
        return flatten(self.config)

    @property
    def seed(self) -> Any:
        return self.summary.get("seed", self.config.get("seed"))

    @property
    def benchmark(self) -> str:
        return str(self.summary.get("benchmark") or self.flat_config.get("benchmark.name", "?"))

    @property
    def method(self) -> str:
        """The method's name: `name` in the config (the guidance option unless an experiment renames it)."""
        return str(self.summary.get("guidance") or self.config.get("name", "?"))

    @property
    def reward_model(self) -> str:
        """The reward's name: its checkpoint folder's, or a text scorer's class ('ToyOracleReward')."""
        path = self.flat_config.get("reward.path")
        if path is None:
            return str(self.flat_config.get("reward._target_", "?")).rpartition(".")[2]
        return Path(str(path)).name

    @property
    def M(self) -> int | None:
        return self.flat_config.get("guidance.M")

    @property
    def num_samples(self) -> int | None:
        return self.summary.get("num_samples", self.flat_config.get("sampler.num_samples"))

    @property
    def flops_per_prompt(self) -> float | None:
        """Estimated FLOPs per prompt (its K samples, their guidance and scoring; `entrgi.compute`), None
        for a run made before compute was accounted."""
        compute = self.summary.get(COMPUTE)
        return compute["flops"] / self.summary["n_prompts"] if compute else None

    def identity(self, shard_keys: Sequence[str] = SHARD_KEYS) -> tuple:
        """What the run computed: its config without execution and shard keys (seed included)."""
        return tuple(sorted(
            (key, value) for key, value in self.flat_config.items()
            if not key_under(key, EXECUTION_KEYS) and not key_under(key, shard_keys)
        ))

    @cached_property
    def steps(self) -> list[dict[str, Any]]:
        """steps.jsonl of every shard, with `part` telling the shards' batches apart."""
        return [{**row, "part": i} for i, path in enumerate(self.paths) for row in read_jsonl(path / STEPS).rows]

    @cached_property
    def histogram(self) -> dict[str, Any] | None:
        """entropy_error_histogram.json, counts summed over shards; None for unguided runs."""
        merged = None
        for path in self.paths:
            if not (path / HISTOGRAM).is_file():
                continue
            part = json.loads((path / HISTOGRAM).read_text())
            if merged is None:
                merged = part
            elif part["entropy_edges"] == merged["entropy_edges"] and part["error_edges"] == merged["error_edges"]:
                merged["counts"] = [[a + b for a, b in zip(r, s, strict=True)]
                                    for r, s in zip(merged["counts"], part["counts"], strict=True)]
            else:
                raise ReportError(f"shards of {self.path} have histograms with different bin edges")
        return merged

    @cached_property
    def samples(self) -> list[dict[str, Any]]:
        return [row for path in self.paths for row in read_jsonl(path / SAMPLES).rows]

    @cached_property
    def judgements(self) -> dict[str, list[dict[str, Any]]]:
        """{judge name: its per-prompt lines} over every shard; a judge missing from a shard is left out."""
        per_path = [{file.stem: read_jsonl(file).rows for file in sorted((path / JUDGEMENTS).glob("*.jsonl"))}
                    for path in self.paths]
        names = set.intersection(*(set(found) for found in per_path)) if per_path else set()
        for name in sorted(set().union(*per_path) - names):
            self.notes.append(f"{self.path}: judge {name} has not scored every shard; left out")
        return {name: [line for found in per_path for line in found[name]] for name in sorted(names)}

    @cached_property
    def judge_scores(self) -> dict[str, dict[str, Any]]:
        """{judge name: {"top1_mean", "top1_n", "avgk_mean"?, "judged", "failures"}} from the judgements."""
        return {name: {key.removeprefix(f"{name}_"): value for key, value in summary_fields(name, lines).items()}
                for name, lines in self.judgements.items()}


@dataclass
class Incomplete:
    """A job directory without summary.json, and why it is left out."""

    path: Path
    reason: str
    corrupted: bool = False  # it finished once, but a file it needs cannot be read


def _is_run_dir(path: Path) -> bool:
    if path.name in NOT_RUNS:
        return False
    return any((path / name).exists() for name in (SUMMARY, CONFIG, METADATA, ".hydra"))


def _expand(argument: str) -> list[Path]:
    if glob.has_magic(argument):
        matches = sorted(glob.glob(argument, recursive=True))
        if not matches:
            raise ReportError(f"{argument}: the pattern matches nothing")
        return [Path(m) for m in matches]
    path = Path(argument)
    if not path.exists():
        raise ReportError(f"{argument}: no such file or directory")
    return [path]


def find_run_dirs(arguments: Iterable[str | Path]) -> list[Path]:
    """Job directories named by, or found below, each argument (a directory, a file in one, a glob)."""
    found: dict[Path, None] = {}
    for argument in arguments:
        for path in _expand(str(argument)):
            if path.is_file():
                path = path.parent
            if _is_run_dir(path):
                found[path.resolve()] = None
                continue
            for root, dirs, _ in os.walk(path, followlinks=True):
                dirs[:] = sorted(d for d in dirs if d not in NOT_RUNS)
                for name in list(dirs):
                    if _is_run_dir(Path(root) / name):
                        found[(Path(root) / name).resolve()] = None
                        dirs.remove(name)  # runs do not nest
    return list(found)


class _Corrupted(Exception):
    """A file of a finished run cannot be read (torn by a crash, edited by hand)."""


def _read_mapping(file: Path, parse) -> dict[str, Any]:
    try:
        content = parse(file.read_text(encoding="utf-8")) or {}
    except (OSError, UnicodeDecodeError, ValueError, yaml.YAMLError) as error:  # JSONDecodeError is a ValueError
        raise _Corrupted(f"corrupted {file}: {type(error).__name__}: {str(error).splitlines()[0]}") from None
    if not isinstance(content, dict):
        raise _Corrupted(f"corrupted {file}: not a mapping")
    return content


def load_run(path: str | Path) -> Run | Incomplete:
    """One job directory as a `Run`, or `Incomplete` with the reason it cannot be reported."""
    path = Path(path)
    summary_file, config_file = path / SUMMARY, path / CONFIG
    if not config_file.is_file():
        return Incomplete(path, "no config.yaml (the job stopped before it started generating)")
    if not summary_file.is_file():
        try:
            metadata = _read_mapping(path / METADATA, json.loads) if (path / METADATA).is_file() else {}
            error = _read_mapping(path / ERROR, json.loads) if (path / ERROR).is_file() else None
        except _Corrupted as why:
            return Incomplete(path, f"no summary.json, and {why}")
        total = f" of {len(metadata.get('prompt_ids', []))}" if metadata else ""
        done = len(read_jsonl(path / SAMPLES).rows)
        if error is not None:  # written by entrgi.run when the job raised
            return Incomplete(path, f"failed ({done}{total} prompts written): {error.get('type')}: "
                                    f"{error.get('message')}")
        return Incomplete(path, f"no summary.json ({done}{total} prompts written): unfinished or failed")
    try:
        config = _read_mapping(config_file, yaml.safe_load)
        summary = _read_mapping(summary_file, json.loads)
        metadata = _read_mapping(path / METADATA, json.loads) if (path / METADATA).is_file() else {}
    except _Corrupted as error:
        return Incomplete(path, str(error), corrupted=True)
    prompt_ids = metadata.get("prompt_ids") or [row["prompt_id"] for row in read_jsonl(path / SAMPLES).rows]
    return Run(paths=(path,), config=config, summary=summary, prompt_ids=tuple(prompt_ids),
               finished=summary_file.stat().st_mtime)


def _merge(parts: list[Run]) -> Run:
    """Shards of one run (disjoint prompts) as one run: per-prompt means re-weighted by prompts."""
    parts = sorted(parts, key=lambda run: run.prompt_ids)
    n = [run.summary["n_prompts"] for run in parts]
    summary = dict(parts[0].summary)
    for key in ("top1_mean", "avgk_mean"):
        summary[key] = sum(run.summary[key] * k for run, k in zip(parts, n, strict=True)) / sum(n)
    summary["n_prompts"] = sum(n)
    summary["wall_seconds"] = sum(run.summary.get("wall_seconds", 0.0) for run in parts)
    summary[COMPUTE] = merged_totals([run.summary.get(COMPUTE) for run in parts])
    merged = Run(paths=tuple(p for run in parts for p in run.paths), config=parts[0].config, summary=summary,
                 prompt_ids=tuple(i for run in parts for i in run.prompt_ids),
                 finished=max(run.finished for run in parts))
    for key in STEP_MEANS:  # the same definition as one job's summary: mean over guided steps
        values = [row[key] for row in merged.steps if key in row]
        summary.pop(key, None)
        if values:
            summary[key] = sum(values) / len(values)
    return merged


def merge_shards(runs: list[Run], shard_keys: Sequence[str] = SHARD_KEYS) -> tuple[list[Run], list[str]]:
    """Merge shards of one run; of the same run found twice keep the newest. Returns runs and notes."""
    groups: dict[tuple, list[Run]] = {}
    for run in runs:
        groups.setdefault(run.identity(shard_keys), []).append(run)
    merged, notes = [], []
    for members in groups.values():
        members.sort(key=lambda run: run.finished, reverse=True)
        kept: list[Run] = []
        for run in members:  # newest first: a rerun replaces older copies of the same prompts
            clash = next((k for k in kept if set(k.prompt_ids) & set(run.prompt_ids)), None)
            if clash is None:
                kept.append(run)
            else:
                notes.append(f"{run.path}: same run as {clash.path}, which is newer and is used")
        expected = kept[0].flat_config.get("benchmark.num_shards")
        if isinstance(expected, int) and len(kept) < expected:
            notes.append(f"{kept[0].path}: only {len(kept)} of its {expected} shards are finished; "
                         "the run covers part of its slice")
        if len(kept) > 1:
            notes.append(f"merged {len(kept)} shards: " + ", ".join(str(run.path) for run in kept))
            merged.append(_merge(kept))
        else:
            merged.append(kept[0])
    return merged, notes


@dataclass
class Collection:
    """What `collect_runs` found: finished runs (shards merged), incomplete jobs, and notes."""

    runs: list[Run]
    incomplete: list[Incomplete]
    notes: list[str]


def collect_runs(arguments: Iterable[str | Path], shard_keys: Sequence[str] = SHARD_KEYS) -> Collection:
    arguments = list(arguments)
    directories = find_run_dirs(arguments)
    if not directories:
        raise ReportError("no run directories (with config.yaml or summary.json) under: "
                          + " ".join(map(str, arguments)))
    loaded = [load_run(path) for path in directories]
    runs, notes = merge_shards([r for r in loaded if isinstance(r, Run)], shard_keys)
    return Collection(runs=runs, incomplete=[r for r in loaded if isinstance(r, Incomplete)], notes=notes)
