#!/usr/bin/env bash
# The bench on one CUDA GPU, under 5 minutes: the vanilla MLP at 128x128x3, batch 64; our
# trainer at fp32/bf16/fp16 (each also with --compile when the trainer has that flag) against
# the vanilla loop and a bare PyTorch loop; images/s, data-wait fraction, peak GPU memory.
# Writes $OUT/bench_gpu.json when OUT is set, else runs/bench_gpu.json.
# Usage: launch/gpu_bench.sh [more `python -m gan_dist.bench gpu` flags, e.g. --data shards/lfw]
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
    echo "       The CPU figures come from \`make bench\` (python -m gan_dist.bench all)." >&2
    exit 2
fi
out=${OUT:-runs}
mkdir -p "$out"
# the bench saves its JSON after every case, so a run cut short by the time limit keeps what it measured
exec timeout "${BENCH_TIMEOUT:-290}" "$PYTHON" -m gan_dist.bench gpu --out "$out/bench_gpu.json" "$@"
