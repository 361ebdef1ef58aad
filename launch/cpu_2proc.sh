#!/usr/bin/env bash
# Two data-parallel processes on one CPU-only machine (gloo). `accelerate launch --cpu
# --num_processes 2` would start only ONE process; torchrun with --cpu starts two.
# Usage: launch/cpu_2proc.sh --data shards/digits --img_size 32 --channels 1 [more train flags]
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/python -m torch.distributed.run --standalone --nproc_per_node "${NPROC:-2}" \
    gan_dist/train.py --cpu "$@"
