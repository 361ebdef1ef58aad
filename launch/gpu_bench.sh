#!/usr/bin/env bash
# One CUDA GPU, under 10 minutes, in two parts:
#  1. smoke (python -m gan_dist.smoke): every recipe (vanilla MLP, DCGAN at 128 px; modern ResNet at
#     64 px) at fp32/bf16/fp16 trained, resumed and sampled, plus 2 processes on the one GPU (gloo);
#  2. speed (python -m benchmarks gpu): the vanilla MLP at 128x128x3, batch 64; the trainer at
#     fp32/bf16/fp16 (and with --compile) against the vanilla loop and bare loops; data paths; peak memory.
# Writes smoke.json and bench_gpu.json to $OUT when set, else to runs/.
# Usage: launch/gpu_bench.sh [more `python -m benchmarks gpu` flags, e.g. --data shards/lfw]
# On a machine without webdataset, put its wheels in .whl/ first (../shared/device/wheels.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
if ! "$PYTHON" -c "import webdataset" 2>/dev/null; then
    if ! ls .whl/*.whl >/dev/null 2>&1; then
        echo "error: webdataset is not installed and .whl/ holds no wheels to install it from" >&2
        exit 2
    fi
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
if ! "$PYTHON" -c "import sys, torch; sys.exit(not torch.cuda.is_available())"; then
    echo "error: no CUDA device here (torch.cuda.is_available() is False); launch/gpu_bench.sh needs one GPU." >&2
    echo "       The CPU figures come from \`make bench\` (python -m benchmarks all)." >&2
    exit 2
fi
out=${OUT:-runs}
work=$(mktemp -d)
mkdir -p "$out"
# both save their JSON after every case, so a part cut short by its time limit keeps what it measured
smoke=0
timeout "${SMOKE_TIMEOUT:-230}" "$PYTHON" -m gan_dist.smoke --work "$work/smoke" --out "$out/smoke.json" \
    || smoke=$?
timeout "${BENCH_TIMEOUT:-330}" "$PYTHON" -m benchmarks gpu --work "$work/bench" --out "$out/bench_gpu.json" "$@"
exit "$smoke"
