"""The results table: runs grouped into rows, Top@1 and Avg@K as mean ± SEM over seeds.

Judges (`entrgi.evaluators`) add columns beside them: each judge's score of the Top@1 response
(and its Avg@K when it judged all K), mean ± SEM over the seeds it scored, from the runs'
`judgements/` files, and the number of responses it failed to score when any. Runs that account
their compute (`entrgi.compute`) add the estimated FLOPs per prompt, mean over seeds, in one SI
unit for the whole table.

A row is one benchmark × method, split further by reward model and M when the runs vary
them, and by any other config value that differs within a benchmark × method (shown as
`key=value` under Settings, so runs that computed different things are never averaged as
if they were seeds). Every run in a row must have scored the same prompts.
"""

from __future__ import annotations

import csv
import math
import os
import re
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from entrgi.reporting.runs import EXECUTION_KEYS, SHARD_KEYS, ReportError, Run, key_under

SI_PREFIXES = ("", "k", "M", "G", "T", "P", "E")  # of the FLOP/prompt column's unit, one per power of 1000
# The paper's column order; other method names follow alphabetically.
METHOD_ORDER = ("none", "soft", "aps", "entrgi")
# Not row keys: the seed is what a row averages over; benchmark.* defines the prompt slice,
# which must be the same within a row (checked, not split); name is the method itself; the reward's
# path or class is its "Reward model" column.
NOT_ROW_KEYS = ("seed", "name", "benchmark", "reward.path", "reward._target_", "guidance.M", *SHARD_KEYS,
                *EXECUTION_KEYS)


def _value(key: str, value: Any) -> Any:
    """Checkpoints are compared by folder name, so one model in two places is one model."""
    if key.endswith(".path") and isinstance(value, str):
        return Path(value).name
    return value


def model_size(name: str) -> float | None:
    """Parameters in billions from a model name ('Skywork-Reward-V2-Qwen3-1.7B' -> 1.7), else None."""
    match = re.search(r"(\d+(?:\.\d+)?)\s*[bB](?![a-zA-Z])", name)
    return float(match.group(1)) if match else None


@dataclass(frozen=True)
class Stat:
    """Mean over seeds and its standard error (None with one seed)."""

    mean: float
    sem: float | None
    n: int

    @classmethod
    def of(cls, values: list[float]) -> Stat:
        n = len(values)
        sem = statistics.stdev(values) / math.sqrt(n) if n > 1 else None
        return cls(statistics.fmean(values), sem, n)

    def format(self, digits: int = 4) -> str:
        return f"{self.mean:.{digits}f}" + ("" if self.sem is None else f" ± {self.sem:.{digits}f}")


@dataclass
class Row:
    benchmark: str
    method: str
    reward_model: str
    M: int | None
    settings: tuple[tuple[str, Any], ...]
    runs: list[Run]  # one per seed, sorted by seed

    @cached_property
    def top1(self) -> Stat:
        return Stat.of([run.summary["top1_mean"] for run in self.runs])

    @cached_property
    def avgk(self) -> Stat:
        return Stat.of([run.summary["avgk_mean"] for run in self.runs])

    @property
    def seeds(self) -> list[Any]:
        return [run.seed for run in self.runs]

    def judged(self, name: str) -> list[Run]:
        return [run for run in self.runs if name in run.judge_scores]

    def judge(self, name: str, field: str = "top1_mean") -> Stat | None:
        """A judge's `field` (`top1_mean` or `avgk_mean`) as mean ± SEM over the seeds it scored."""
        values = [run.judge_scores[name].get(field) for run in self.judged(name)]
        values = [v for v in values if v is not None]
        return Stat.of(values) if values else None

    def judge_count(self, name: str, field: str) -> int | None:
        """`failures` or `judged` summed over the seeds the judge scored (None if it scored none)."""
        runs = self.judged(name)
        return sum(run.judge_scores[name][field] for run in runs) if runs else None

    @cached_property
    def flops_per_prompt(self) -> Stat | None:
        """Estimated FLOPs per prompt (all K samples), mean ± SEM over seeds; None unless every seed has it."""
        values = [run.flops_per_prompt for run in self.runs]
        return None if None in values else Stat.of(values)

    @property
    def n_prompts(self) -> int:
        return len(self.runs[0].prompt_ids) or int(self.runs[0].summary.get("n_prompts", 0))

    @property
    def num_samples(self) -> int | None:
        return self.runs[0].num_samples

    @property
    def settings_text(self) -> str:
        return " ".join(f"{key}={value}" for key, value in self.settings)

    def sort_key(self) -> tuple:
        order = METHOD_ORDER.index(self.method) if self.method in METHOD_ORDER else len(METHOD_ORDER)
        size = model_size(self.reward_model)
        return (self.benchmark, order, self.method, size is None, size or 0.0, self.reward_model,
                self.M is not None, self.M or 0, [(key, _natural(value)) for key, value in self.settings])


def _natural(value: Any) -> tuple:
    """A sort key putting numbers in numeric order (K = 4, 8, 16, 32), before any other value."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return (0, value, "")
    return (1, 0, str(value))


@dataclass
class Table:
    rows: list[Row]
    notes: list[str]

    @property
    def varies_reward(self) -> bool:
        return len({row.reward_model for row in self.rows}) > 1

    @property
    def varies_M(self) -> bool:
        return len({row.M for row in self.rows if row.M is not None}) > 1

    @property
    def has_settings(self) -> bool:
        return any(row.settings for row in self.rows)

    @property
    def benchmarks(self) -> list[str]:
        return sorted({row.benchmark for row in self.rows})

    @cached_property
    def _reward_prefix(self) -> str:
        """What all reward model names share up to a '-' ('Skywork-Reward-V2-Qwen3-'), left out of legends."""
        names = sorted({row.reward_model for row in self.rows})
        if len(names) < 2:
            return ""
        common = os.path.commonprefix(names)
        return common[: common.rfind("-") + 1]

    def reward_label_of(self, name: str) -> str:
        """A reward model's short name for legends: 'Skywork-Reward-V2-Qwen3-4B' -> 'RM 4B' among Skyworks."""
        short = name[len(self._reward_prefix):]
        return f"RM {short}" if short and self._reward_prefix else name

    def reward_label(self, row: Row) -> str:
        return self.reward_label_of(row.reward_model)

    def label(self, row: Row) -> str:
        """The row's name in legends: the method, plus whatever else tells rows apart."""
        parts = [row.method]
        if self.varies_reward:
            parts.append(self.reward_label(row))
        if self.varies_M and row.M is not None:
            parts.append(f"M={row.M}")
        if row.settings:
            parts.append(row.settings_text)
        return " ".join(parts)

    def best(self, row: Row, column: str | Callable[[Row], Stat | None]) -> bool:
        """Is `row` the best (highest mean) of its benchmark in `column` ('top1', 'avgk' or a Stat getter)?"""
        stat_of = column if callable(column) else (lambda r: getattr(r, column))
        mine = stat_of(row)
        peers = [stat.mean for r in self.rows if r.benchmark == row.benchmark and (stat := stat_of(r)) is not None]
        return mine is not None and len(peers) > 1 and mine.mean >= max(peers)

    @cached_property
    def judges(self) -> list[str]:
        """Names of the judges that scored any run of the table."""
        return sorted({name for row in self.rows for run in row.runs for name in run.judge_scores})

    @cached_property
    def judge_columns(self) -> list[tuple[str, Callable[[Row], Stat | None]]]:
        """(header, Stat getter) of each judge's Top@1 column and, when it judged all K, Avg@K column."""
        columns = []
        for name in self.judges:
            columns.append((name, lambda r, n=name: r.judge(n)))
            if any(row.judge(name, "avgk_mean") for row in self.rows):
                columns.append((f"{name} {self.avgk_name}", lambda r, n=name: r.judge(n, "avgk_mean")))
        return columns

    @cached_property
    def judges_failing(self) -> list[str]:
        """Judges that failed on some response: they get a column of failure counts."""
        return [name for name in self.judges if any(row.judge_count(name, "failures") for row in self.rows)]

    @cached_property
    def flop_unit(self) -> tuple[float, str] | None:
        """(scale, SI prefix) that puts the largest FLOPs per prompt in [1, 1000); None without compute."""
        values = [row.flops_per_prompt.mean for row in self.rows if row.flops_per_prompt is not None]
        if not values:
            return None
        power = min(max(int(math.log10(max(max(values), 1.0)) // 3), 0), len(SI_PREFIXES) - 1)
        return 1000.0**power, SI_PREFIXES[power]

    @property
    def avgk_name(self) -> str:
        ks = {row.num_samples for row in self.rows}
        return f"Avg@{ks.pop()}" if len(ks) == 1 and None not in ks else "Avg@K"

    def _columns(self) -> list[str]:
        head = ["Benchmark", "Method"]
        head += ["Reward model"] if self.varies_reward else []
        head += ["M"] if self.varies_M else []
        head += ["Settings"] if self.has_settings else []
        head += ["Top@1", self.avgk_name] + [header for header, _ in self.judge_columns]
        head += [f"{name} failed" for name in self.judges_failing]
        head += [f"{self.flop_unit[1]}FLOP/prompt"] if self.flop_unit else []
        return head + ["Seeds", "Prompts"]

    def _cells(self, row: Row, mark) -> list[str]:
        cells = [row.benchmark, row.method]
        cells += [row.reward_model] if self.varies_reward else []
        cells += ["–" if row.M is None else str(row.M)] if self.varies_M else []
        cells += [row.settings_text] if self.has_settings else []
        cells += [mark(row.top1.format(), self.best(row, "top1")), mark(row.avgk.format(), self.best(row, "avgk"))]
        for _, stat_of in self.judge_columns:
            stat = stat_of(row)
            cells.append("–" if stat is None else mark(stat.format(), self.best(row, stat_of)))
        for name in self.judges_failing:
            failures = row.judge_count(name, "failures")
            cells.append("–" if failures is None else f"{failures}/{row.judge_count(name, 'judged')}")
        if self.flop_unit:
            flops = row.flops_per_prompt
            cells.append("–" if flops is None else f"{flops.mean / self.flop_unit[0]:.3g}")
        return cells + [str(len(row.runs)), str(row.n_prompts)]

    def markdown(self) -> str:
        head = self._columns()
        lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
        lines += ["| " + " | ".join(self._cells(row, lambda s, b: f"**{s}**" if b else s)) + " |"
                  for row in self.rows]
        lines += ["", "Mean ± SEM over seeds of the per-prompt mean; **bold**: best of its benchmark in that column."]
        if self.flop_unit:
            lines += [f"{self.flop_unit[1]}FLOP/prompt: estimated FLOPs of a prompt's K samples, their guidance and "
                      "their scoring (2·N per token forward, 4·N backward; `entrgi.compute`), mean over seeds."]
        if self.judges:
            lines += ["Judge columns score the Top@1 response (Avg@K: all K) and leave out responses the judge "
                      "failed on (`failed`: failed / judged, summed over seeds)."]
        return "\n".join(lines) + "\n"

    def console(self) -> str:
        """Fixed-width text for the terminal; `*` marks the best of each benchmark."""
        head = self._columns()
        body = [self._cells(row, lambda s, b: s + (" *" if b else "  ")) for row in self.rows]
        widths = [max(len(r[i]) for r in [head, *body]) for i in range(len(head))]
        numeric = set(range(head.index("Top@1"), len(head)))
        def fmt(cells):
            return "  ".join(c.rjust(w) if i in numeric else c.ljust(w)
                             for i, (c, w) in enumerate(zip(cells, widths, strict=True))).rstrip()
        return "\n".join([fmt(head), fmt(["-" * w for w in widths]), *map(fmt, body)])

    def write_csv(self, path: Path) -> None:
        fields = ["benchmark", "method", "reward_model", "M", "settings", "top1_mean", "top1_sem", "top1_best",
                  "avgk_mean", "avgk_sem", "avgk_best", "num_samples", "n_seeds", "seeds", "n_prompts",
                  "wall_seconds_mean", "flops_per_prompt_mean", "run_dirs"]
        judge_fields = [f"{name}_{field}" for name in self.judges for field in
                        ("top1_mean", "top1_sem", "avgk_mean", "avgk_sem", "failures", "judged", "n_seeds")]
        fields[fields.index("num_samples"):fields.index("num_samples")] = judge_fields
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fields)
            writer.writeheader()
            for row in self.rows:
                writer.writerow({
                    "benchmark": row.benchmark, "method": row.method, "reward_model": row.reward_model,
                    "M": "" if row.M is None else row.M, "settings": row.settings_text,
                    "top1_mean": repr(row.top1.mean), "top1_sem": "" if row.top1.sem is None else repr(row.top1.sem),
                    "top1_best": self.best(row, "top1"),
                    "avgk_mean": repr(row.avgk.mean), "avgk_sem": "" if row.avgk.sem is None else repr(row.avgk.sem),
                    "avgk_best": self.best(row, "avgk"), "num_samples": row.num_samples,
                    "n_seeds": len(row.runs), "seeds": " ".join(map(str, row.seeds)), "n_prompts": row.n_prompts,
                    "wall_seconds_mean": repr(statistics.fmean(r.summary.get("wall_seconds", math.nan)
                                                               for r in row.runs)),
                    "flops_per_prompt_mean": "" if row.flops_per_prompt is None else repr(row.flops_per_prompt.mean),
                    "run_dirs": " ".join(str(p) for r in row.runs for p in r.paths),
                    **{key: value for name in self.judges for key, value in _judge_csv(row, name).items()},
                })


def _judge_csv(row: Row, name: str) -> dict[str, Any]:
    """A judge's CSV fields for one row (empty where it scored no seed of the row)."""
    out: dict[str, Any] = {}
    for field in ("top1", "avgk"):
        stat = row.judge(name, f"{field}_mean")
        out[f"{name}_{field}_mean"] = "" if stat is None else repr(stat.mean)
        out[f"{name}_{field}_sem"] = "" if stat is None or stat.sem is None else repr(stat.sem)
    for field in ("failures", "judged"):
        count = row.judge_count(name, field)
        out[f"{name}_{field}"] = "" if count is None else count
    out[f"{name}_n_seeds"] = len(row.judged(name))
    return out


def _describe(run: Run) -> str:
    ids = run.prompt_ids
    shown = ", ".join(ids[:3]) + (", …" if len(ids) > 3 else "")
    return f"seed {run.seed} at {run.path}: {len(ids)} prompts ({shown})"


def _check_one_slice(row: Row) -> None:
    first = row.runs[0]
    for run in row.runs[1:]:
        if set(run.prompt_ids) != set(first.prompt_ids):
            raise ReportError(
                f"row {row.benchmark} / {row.method} mixes different prompt slices:\n  {_describe(first)}\n  "
                f"{_describe(run)}\nA row averages seeds over one fixed slice; pass runs made with the same "
                "benchmark.n_prompts / benchmark.slice_seed / categories, or report the slices separately."
            )


def build_rows(runs: list[Run]) -> Table:
    """Group finished runs into rows (see the module docstring); raises ReportError on mixed slices."""
    cells: dict[tuple[str, str], list[Run]] = {}
    for run in runs:
        cells.setdefault((run.benchmark, run.method), []).append(run)
    rows, notes = [], []
    for (benchmark, method), members in cells.items():
        flats = [{k: _value(k, v) for k, v in run.flat_config.items() if not key_under(k, NOT_ROW_KEYS)}
                 for run in members]
        keys = sorted({k for flat in flats for k in flat})
        varying = [k for k in keys if len({repr(flat.get(k)) for flat in flats}) > 1]
        groups: dict[tuple, list[Run]] = {}
        for run, flat in zip(members, flats, strict=True):
            settings = tuple((k, flat[k]) for k in varying if k in flat)  # a key the run lacks is not a setting
            groups.setdefault((run.reward_model, run.M, settings), []).append(run)
        for (reward_model, m, settings), group in groups.items():
            by_seed: dict[Any, Run] = {}
            for run in sorted(group, key=lambda r: r.finished):  # newest last, so it wins
                if run.seed in by_seed:
                    notes.append(f"{by_seed[run.seed].path}: seed {run.seed} again in {run.path}, which is newer "
                                 "and is used")
                by_seed[run.seed] = run
            row = Row(benchmark, method, reward_model, m, settings,
                      [by_seed[s] for s in sorted(by_seed, key=lambda s: (str(type(s)), s))])
            _check_one_slice(row)
            rows.append(row)
    rows.sort(key=Row.sort_key)
    for row in rows:
        for name in sorted({name for run in row.runs for name in run.judge_scores}):
            missing = [str(run.path) for run in row.runs if name not in run.judge_scores]
            if missing:  # its column averages fewer seeds than the others
                notes.append(f"{row.benchmark} / {row.method}: judge {name} has not scored {', '.join(missing)}")
        notes += [note for run in row.runs for note in run.notes]  # shards a judge has not scored
    return Table(rows, notes)
