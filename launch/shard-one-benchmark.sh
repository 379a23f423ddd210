#!/usr/bin/env bash
# One job's 64 prompts split over N GPUs (disjoint shards of the fixed slice); entrgi.report merges them.
#   launch/shard-one-benchmark.sh 4 guidance=entrgi reward=skywork-4b benchmark=judgebench seed=1
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:?usage: $0 NUM_SHARDS [overrides...]}; shift
shards=$(seq -s, 0 $((n - 1)))
exec python -m entrgi.run -m hydra/launcher=local-gpus benchmark.num_shards="$n" benchmark.shard="$shards" "$@"
