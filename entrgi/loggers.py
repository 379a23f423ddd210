"""Experiment loggers (the `logger` config group): W&B, or nothing.

A logger is a context manager so that the W&B run is finished, and marked failed, even
when the job raises.
"""

from __future__ import annotations

import netrc
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from entrgi.validation import one_of


class NullLogger:
    """Logs nothing."""

    def start(self, config: dict[str, Any], output_dir: Path, name: str) -> None:
        """Open the run."""

    def log(self, metrics: dict[str, Any], step: int | None = None) -> None:
        """Record a dict of numbers."""

    def finish(self, summary: dict[str, Any] | None, failed: bool) -> None:
        """Close the run; `summary` holds the final numbers when the job completed."""


@dataclass
class WandbLoggerConfig:
    _target_: str = "entrgi.loggers.WandbLogger"
    project: str = "entrgi"
    entity: str | None = None
    group: str | None = None
    tags: list[str] = field(default_factory=list)
    # auto: WANDB_MODE if set, else online when an API key is configured, else offline.
    mode: str = one_of("auto", "auto", "online", "offline", "disabled")


def _logged_in() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (OSError, netrc.NetrcParseError):
        return False


class WandbLogger(NullLogger):
    """One W&B run per job, written under the job's directory."""

    def __init__(self, project="entrgi", entity=None, group=None, tags=(), mode="auto"):
        self.project, self.entity, self.group, self.tags, self.mode = project, entity, group, list(tags), mode
        self.run = None

    def resolved_mode(self) -> str:
        if self.mode != "auto":
            return self.mode
        return os.environ.get("WANDB_MODE") or ("online" if _logged_in() else "offline")

    def start(self, config, output_dir, name):
        import wandb

        self.run = wandb.init(
            project=self.project, entity=self.entity, group=self.group, tags=self.tags, name=name,
            config=config, dir=str(output_dir), mode=self.resolved_mode(),
        )

    def log(self, metrics, step=None):
        self.run.log(metrics, step=step)

    def finish(self, summary, failed):
        if self.run is None:
            return
        if summary:
            self.run.summary.update(summary)
        self.run.finish(exit_code=1 if failed else 0)
        self.run = None
