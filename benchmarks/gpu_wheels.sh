#!/usr/bin/env bash
# The wheels benchmarks/gpu_run.sh installs on the GPU machine (Python 3.12 there; it has JAX,
# PyTorch, torchvision, numpy, h5py, rich, absl and ml-dtypes, but not Keras): Keras at the
# version installed here, and the two packages of its own it needs. About 2 MiB, into .whl/
# (git-ignored), which the device tool carries.
set -euo pipefail
cd "$(dirname "$0")/.."
keras=$(python -c "import importlib.metadata as m; print(m.version('keras'))")
rm -rf .whl && mkdir .whl
for spec in "keras==$keras" namex optree; do
  python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl "$spec"
done
du -sh .whl && ls .whl
