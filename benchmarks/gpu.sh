#!/usr/bin/env bash
# Everything kimi_lab checks on a GPU, in one go (about 5 minutes on one H100/H200):
# the gpu-marked tests (MegaBlocks parity with the torch backend, the torch backend's
# grouped GEMM), a 2-GPU FSDP2 x EP step where there are two GPUs, and the MoE layer
# at the K2 shape. Needs a CUDA torch and, for MegaBlocks, `pip install -e '.[gpu]'`
# against a matching CUDA torch (MegaBlocks 0.10.0 pins torch 2.7.0).
# Usage: benchmarks/gpu.sh [OUT_DIR]   (writes gpu.txt, gpu-tests.txt, gpu-bench.txt and .json there)
set -uo pipefail
out="${1:-${OUT:-test-artifacts/gpu}}"
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" | tee -a "$out/gpu.txt"
timeout 240 python -m pytest -q -m gpu -p no:cacheprovider -k "not two_gpus" tests 2>&1 | tee "$out/gpu-tests.txt"
tests_rc=${PIPESTATUS[0]}
# FSDP2 x expert parallelism on NCCL: 2 GPUs against one, where the machine has two
if [ "$(nvidia-smi -L | wc -l)" -ge 2 ]; then
  timeout 240 python -m pytest -q -m gpu -p no:cacheprovider -k two_gpus tests/parallel 2>&1 | tee "$out/gpu-fsdp-ep.txt"
  rc=${PIPESTATUS[0]}; [ "$tests_rc" -eq 0 ] && tests_rc=$rc
else
  echo "one GPU: the 2-GPU FSDP2 x EP step is skipped" | tee "$out/gpu-fsdp-ep.txt"
fi
timeout 240 python -m benchmarks.gpu --save "$out/gpu-bench.json" 2>&1 | tee "$out/gpu-bench.txt"
exit "$tests_rc"
