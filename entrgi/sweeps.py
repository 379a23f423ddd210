"""Sweeps: deterministic job directories, per-job error records and the sweep summary.

Directory names are functions of the config, never of the clock, so rerunning a command
finds its directories again and resumes (`entrgi.experiment`). `conf/config.yaml` uses
two resolvers registered by `entrgi.config`:

* `${entrgi.job_dir:${hydra.overrides.task},${seed},${benchmark.shard},${benchmark.num_shards}}`
  — one job: its command-line overrides, sorted, without the run-control keys
  (`RUN_CONTROL_KEYS`: `run.*`, the logger, devices and batch sizes — how a job runs, not
  what it computes), then `seed=<seed>` always and
  `shard=<i>of<n>` when the benchmark is sharded, e.g. `experiment=tiny,guidance=aps,seed=2`.
* `${entrgi.sweep_dir:${hydra.overrides.task}}` — one multirun: its overrides as typed on the
  command line (sweeps included: `guidance=none,soft`), sorted, without run-control keys.
  Resolved once in the launching process and cached: Hydra copies the cache into every
  job's config, which is how job processes agree on the sweep directory.

A job that raises writes `error.json` into its directory (`write_error`); every job of a
multirun, finished or failed, rewrites `<sweep dir>/sweep.json` (`SweepSummary`), so the last
one to end leaves the state of the whole sweep.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import socket
import time
import traceback
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback

from entrgi.reporting.runs import EXECUTION_KEYS, SHARD_KEYS, key_under
from entrgi.run_directory import ERROR, LOCK, SAMPLES, SUMMARY, RunDirectoryBusy, atomic_write, is_locked, read_jsonl

log = logging.getLogger(__name__)

SWEEP_SUMMARY = "sweep.json"
# Keys that say how a job runs, not what it computes: left out of directory names, so a
# rerun with another logger, device or batch size (after an OOM) resumes the same directory.
RUN_CONTROL_KEYS: tuple[str, ...] = EXECUTION_KEYS
_MAX_NAME = 160
_UNSAFE = re.compile(r"[^A-Za-z0-9._,=+@~-]")


def _overrides(lines: Iterable[Any]):
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return OverridesParser.create().parse_overrides([str(line) for line in lines])


def _item(override) -> str:
    """`key=value` as typed after the `=` (sweeps cannot be rendered back by Hydra); `~key` alone."""
    _, sep, value = override.input_line.partition("=")
    return f"{override.get_key_element()}={value.strip()}" if sep else override.get_key_element()


def safe_name(items: list[str]) -> str:
    """Items joined by `,` as one path component; a hash is appended when characters had to be
    replaced or the name was cut, so two different configs never share a name."""
    raw = ",".join(items) or "default"
    name = _UNSAFE.sub("_", raw)
    if name != raw or len(name) > _MAX_NAME:
        digest = hashlib.sha1(raw.encode()).hexdigest()[:10]
        name = f"{name[:_MAX_NAME - 11]}-{digest}"
    return name


def job_dir_name(overrides: Iterable[Any], seed: int, shard: int = 0, num_shards: int = 1) -> str:
    """The directory name of one job; see the module docstring."""
    skip = (*RUN_CONTROL_KEYS, "seed", *SHARD_KEYS)
    items = sorted(_item(o) for o in _overrides(overrides) if not key_under(o.key_or_group, skip))
    items.append(f"seed={seed}")
    if num_shards > 1:
        items.append(f"shard={shard}of{num_shards}")
    return safe_name(items)


def sweep_dir_name(overrides: Iterable[Any]) -> str:
    """The directory name of one multirun: its overrides as given (sweeps included), sorted."""
    return safe_name(sorted(_item(o) for o in _overrides(overrides) if not key_under(o.key_or_group, RUN_CONTROL_KEYS)))


# --- failures ---------------------------------------------------------------------------------------


def write_error(job_dir: str | Path, error: BaseException, overrides: list[str] | None = None) -> Path:
    """Record why a job failed in `<job_dir>/error.json` (type, message, traceback, where, when).

    A duplicate refused because another job holds the directory records nothing there: the
    directory and its state belong to that job.
    """
    path = Path(job_dir) / ERROR
    if isinstance(error, RunDirectoryBusy):
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "type": type(error).__name__,
        "message": str(error),
        "traceback": "".join(traceback.format_exception(type(error), error, error.__traceback__)),
        "overrides": overrides,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    atomic_write(path, json.dumps(record, indent=2))
    return path


def clear_error(job_dir: str | Path) -> None:
    """Forget an earlier attempt's failure, unless another process is working in the directory now."""
    if not _running(Path(job_dir)):
        (Path(job_dir) / ERROR).unlink(missing_ok=True)


class JobFailed(RuntimeError):
    """A job of a multirun failed; the message names the error and where it is recorded."""


# --- the sweep summary ------------------------------------------------------------------------------


def _running(job_dir: Path) -> bool:
    """Is a process holding the job directory's lock (see entrgi.run_directory.RunDirectory.lock)?"""
    return is_locked(job_dir / LOCK)


def job_status(job_dir: str | Path) -> dict[str, Any]:
    """One job directory of a sweep: finished (summary.json), failed (error.json), running or stopped."""
    import yaml

    job_dir = Path(job_dir)
    overrides_file = job_dir / ".hydra" / "overrides.yaml"
    status: dict[str, Any] = {
        "dir": job_dir.name,
        "overrides": yaml.safe_load(overrides_file.read_text()) if overrides_file.is_file() else None,
    }
    if (job_dir / SUMMARY).is_file():
        summary = json.loads((job_dir / SUMMARY).read_text())
        status["status"] = "finished"
        status.update({k: summary.get(k) for k in ("top1_mean", "avgk_mean", "n_prompts", "wall_seconds")})
    elif (job_dir / ERROR).is_file() and not _running(job_dir):
        error = json.loads((job_dir / ERROR).read_text())
        status["status"] = "failed"
        status["error"] = f"{error.get('type')}: {error.get('message')}"
    else:
        status["status"] = "running" if _running(job_dir) else "stopped"
        status["prompts_done"] = len(read_jsonl(job_dir / SAMPLES).rows)
    return status


def write_sweep_summary(sweep_dir: str | Path) -> dict[str, Any]:
    """Rewrite `<sweep_dir>/sweep.json` from the job directories found in it; returns its content."""
    from filelock import FileLock

    sweep_dir = Path(sweep_dir)
    with FileLock(str(sweep_dir / ".sweep.lock")):
        jobs = [job_status(d) for d in sorted(sweep_dir.iterdir()) if (d / ".hydra").is_dir()]
        counts: dict[str, int] = {}
        for job in jobs:
            counts[job["status"]] = counts.get(job["status"], 0) + 1
        summary = {"sweep_dir": str(sweep_dir.resolve()), "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                   "counts": counts, "jobs": jobs}
        atomic_write(sweep_dir / SWEEP_SUMMARY, json.dumps(summary, indent=2))
    return summary


def describe(summary: dict[str, Any]) -> str:
    counts = ", ".join(f"{n} {status}" for status, n in sorted(summary["counts"].items()))
    return f"{len(summary['jobs'])} jobs: {counts or 'none'} (see {Path(summary['sweep_dir']) / SWEEP_SUMMARY})"


class SweepSummary(Callback):
    """Keeps `<sweep dir>/sweep.json` current: rewritten as each job of a multirun ends (in the
    job's process, finished or failed) and once more when the whole multirun has returned."""

    def on_job_end(self, config, job_return, **kwargs) -> None:
        from hydra.types import RunMode

        if config.hydra.mode != RunMode.MULTIRUN:
            return
        try:
            write_sweep_summary(config.hydra.sweep.dir)
        except OSError as error:  # the job's own results are on disk; a summary error must not fail it
            log.warning("could not update %s: %r", SWEEP_SUMMARY, error)

    def on_multirun_end(self, config, **kwargs) -> None:
        summary = write_sweep_summary(config.hydra.sweep.dir)
        log.info("sweep: %s", describe(summary))
