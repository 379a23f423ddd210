"""The run directory: everything needed to trust, resume and aggregate one job.

Each batch is written in one order — its `steps.jsonl` rows, its increments of additive
artifacts (`artifact_parts.jsonl`: the entropy/error histogram counts of that batch), then its
`samples.jsonl` lines — each file appended, flushed and fsynced. The samples lines are the
commit: a batch counts as done when all its prompts are in `samples.jsonl` (every line says
its `batch` and `batch_size`). A crash loses at most the batch in flight; `resume` drops what
that batch left behind (a line cut short, steps or histogram counts of a batch that was never
committed, the first prompts of a batch whose last ones are missing), so the rerun writes
every prompt exactly once and the statistics cover exactly the committed prompts.

`summary.json` is written atomically once the job is complete; its presence is what marks a
run as finished. Only one process may write a directory at a time (`lock`).
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from omegaconf import DictConfig, OmegaConf

from entrgi.validation import ConfigError
from entrgi.weights import ResourceUnavailable

# The files of a run directory, named here only (the runner, the report, the judges and the sweep
# summary read them through these names).
SAMPLES = "samples.jsonl"
STEPS = "steps.jsonl"
PARTS = "artifact_parts.jsonl"
HISTOGRAM = "entropy_error_histogram.json"
SUMMARY = "summary.json"
CONFIG = "config.yaml"
METADATA = "run.json"
ERROR = "error.json"
LOCK = ".lock"
JUDGEMENTS = "judgements"  # one file per evaluator (entrgi.evaluators.judging)
JUDGEMENTS_LOCK = ".judgements.lock"  # serialises judging jobs' summary updates (not the generation lock)
FIGURES = "figures"
WANDB = "wandb"
# What `run.overwrite=true` deletes: everything a job writes (Hydra's .hydra/ and log stay).
RESULTS = (SAMPLES, STEPS, PARTS, SUMMARY, CONFIG, METADATA, ERROR, HISTOGRAM, FIGURES, WANDB, JUDGEMENTS)


class RunDirectoryBusy(ResourceUnavailable):
    """Another process is writing the same run directory."""


class RunDirectoryMismatch(ConfigError):
    """The directory holds results of a different config (or prompt slice) than this job's."""


def git_revision(where: Path) -> dict[str, Any]:
    """Commit and dirty flag of the checkout holding `where`, or `unknown` outside git."""
    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(where), *args], capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()

    try:
        return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}
    except (OSError, subprocess.SubprocessError):
        return {"commit": "unknown", "dirty": None}


def atomic_write(path: Path, text: str) -> None:
    """Replace `path` with `text` atomically: written beside it, flushed to disk, renamed over it."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class JsonLines(NamedTuple):
    rows: list[dict[str, Any]]
    dropped: bool  # a line was cut short (no newline) or unreadable and left out


def read_jsonl(path: Path) -> JsonLines:
    """The complete JSON lines of a file (none when it is absent). A line counts only with its
    newline: one cut short by a crash, or unreadable, is left out and reported in `dropped`."""
    if not path.is_file():
        return JsonLines([], False)
    *complete, tail = path.read_bytes().split(b"\n")
    rows, dropped = [], bool(tail.strip())
    for line in complete:
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            dropped = True
    return JsonLines(rows, dropped)


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    """Replace a JSON-lines file whole and atomically."""
    atomic_write(path, "".join(json.dumps(row) + "\n" for row in rows))


def is_locked(path: Path) -> bool:
    """Does a process hold the lock file `path` (probed without waiting; see `RunDirectory.lock`)?"""
    from filelock import FileLock, Timeout

    if not path.is_file():
        return False
    try:
        FileLock(str(path)).acquire(timeout=0).lock.release()
    except Timeout:
        return True
    return False


def comparable_config(cfg: DictConfig | dict[str, Any]) -> dict[str, Any]:
    """A resolved config as the flat {key: value} of what it computes (run-control keys left out)."""
    import yaml

    from entrgi.reporting.runs import EXECUTION_KEYS, flatten, key_under

    if isinstance(cfg, DictConfig):  # through YAML, exactly as config.yaml stores it
        cfg = yaml.safe_load(OmegaConf.to_yaml(cfg, resolve=True))
    return {k: v for k, v in flatten(cfg).items() if not key_under(k, EXECUTION_KEYS)}


# --- additive artifacts (histogram counts) --------------------------------------------------------


def _flat(counts: Any) -> tuple[list[int], list[float]]:
    shape, values = [], counts
    while isinstance(values, list):
        shape.append(len(values))
        values = values[0] if values else None
    flat = counts
    for _ in shape[1:]:
        flat = [x for row in flat for x in row]
    return shape, flat


def _unflat(shape: list[int], flat: list[float]) -> Any:
    for size in reversed(shape[1:]):
        flat = [flat[i : i + size] for i in range(0, len(flat), size)]
    return flat


def additive(content: Any) -> bool:
    """Artifacts with a `counts` array (histograms) add up over batches and can be resumed."""
    return isinstance(content, dict) and isinstance(content.get("counts"), list)


def counts_increment(now: dict[str, Any], before: dict[str, Any] | None) -> dict[str, Any]:
    """The counts added since `before`, sparse: {"shape", "nonzero": [[flat index, value], ...]}."""
    shape, flat = _flat(now["counts"])
    old = _flat(before["counts"])[1] if before else [0.0] * len(flat)
    return {"shape": shape, "nonzero": [[i, a - b] for i, (a, b) in enumerate(zip(flat, old, strict=True)) if a != b]}


def sum_increments(template: dict[str, Any], increments: list[dict[str, Any]]) -> dict[str, Any]:
    """`template` (edges etc. of the artifact) with counts = the sum of the increments."""
    shape, flat = _flat(template["counts"])
    total = [0.0] * len(flat)
    for inc in increments:
        if list(inc["shape"]) != shape:
            raise ValueError(f"artifact shape changed between attempts: {inc['shape']} vs {shape}")
        for i, value in inc["nonzero"]:
            total[i] += value
    return {**template, "counts": _unflat(shape, total)}


# --- the directory ----------------------------------------------------------------------------------


@dataclass
class Progress:
    """What earlier attempts committed: complete batches only."""

    records: list[dict[str, Any]] = field(default_factory=list)
    steps: list[dict[str, Any]] = field(default_factory=list)
    parts: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ids(self) -> set[str]:
        return {r["prompt_id"] for r in self.records}

    @property
    def next_batch(self) -> int:
        return max((r["batch"] for r in self.records), default=-1) + 1

    def batches(self) -> Iterator[tuple[list[dict[str, Any]], list[dict[str, Any]]]]:
        """(records, steps) of each committed batch, in order."""
        for b in sorted({r["batch"] for r in self.records}):
            yield [r for r in self.records if r["batch"] == b], [s for s in self.steps if s.get("batch") == b]


class RunDirectory:
    """Writes the files of one job into `path`."""

    # Seconds to wait for the directory: entrgi.sweeps probes the lock for an instant to tell
    # running jobs from stopped ones; a job holding it for longer is a concurrent duplicate.
    LOCK_TIMEOUT = 5.0

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the directory for this process (an OS lock: released when the process dies)."""
        from filelock import FileLock, Timeout

        lock = FileLock(str(self.path / LOCK))
        try:
            lock.acquire(timeout=self.LOCK_TIMEOUT)
        except Timeout:
            raise RunDirectoryBusy(
                f"{self.path} is being written by another job with the same config; wait for it, or give "
                "this one another directory (hydra.run.dir=...)"
            ) from None
        try:
            yield
        finally:
            lock.release()

    def reset(self) -> None:
        """Delete this directory's results (`run.overwrite=true`)."""
        for name in RESULTS:
            target = self.path / name
            if target.is_dir():
                shutil.rmtree(target)
            else:
                target.unlink(missing_ok=True)

    def check_config(self, cfg: DictConfig) -> None:
        """Refuse to resume, or to call finished, results of a different config."""
        if not (self.path / CONFIG).is_file():
            return
        import yaml

        before = comparable_config(yaml.safe_load((self.path / CONFIG).read_text()) or {})
        now = comparable_config(cfg)
        differ = sorted(k for k in before.keys() | now.keys() if before.get(k, "<unset>") != now.get(k, "<unset>"))
        if differ:
            shown = "; ".join(f"{k}: {now.get(k, '<unset>')!r} now, {before.get(k, '<unset>')!r} there"
                              for k in differ[:3])
            more = f" and {len(differ) - 3} more" if len(differ) > 3 else ""
            raise RunDirectoryMismatch(
                f"{self.path} holds a run of another config ({shown}{more}); rerun with run.overwrite=true "
                "to replace it, or give this job another directory (hydra.run.dir=...)"
            )

    def finished(self) -> dict[str, Any] | None:
        """summary.json of a finished run, else None."""
        path = self.path / SUMMARY
        return json.loads(path.read_text()) if path.is_file() else None

    def resume(self, prompt_ids: list[str]) -> Progress:
        """Load what earlier attempts committed and cut away everything else (see the module docstring)."""
        if (self.path / METADATA).is_file():
            before = json.loads((self.path / METADATA).read_text()).get("prompt_ids")
            if before is not None and list(before) != list(prompt_ids):
                raise RunDirectoryMismatch(
                    f"{self.path} holds results for another prompt slice (the benchmark data changed?); "
                    "rerun with run.overwrite=true to start afresh"
                )
        wanted = set(prompt_ids)
        records, dropped = read_jsonl(self.path / SAMPLES)
        unknown = {r.get("prompt_id") for r in records} - wanted
        if unknown:
            raise RunDirectoryMismatch(
                f"{self.path / SAMPLES} has prompts outside this job's slice ({sorted(map(str, unknown))[:3]}); "
                "rerun with run.overwrite=true to start afresh"
            )
        by_batch: dict[Any, list[dict[str, Any]]] = {}
        for r in records:
            by_batch.setdefault(r.get("batch"), []).append(r)
        seen: set[str] = set()
        kept = []
        for batch, rows in by_batch.items():
            ids = [r["prompt_id"] for r in rows]
            complete = batch is not None and len(rows) == rows[0].get("batch_size") and not seen & set(ids)
            if complete:
                kept += rows
                seen.update(ids)
        dropped |= len(kept) != len(records)
        if dropped:
            write_jsonl(self.path / SAMPLES, kept)
        committed = {r["batch"] for r in kept}
        progress = Progress(records=kept)
        for name, target in ((STEPS, progress.steps), (PARTS, progress.parts)):
            rows, cut = read_jsonl(self.path / name)
            target += [row for row in rows if row.get("batch") in committed]
            if cut or len(target) != len(rows):
                write_jsonl(self.path / name, target)
        return progress

    def write_metadata(self, cfg: DictConfig, extra: dict[str, Any]) -> None:
        """The resolved config and what produced it (code revision, versions, where each attempt ran)."""
        import torch
        import transformers

        atomic_write(self.path / CONFIG, OmegaConf.to_yaml(cfg, resolve=True))
        attempts = []
        if (self.path / METADATA).is_file():
            attempts = json.loads((self.path / METADATA).read_text()).get("attempts", [])
        attempt = {
            "started": time.time(),
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "device_slot": os.environ.get("ENTRGI_DEVICE_SLOT"),
            "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
            "resumed_prompts": extra.pop("resumed_prompts", 0),
        }
        meta = {
            "git": git_revision(Path(__file__).resolve().parent),
            "argv": sys.argv[1:],
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            **extra,
            "attempts": [*attempts, attempt],
        }
        atomic_write(self.path / METADATA, json.dumps(meta, indent=2))

    def _append(self, name: str, records: list[dict[str, Any]]) -> None:
        with open(self.path / name, "a") as f:
            f.write("".join(json.dumps(record) + "\n" for record in records))
            f.flush()
            os.fsync(f.fileno())

    def append_samples(self, records: list[dict[str, Any]]) -> None:
        self._append(SAMPLES, records)

    def append_steps(self, records: list[dict[str, Any]]) -> None:
        self._append(STEPS, records)

    def append_batch(self, records: list[dict[str, Any]], steps: list[dict[str, Any]],
                     parts: dict[str, Any] | None = None) -> None:
        """One finished batch; its samples lines go last: they commit it (see the module docstring)."""
        self.append_steps(steps)
        if parts:
            self._append(PARTS, [{"batch": records[0]["batch"], **parts}])
        self.append_samples(records)

    def write_json(self, name: str, content: Any) -> None:
        atomic_write(self.path / f"{name}.json", json.dumps(content))

    def write_judgements(self, name: str, rows: list[dict[str, Any]]) -> None:
        """One evaluator's per-prompt scores, replacing its earlier ones whole and atomically."""
        (self.path / JUDGEMENTS).mkdir(exist_ok=True)
        write_jsonl(self.path / JUDGEMENTS / f"{name}.jsonl", rows)

    def write_summary(self, summary: dict[str, Any]) -> None:
        atomic_write(self.path / SUMMARY, json.dumps(summary, indent=2))
