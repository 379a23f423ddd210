#!/usr/bin/env bash
# LMUnit on finished runs, as SLURM jobs of their own after generation (launch/README.md, "Judges"):
# one job per PATH argument, 4 GPUs each (hydra/launcher=slurm-judge), the judge loaded once per job.
#   launch/judge.sh outputs/multirun/experiment=paper-grid
#   launch/judge.sh 'outputs/multirun/experiment=paper-grid/benchmark=judgebench*' hydra.launcher.partition=gpu
#   launch/judge.sh outputs/multirun/experiment=paper-grid 'evaluator=[lmunit,reward]'
# Rerunning skips the runs that already hold the judgements (skip_judged=true); this command waits
# for the jobs (run it inside tmux/screen).
set -euo pipefail
cd "$(dirname "$0")/.."
judges="evaluator=[lmunit]"
for argument in "$@"; do
  case "$argument" in evaluator=*) judges="" ;; esac
done
exec python -m entrgi.evaluate -m hydra/launcher=slurm-judge skip_judged=true ${judges:+"$judges"} "$@"
