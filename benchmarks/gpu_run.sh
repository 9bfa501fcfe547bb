#!/usr/bin/env bash
# The GPU benchmark as one command on the device machine, from the repository root there:
#   bash benchmarks/gpu_run.sh [benchmarks.gpu flags]
# with .whl/ (benchmarks/gpu_wheels.sh) carried. Keras runs on JAX (no TensorFlow there);
# results go to $OUT/gpu.json and gpu.md as they come, and a table is printed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH="/tmp/site:$PWD" KERAS_BACKEND=jax PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
python3 -m benchmarks.gpu --out="${OUT:-gpu-results}" "$@"
