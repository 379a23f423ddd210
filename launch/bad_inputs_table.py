"""Time every bad input of tests/bad_inputs.py through the real CLI and print the table
input → message → exit code → seconds to fail (issue 15's closing note).

    python launch/bad_inputs_table.py [scratch folder]
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from bad_inputs import BASE, cases  # noqa: E402


def main() -> None:
    scratch = Path(sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp(prefix="entrgi-bad-"))
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    print("| input | message (stderr) | exit | seconds |\n|---|---|---|---|")
    for i, (what, overrides, _) in enumerate(cases(scratch / "inputs")):
        started = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "entrgi.run", *BASE, *overrides,
                               f"hydra.run.dir={scratch / f'run{i}'}"], cwd=REPO, capture_output=True, text=True,
                              env=env)
        seconds = time.perf_counter() - started
        message = " / ".join(line for line in done.stderr.splitlines() if line.strip()).replace(str(scratch), "…")
        message = message.replace("|", "\\|")
        print(f"| {what} | {message[:220]} | {done.returncode} | {seconds:.1f} |", flush=True)


if __name__ == "__main__":
    main()
