"""The run directory: everything needed to trust, resume and aggregate one job.

`samples.jsonl` and `steps.jsonl` are appended and flushed batch by batch, so a crash
loses at most the batch in flight; `summary.json` is written atomically once the job is
complete, and its presence is what marks a run as finished.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

SAMPLES = "samples.jsonl"
STEPS = "steps.jsonl"
SUMMARY = "summary.json"
CONFIG = "config.yaml"
METADATA = "run.json"


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


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class RunDirectory:
    """Writes the files of one job into `path`."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)

    def write_metadata(self, cfg: DictConfig, extra: dict[str, Any]) -> None:
        """The resolved config and what produced it (code revision, versions; no environment)."""
        import torch
        import transformers

        _atomic_write(self.path / CONFIG, OmegaConf.to_yaml(cfg, resolve=True))
        meta = {
            "git": git_revision(Path(__file__).resolve().parent),
            "argv": sys.argv[1:],
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            **extra,
        }
        _atomic_write(self.path / METADATA, json.dumps(meta, indent=2))

    def _append(self, name: str, records: list[dict[str, Any]]) -> None:
        with open(self.path / name, "a") as f:
            f.writelines(json.dumps(record) + "\n" for record in records)
            f.flush()
            os.fsync(f.fileno())

    def append_samples(self, records: list[dict[str, Any]]) -> None:
        self._append(SAMPLES, records)

    def append_steps(self, records: list[dict[str, Any]]) -> None:
        self._append(STEPS, records)

    def write_json(self, name: str, content: Any) -> None:
        _atomic_write(self.path / f"{name}.json", json.dumps(content))

    def write_summary(self, summary: dict[str, Any]) -> None:
        _atomic_write(self.path / SUMMARY, json.dumps(summary, indent=2))
