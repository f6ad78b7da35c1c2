#!/usr/bin/env bash
# Everything kimi_lab checks on a GPU, in one go (about 5 minutes on one H100/H200):
# the gpu-marked tests (MegaBlocks parity with the torch backend) and the MoE layer
# at the K2 shape. Needs a CUDA torch and, for MegaBlocks, `pip install -e '.[gpu]'`
# against a matching CUDA torch (MegaBlocks 0.10.0 pins torch 2.7.0).
# Usage: benchmarks/gpu.sh [OUT_DIR]   (writes gpu.txt, gpu-tests.txt, gpu-bench.txt and .json there)
set -uo pipefail
out="${1:-${OUT:-test-artifacts/gpu}}"
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" | tee -a "$out/gpu.txt"
timeout 240 python -m pytest -q -m gpu -p no:cacheprovider tests 2>&1 | tee "$out/gpu-tests.txt"
tests_rc=${PIPESTATUS[0]}
timeout 240 python -m benchmarks.gpu --save "$out/gpu-bench.json" 2>&1 | tee "$out/gpu-bench.txt"
exit "$tests_rc"
