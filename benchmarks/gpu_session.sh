#!/usr/bin/env bash
# The GPU checks in one command: the suite on GPU, bf16 parity and the GPU benchmark matrix.
# Written for a GPU machine without network access that has torch, JAX and transformers
# but not keras: download the wheels on a machine with network, once:
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#     --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
#     --platform manylinux2014_x86_64 -d .whl keras==3.15.1 namex optree rich timm
# then copy the checkout with .whl/ to the GPU machine and run  bash benchmarks/gpu_session.sh
# (results go to $OUT, default /tmp/out).
# TensorFlow cannot be carried, so TF-on-GPU stays unverified.
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/device.txt"

# 1. The suite on GPU under jax and torch (TF is not installed there).
for backend in jax torch; do
  KERAS_BACKEND=$backend python3 -m pytest -q -p no:cacheprovider tests \
    --ignore=tests/test_notebooks.py -k "not tensorflow" 2>&1 | tail -n 30 | tee "$OUT/tests_$backend.txt"
done

# 2. bf16 parity against transformers in bf16 (prints relative errors).
for backend in jax torch; do
  KERAS_BACKEND=$backend python3 -m pytest -q -s tests/test_parity.py -k bfloat16 2>&1 \
    | grep -E "bf16|passed|failed" | tee -a "$OUT/bf16_parity.txt"
done

# 3. The benchmark matrix (tables land in benchmarks/results/, copied to $OUT).
B="python3 benchmarks/run.py --backends jax,torch --rounds 5 --round-seconds 2"
$B --model vit_msn_base --task infer --batch 256 --dtype bfloat16
$B --model vit_msn_base --task train --batch 256 --dtype bfloat16
$B --model vit_msn_base_4 --task infer --batch 32 --dtype bfloat16
$B --model vit_msn_base_4 --task train --batch 32 --dtype bfloat16
$B --model vit_msn_small --task infer --batch 256 --dtype bfloat16
$B --model vit_msn_large --task infer --batch 128 --dtype bfloat16
cat benchmarks/results/*.md > "$OUT/gpu_tables.md"
