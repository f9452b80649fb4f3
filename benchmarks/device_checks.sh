#!/usr/bin/env bash
# Every GPU check of this repo in one call of the device tool (one H200, 15 minutes a
# session, start-up included), each step bounded so the later ones still run:
#   1. the tests marked gpu (2:4 kernels against their dense selves, fp16 and bf16);
#   2. benchmarks/sparse_inference_gpu.py (dense vs 2:4 kernels per layer and end to end);
#   3. benchmarks/gpu_check.py --quick (SNOWS at real shapes, with and without offload, and
#      the block re-fit beside the per-module one on ViT-L/16 and SmolLM2).
# Run it from the repository root:  run(command="bash benchmarks/device_checks.sh", timeout_s=590)
# The benchmarks write benchmarks/results/{sparse_inference_gpu,gpu_check}.json (after every
# case, so a step stopped by its timeout keeps what it measured); those files and the logs are
# copied to $OUT (or /tmp/device-checks elsewhere): copy the JSON into benchmarks/results here
# and run python benchmarks/readme_results.py to put them in the README.
set -uo pipefail
out=${OUT:-/tmp/device-checks}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1
python=${PYTHON:-python3}
"$python" -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU')"
step() {  # name, seconds, command...
    local name=$1 seconds=$2; shift 2
    echo "=== $name (at most $seconds s)"
    timeout "$seconds" "$@" 2>&1 | tee "$out/$name.log"
    echo "=== $name: exit ${PIPESTATUS[0]}"
}
# the files that hold gpu tests, named: collecting all of tests/ would need datasets and evaluate there
step gpu-tests 90 "$python" -m pytest -q -m gpu -p no:cacheprovider -o addopts="" tests/test_sparse_inference.py
step sparse-inference 280 "$python" benchmarks/sparse_inference_gpu.py --budget 200
step gpu-check 200 "$python" benchmarks/gpu_check.py --quick
cp benchmarks/results/sparse_inference_gpu.json benchmarks/results/gpu_check.json "$out"/ 2>/dev/null
