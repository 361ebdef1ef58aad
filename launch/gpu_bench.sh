#!/usr/bin/env bash
# One CUDA GPU, at most 8 minutes, in two parts, each writing its JSON after every case:
#  1. python -m benchmarks.gpu_session (gpu_session.json, profiles/): the environment (nvidia-smi, driver,
#     CUDA, cuDNN, torch, accelerate, host load); the speed cases (trainer and bare loop at fp32/bf16,
#     repeated and interleaved, wall and CUDA-event time per step); profiler traces of the trainer at
#     fp32 and bf16 and of the bare bf16 loop; a bit-exact resume check on the GPU. (The size table's
#     GPU columns wait for the modern sizes: recorded as skipped.)
#  2. python -m gan_dist.smoke (smoke.json), last: every recipe at fp32/bf16/fp16 trained, resumed and
#     sampled, plus 2 processes on the one GPU; the cases it finished are kept when its time runs out.
# Writes to $OUT when set, else to runs/gpu_bench/.
# Usage: launch/gpu_bench.sh [--cpu] [more `python -m benchmarks.gpu_session` flags]
#   --cpu: the dry run, every case tiny on the CPU (under 2 minutes), to check the script before a GPU session.
# On a machine without webdataset, put its wheels in .whl/ first (../shared/device/wheels.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
dry=()
if [ "${1:-}" = "--cpu" ]; then dry=(--cpu); shift; fi
PYTHON=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
if ! "$PYTHON" -c "import webdataset" 2>/dev/null; then
    if ! ls .whl/*.whl >/dev/null 2>&1; then
        echo "error: webdataset is not installed and .whl/ holds no wheels to install it from" >&2
        exit 2
    fi
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} WANDB_MODE=disabled
if [ ${#dry[@]} = 0 ] && ! "$PYTHON" -c "import sys, torch; sys.exit(not torch.cuda.is_available())"; then
    echo "error: no CUDA device here (torch.cuda.is_available() is False); launch/gpu_bench.sh needs one GPU." >&2
    echo "       \`launch/gpu_bench.sh --cpu\` dry-runs it here; the CPU figures come from \`make bench\`." >&2
    exit 2
fi
out=${OUT:-runs/gpu_bench}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$out"
session=0
timeout "${SESSION_TIMEOUT:-300}" "$PYTHON" -m benchmarks.gpu_session ${dry[@]+"${dry[@]}"} --work "$work/session" \
    --out "$out/gpu_session.json" "$@" || session=$?
smoke_flags=()
if [ ${#dry[@]} != 0 ]; then
    smoke_flags=(--cpu --img_size 32 --steps 2 --n_images 64 --recipes vanilla --precisions no --ddp_precision none)
fi
smoke=0
timeout "${SMOKE_TIMEOUT:-150}" "$PYTHON" -m gan_dist.smoke --work "$work/smoke" --out "$out/smoke.json" --jobs 4 \
    ${smoke_flags[@]+"${smoke_flags[@]}"} || smoke=$?
echo "gpu_bench: session exit $session, smoke exit $smoke; results in $out" >&2
[ "$session" = 0 ] && exit "$smoke" || exit "$session"
