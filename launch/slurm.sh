#!/usr/bin/env bash
# The paper's grid on a SLURM cluster: one array task per job, one GPU each (launch/README.md).
#   SBATCH_PARTITION=gpu SBATCH_ACCOUNT=mylab launch/slurm.sh
#   launch/slurm.sh hydra.launcher.partition=gpu hydra.launcher.timeout_min=180
# This command waits for the array (run it inside tmux/screen); rerun it to resume.
set -euo pipefail
cd "$(dirname "$0")/.."
exec python -m entrgi.run -m experiment=paper-grid hydra/launcher=slurm "$@"
