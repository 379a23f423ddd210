"""Benchmarks: a fixed, recorded slice of prompts with stable ids.

The slice depends on (n_prompts, slice_seed) only, never on the sampling seed, so every
seed and every method of a sweep sees the same prompts (SPEC §7). `shard`/`num_shards` split
that fixed slice into disjoint parts (prompt j of the slice goes to shard j mod num_shards), so
several jobs can share one benchmark; `entrgi.report` merges them back into one run.
"""

from __future__ import annotations

import json
import logging
import random
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from omegaconf import MISSING

from entrgi.schemas import schema
from entrgi.validation import ConfigError, ranged
from entrgi.weights import ResourceUnavailable, hub_reachable

log = logging.getLogger(__name__)

_FILE_BUILDERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv"}


class DatasetUnavailable(ResourceUnavailable):
    """A benchmark's dataset is neither local, nor cached, nor reachable."""


@dataclass(frozen=True)
class Prompt:
    id: str
    text: str
    category: str | None = None


class Truncate(StrEnum):
    """`benchmark.truncate`: what becomes of a prompt too long for a model's context (`BenchmarkConfig`)."""

    none = "none"
    left = "left"


@schema("benchmark")
@dataclass
class BenchmarkConfig:
    """The `benchmark` config group."""

    _target_: str = "entrgi.benchmarks.DatasetBenchmark"
    name: str = MISSING
    path: str = MISSING
    split: str = "train"
    prompt_field: str = "prompt"
    category_field: str | None = None
    id_field: str | None = None
    categories: list[str] = field(default_factory=list)
    n_prompts: int | None = ranged(None, low=1, optional=True)
    slice_seed: int = 0
    # Part `shard` of `num_shards` disjoint parts of the slice (strided: prompt j -> shard j mod n).
    shard: int = ranged(0, low=0)
    num_shards: int = ranged(1, low=1)
    # A prompt too long for the dLLM's or the RM's context: refuse the job (none) or cut its start (left).
    truncate: Truncate = Truncate.none


class DatasetBenchmark:
    """Prompts from a Hub dataset id, a local dataset folder, or a JSON/JSONL/parquet/CSV file,
    as its `BenchmarkConfig` says.

    Loading goes through `datasets`, so Hub ids use its cache and honour HF_DATASETS_OFFLINE.
    Rows without an id field are named `{split}-{row index}`.
    """

    def __init__(self, config: BenchmarkConfig):
        self.config = config

    def _load_rows(self):
        import datasets  # imported here: it is slow to import and only needed at load time

        datasets.disable_progress_bars()  # a prompt file loads in an instant; its bars only clutter stderr
        if not str(self.config.path or "").strip():
            raise ConfigError("benchmark.path is empty: set it to a prompt file, a dataset folder or a Hub id")
        local = Path(self.config.path).expanduser()
        if local.is_file():
            return self._load_file(local)
        if local.is_dir():
            return self._load_folder(local)
        hint = (
            f"point benchmark.path at a local copy (a dataset folder or a .jsonl/.json/.parquet/.csv file "
            f"with field {self.config.prompt_field!r}), or run the offline tiny setup with experiment=tiny"
        )
        if not datasets.config.HF_HUB_OFFLINE and not hub_reachable():
            raise DatasetUnavailable(
                f"benchmark.path={self.config.path!r}: the Hugging Face Hub is unreachable; set HF_DATASETS_OFFLINE=1 "
                f"to use a cached copy, or {hint}"
            )
        try:
            return datasets.load_dataset(self.config.path, split=self.config.split)
        except (ConnectionError, FileNotFoundError) as error:
            raise DatasetUnavailable(
                f"benchmark.path={self.config.path!r} split {self.config.split!r} is not in the datasets cache "
                f"({type(error).__name__}); {hint}"
            ) from None

    def _load_file(self, local: Path):
        """A local JSON / JSONL / CSV / parquet file; unreadable content is a one-line error naming it."""
        import datasets

        builder = _FILE_BUILDERS.get(local.suffix.lower())
        if builder is None:
            raise ConfigError(f"benchmark.path={self.config.path!r}: expected a .jsonl, .json, .csv or .parquet file, "
                              "a dataset folder or a Hub id")
        if builder != "parquet":
            _check_text_file(local, builder, self.config.path)
        try:
            return datasets.load_dataset(builder, data_files=str(local), split="train")
        except Exception as error:  # noqa: BLE001  (datasets raises many kinds; all mean "cannot read it")
            raise ConfigError(f"benchmark.path={self.config.path!r} cannot be read as {local.suffix.lstrip('.')}: "
                              f"{_first_line(error)}") from None

    def _load_folder(self, local: Path):
        """A dataset folder: `save_to_disk` of a Dataset or a DatasetDict, or a folder of data files."""
        import datasets

        if (local / "dataset_dict.json").is_file() or (local / "state.json").is_file():
            loaded = datasets.load_from_disk(str(local))
            if isinstance(loaded, datasets.Dataset):
                return loaded
            if self.config.split not in loaded:
                raise ConfigError(f"benchmark.split={self.config.split!r} is not in {self.config.path} "
                                  f"(splits: {', '.join(loaded)})")
            return loaded[self.config.split]
        try:
            found = datasets.load_dataset(str(local))
        except Exception as error:  # noqa: BLE001
            raise ConfigError(
                f"benchmark.path={self.config.path!r}: no dataset in this folder ({_first_line(error)})"
            ) from None
        if self.config.split not in found:
            raise ConfigError(
                f"benchmark.split={self.config.split!r} is not in {self.config.path} (splits: {', '.join(found)})"
            )
        return found[self.config.split]

    def prompts(self) -> list[Prompt]:
        """This job's prompts: the shard of the slice (the whole slice unless num_shards > 1)."""
        return self.shard_of(self.slice())

    def shard_of(self, prompts: list[Prompt]) -> list[Prompt]:
        """Part `shard` of the slice: prompts shard, shard + num_shards, … (in slice order).

        Strided rather than contiguous so every shard gets a similar mix of categories and
        prompt lengths; sizes differ by at most one.
        """
        shard, num_shards = self.config.shard, self.config.num_shards
        if not 0 <= shard < num_shards:
            raise ConfigError(
                f"benchmark.shard={shard} is not allowed: expected a value in [0, {num_shards - 1}] "
                f"(benchmark.num_shards={num_shards})"
            )
        if num_shards > len(prompts):
            raise ConfigError(
                f"benchmark.num_shards={num_shards} is not allowed: the slice has only {len(prompts)} prompts"
            )
        return prompts[shard::num_shards]

    def slice(self) -> list[Prompt]:
        """The slice: category filter, empty and duplicate prompts dropped, then n_prompts drawn."""
        rows = self._load_rows()
        fields = {key: getattr(self.config, key) for key in ("prompt_field", "category_field", "id_field")}
        for key, value in fields.items():
            if value is not None and value not in rows.column_names:
                raise ConfigError(f"benchmark.{key}={value!r} is not a field of {self.config.path} "
                                  f"(fields: {', '.join(rows.column_names)})")
        wanted = set(self.config.categories)
        if wanted:
            if self.config.category_field is None:
                raise ConfigError(f"benchmark.categories={sorted(wanted)} needs benchmark.category_field "
                                  f"(fields of {self.config.path}: {', '.join(rows.column_names)})")
            there = {str(c) for c in rows[self.config.category_field]}
            if wanted - there:
                unknown = ", ".join(sorted(wanted - there))
                raise ConfigError(f"benchmark.categories: {unknown} not in {self.config.path} "
                                  f"(categories: {', '.join(sorted(there))})")
        seen: set[str] = set()
        rows_of: dict[str, list[int]] = {}
        kept, empty, duplicate = [], 0, 0
        for index, row in enumerate(rows):
            category = str(row[self.config.category_field]) if self.config.category_field else None
            if wanted and category not in wanted:
                continue
            text = row[self.config.prompt_field]
            if not isinstance(text, str) or not text.strip():
                empty += 1
                continue
            if text in seen:
                duplicate += 1
                continue
            seen.add(text)
            pid = str(row[self.config.id_field]) if self.config.id_field else f"{self.config.split}-{index}"
            rows_of.setdefault(pid, []).append(index)
            kept.append(Prompt(id=pid, text=text, category=category))
        clashes = {pid: where for pid, where in rows_of.items() if len(where) > 1}
        if clashes:  # results are keyed by id: a resumed run would silently drop prompts
            pid, where = next(iter(clashes.items()))
            more = f" ({len(clashes) - 1} more ids repeat)" if len(clashes) > 1 else ""
            raise ConfigError(f"benchmark.id_field={self.config.id_field!r}: id {pid!r} is used by rows "
                              f"{', '.join(map(str, where))} of {self.config.path}{more}; ids must be unique")
        if empty or duplicate:
            log.warning("benchmark %s: dropped %d empty and %d duplicate prompts", self.config.name, empty, duplicate)
        if not kept:
            raise ConfigError(f"benchmark.prompt_field={self.config.prompt_field!r}: no non-blank prompt left in "
                              f"{self.config.path}" + (f" for benchmark.categories={sorted(wanted)}" if wanted else ""))
        if self.config.n_prompts is not None and self.config.n_prompts > len(kept):
            log.warning("benchmark.n_prompts=%d but %s has %d prompts: using all %d",
                        self.config.n_prompts, self.config.path, len(kept), len(kept))
        elif self.config.n_prompts is not None and self.config.n_prompts < len(kept):
            chosen = sorted(random.Random(self.config.slice_seed).sample(range(len(kept)), self.config.n_prompts))
            kept = [kept[i] for i in chosen]
        return kept


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"


def _check_text_file(path: Path, builder: str, key_value: str) -> None:
    """Refuse an empty, non-UTF-8 or (for JSON) malformed file with the line at fault."""
    raw = path.read_bytes()
    if not raw.strip():
        raise ConfigError(f"benchmark.path={key_value!r} is empty")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        line = raw[: error.start].count(b"\n") + 1
        raise ConfigError(f"benchmark.path={key_value!r} is not UTF-8 text (line {line}, byte {error.start}); "
                          "convert it, e.g. with iconv -t utf-8") from None
    if builder != "json":
        return
    try:
        json.loads(text)
        return  # one JSON document (a list of rows, or {"data": [...]})
    except json.JSONDecodeError:
        pass
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            try:
                json.loads(line)
            except json.JSONDecodeError as error:
                raise ConfigError(f"benchmark.path={key_value!r}: line {number} is not valid JSON ({error.msg}, "
                                  f"column {error.colno})") from None
