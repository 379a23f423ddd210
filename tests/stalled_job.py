"""A job subprocess stopped by a signal in the middle of its run: its first batch committed, its
second with its steps written but not its samples. Shared by tests/test_sweeps.py (SIGKILL) and
tests/test_loggers.py (SIGTERM)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

STALLING_JOB = """
import os, time
from pathlib import Path
from entrgi.run_directory import RunDirectory

calls = []
append_steps = RunDirectory.append_steps

def append_steps_then_stall(self, records):
    append_steps(self, records)
    calls.append(1)
    if len(calls) == 2:  # batch 0 is committed; batch 1 has its steps written, not its samples
        Path(os.environ["STALLED"]).write_text(str(self.path))
        time.sleep(120)

RunDirectory.append_steps = append_steps_then_stall
import runpy
runpy.run_module("entrgi.run", run_name="__main__", alter_sys=True)  # as `python -m entrgi.run ...`
"""


def stop_stalled_job(cwd: Path, args: list[str], env: dict[str, str], signum: int) -> tuple[int, str, Path]:
    """Run `python -m entrgi.run ARGS` in `cwd` until it stalls in its second batch, send it
    `signum` there, and return its exit code (negative: the signal ended it), its stderr and its
    run directory."""
    (cwd / "stalling_job.py").write_text(textwrap.dedent(STALLING_JOB))
    stalled, errors = cwd / "stalled", cwd / "stalling_job.stderr"
    with open(errors, "w") as stderr:
        job = subprocess.Popen([sys.executable, "stalling_job.py", *args], cwd=cwd,
                               env={**env, "STALLED": str(stalled)}, stdout=subprocess.DEVNULL, stderr=stderr)
        try:
            deadline = time.time() + 120
            while not stalled.exists() and job.poll() is None and time.time() < deadline:
                time.sleep(0.05)
            assert stalled.exists(), f"the job did not reach its second batch: {errors.read_text()[-2000:]}"
            os.kill(job.pid, signum)
            job.wait(timeout=60)
        finally:
            if job.poll() is None:
                job.kill()
                job.wait()
    return job.returncode, errors.read_text(), Path(stalled.read_text())
