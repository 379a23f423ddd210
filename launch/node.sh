#!/usr/bin/env bash
# The paper's grid on one multi-GPU node: one job per GPU, the rest queued (launch/README.md).
#   launch/node.sh                                   # all 108 jobs, every visible GPU
#   CUDA_VISIBLE_DEVICES=0,1,2,3 launch/node.sh      # four GPUs
#   launch/node.sh hydra.sweeper.params.reward=skywork-1.7b    # the headline grid (36 jobs)
# Rerun the same command to resume: finished jobs return at once, the others continue.
set -euo pipefail
cd "$(dirname "$0")/.."
exec python -m entrgi.run -m experiment=paper-grid hydra/launcher=local-gpus "$@"
