"""Entry point: `python -m entrgi.run [group=option ...] [key=value ...]` (add `-m` for a sweep).

Composes the config, then hands it to `entrgi.experiment`. A command line that does not compose
(an unknown option or key, a value outside a field's type) ends with one line on stderr and exit
code 2 (`entrgi.cli`). A job that fails records why in `error.json` in its directory. A single
job ends on an error a user can fix (a bad value, missing weights) or on NaN / inf logits
(`entrgi.nonfinite`) with one line on stderr and exit code 2. In a multirun a failing job raises
to Hydra, which marks it failed and goes on with the others; the sweep exits with code 1 once
every job has ended, and `<sweep dir>/sweep.json` lists each job's state and error.

SIGTERM (what SLURM sends at a time-out or preemption, and `kill`'s default) stops a job as
Ctrl-C does: its W&B run is closed as failed, its directory is left to resume (no summary, no
error.json) and the command exits with code 143 after one line on stderr; rerunning it resumes.
"""

from __future__ import annotations

import gc
import logging
import signal
import sys
import threading
import traceback
from collections.abc import Iterator
from contextlib import contextmanager

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from entrgi.cli import hydra_command
from entrgi.nonfinite import NonFiniteLogits
from entrgi.sweeps import SWEEP_SUMMARY, JobFailed, clear_error, write_error
from entrgi.validation import ConfigError
from entrgi.weights import ResourceUnavailable

log = logging.getLogger(__name__)


TERMINATED_EXIT_CODE = 128 + signal.SIGTERM  # 143, what a shell reports for a process SIGTERM ended


class Terminated(BaseException):
    """SIGTERM arrived during a job. Not an Exception, so it passes every `except Exception` (a
    judge's retry, a drawing error kept from failing the job) as KeyboardInterrupt does, and
    the `finally` blocks on its way close the W&B run as failed and release the job directory."""


@contextmanager
def sigterm_raises() -> Iterator[None]:
    """Within: the first SIGTERM raises `Terminated` in the main thread (a second one, during the
    clean-up, ends the process at once); the previous handler is back afterwards.

    Changes nothing off the main thread, nor where a launcher handles SIGTERM itself (submitit
    ignores it and checkpoints and requeues on its own signal, USR2).
    """
    previous = signal.getsignal(signal.SIGTERM)
    if threading.current_thread() is not threading.main_thread() or previous is not signal.SIG_DFL:
        yield
        return

    def terminate(signum, frame):
        signal.signal(signal.SIGTERM, previous)
        raise Terminated("SIGTERM")

    signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@hydra_command(config_name="config")
def main(cfg: DictConfig) -> float | None:
    from entrgi.experiment import run_experiment

    hydra_cfg = HydraConfig.get()
    output_dir = hydra_cfg.runtime.output_dir
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    clear_error(output_dir)
    try:
        with sigterm_raises():
            summary = run_experiment(cfg, output_dir)
    except Terminated:
        print(f"entrgi: terminated (SIGTERM); {output_dir} is kept: rerun the same command to resume",
              file=sys.stderr)
        sys.exit(TERMINATED_EXIT_CODE)
    except Exception as error:
        path = write_error(output_dir, error, list(hydra_cfg.overrides.task))
        user_error = isinstance(error, (ConfigError, ResourceUnavailable, NonFiniteLogits))
        if not multirun:
            if user_error:
                print(f"entrgi: error: {error}", file=sys.stderr)
                sys.exit(2)
            raise
        log.error("job failed (recorded in %s)", path, exc_info=not user_error)
        message = (f"{type(error).__name__}: {error} (recorded in {path}; every job's state: "
                   f"{hydra_cfg.sweep.dir}/{SWEEP_SUMMARY})")
        traceback.clear_frames(error.__traceback__)  # let go of this job's tensors before the next one
        raise JobFailed(message) from None
    finally:
        if multirun:
            _release_memory()
    print(f"Top@1 {summary['top1_mean']:.4f}  Avg@{summary['num_samples']} {summary['avgk_mean']:.4f}  "
          f"({summary['n_prompts']} prompts, {summary['wall_seconds']:.1f}s)")
    return summary["top1_mean"]


def _release_memory() -> None:
    """A joblib worker runs several jobs in one process: free the last one's GPU memory."""
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
