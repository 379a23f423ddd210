"""Entry point: `python -m entrgi.run [group=option ...] [key=value ...]`.

Composes the config, then hands it to `entrgi.experiment`. Errors a user can fix (a bad
value, missing weights) end the job with one line on stderr and exit code 2.
"""

from __future__ import annotations

import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

import entrgi.config  # noqa: F401  (registers the structured configs and resolvers)
from entrgi.checkpoints import ResourceUnavailable
from entrgi.validation import ConfigError


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    from entrgi.experiment import run_experiment

    try:
        summary = run_experiment(cfg, HydraConfig.get().runtime.output_dir)
    except (ConfigError, ResourceUnavailable) as error:
        print(f"entrgi: error: {error}", file=sys.stderr)
        sys.exit(2)
    print(f"Top@1 {summary['top1_mean']:.4f}  Avg@{summary['num_samples']} {summary['avgk_mean']:.4f}  "
          f"({summary['n_prompts']} prompts, {summary['wall_seconds']:.1f}s)")
    return summary["top1_mean"]


if __name__ == "__main__":
    main()
