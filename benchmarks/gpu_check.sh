#!/usr/bin/env bash
# GPU check, at most about 8 minutes on one H200: the test suite's CUDA-marked tests, the FLOPs and float32 matmul
# rate (compute_floor.py), then the training-step and sampler benchmarks on the CIFAR-10 paper config (ngf 128,
# batch 128), eager fp32 and compiled bf16 channels_last.
# Every result is one JSON object on stdout; copy the figures into benchmarks/RESULTS.md.
#
#   bash benchmarks/gpu_check.sh                 # on a machine with CUDA
#   DEVICE=cpu QUICK=1 bash benchmarks/gpu_check.sh   # smoke-test of this script on a CPU (tiny sizes)
#
# Goals it reports against: >= 3,000 training images/s (200,000 iterations in < 2.5 h) and 50,000 samples of
# 1,000 steps in < 90 minutes.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
DEVICE=${DEVICE:-cuda}
BUDGET=${BUDGET:-470}  # seconds; each step gets what is left of it
START=$SECONDS
status=0

left() { echo $((BUDGET - (SECONDS - START))); }

run() {  # run "label" cmd...: bounded by the remaining budget; records a failure without stopping the others
    local label=$1; shift
    local remaining; remaining=$(left)
    if [ "$remaining" -lt 20 ]; then echo "{\"skipped\": \"$label\", \"reason\": \"time budget spent\"}"; status=1; return; fi
    echo "# $label (budget left ${remaining}s)" >&2
    timeout "$remaining" "$@" || { echo "{\"failed\": \"$label\", \"exit\": $?}"; status=1; }
}

if [ "$DEVICE" = cuda ]; then
    $PY -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device: nothing to check')" || exit 2
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader >&2 || true
    run "cuda tests" $PY -m pytest -q -n 0 -m cuda tests/ -p no:cacheprovider
    TRAIN=(--config cifar10 --device cuda --repeats 20)
    SAMPLE=(--config cifar10 --device cuda --batch-size 1000 --steps-each 5 --repeats 3)
else
    TRAIN=(--config cifar10 --device cpu --set model.ngf=8 --batch-size 8 --repeats 2)
    SAMPLE=(--config cifar10 --device cpu --set model.ngf=8 --batch-size 8 --steps-each 1 --repeats 2)
fi
[ "${QUICK:-0}" = 1 ] || [ "$DEVICE" = cuda ] || { echo "on a CPU set QUICK=1 (tiny sizes)"; exit 2; }

run "compute floor" $PY benchmarks/compute_floor.py "${TRAIN[@]}"
run "train eager fp32" $PY benchmarks/train_step.py "${TRAIN[@]}"
run "train compiled bf16 channels_last" $PY benchmarks/train_step.py "${TRAIN[@]}" --compile --precision bf16 --channels-last
run "sampler eager fp32" $PY benchmarks/sampler.py "${SAMPLE[@]}" --total-samples 50000
run "sampler compiled bf16 channels_last (CUDA graphs)" $PY benchmarks/sampler.py "${SAMPLE[@]}" --total-samples 50000 \
    --compile --precision bf16 --channels-last
echo "# gpu_check finished in $((SECONDS - START))s, status $status" >&2
exit $status
