#!/usr/bin/env bash
# Fault-tolerant launch with torchrun: on a worker failure torchrun restarts every process (up to
# --max-restarts times) and the trainer resumes from the newest complete checkpoint.
# Run the same command on each node (RDZV_HOST = any one node's address):
#   RDZV_HOST=node0 NNODES=2 launch/torchrun_elastic.sh --data /shared/shards/lfw --img_size 128 --output_dir /shared/runs/lfw
# Keep NNODES fixed for one run: the global batch, and with it the epoch length, follow the world size.
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/torchrun --nnodes "${NNODES:-1}" --nproc_per_node "${NPROC_PER_NODE:-gpu}" \
    --max-restarts "${MAX_RESTARTS:-3}" --rdzv_backend c10d --rdzv_endpoint "${RDZV_HOST:-localhost}:${RDZV_PORT:-29400}" \
    --rdzv_id "${RDZV_ID:-gan-dist}" \
    gan_dist/train.py --resume_from_checkpoint latest "$@"
