"""Benchmarks: a fixed, recorded slice of prompts with stable ids.

The slice depends on (n_prompts, slice_seed) only, never on the sampling seed, so every
seed and every method of a sweep sees the same prompts (SPEC §7). `shard`/`num_shards` split
that fixed slice into disjoint parts (prompt j of the slice goes to shard j mod num_shards), so
several jobs can share one benchmark; `entrgi.report` merges them back into one run.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field
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

        local = Path(self.config.path).expanduser()
        if local.is_file() and local.suffix.lower() in _FILE_BUILDERS:
            return datasets.load_dataset(_FILE_BUILDERS[local.suffix.lower()], data_files=str(local), split="train")
        if local.is_dir():
            return datasets.load_dataset(str(local), split=self.config.split)
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
        for key in (self.config.prompt_field, self.config.category_field, self.config.id_field):
            if key is not None and key not in rows.column_names:
                raise KeyError(
                    f"benchmark field {key!r} not in {self.config.path} (columns: {', '.join(rows.column_names)})"
                )
        wanted = set(self.config.categories)
        seen: set[str] = set()
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
            kept.append(Prompt(id=pid, text=text, category=category))
        if empty or duplicate:
            log.warning("benchmark %s: dropped %d empty and %d duplicate prompts", self.config.name, empty, duplicate)
        if self.config.n_prompts is not None and self.config.n_prompts < len(kept):
            chosen = sorted(random.Random(self.config.slice_seed).sample(range(len(kept)), self.config.n_prompts))
            kept = [kept[i] for i in chosen]
        if not kept:
            raise ValueError(f"benchmark {self.config.name}: no prompts left after filtering {self.config.path}")
        return kept
