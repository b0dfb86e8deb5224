#!/usr/bin/env bash
# Issue 25's GPU measurements as one command, from the repository root on a machine with one CUDA GPU:
#   bash benchmarks/gpu_packed.sh [output directory, default benchmarks/results]
# 1. padded vs packed training steps of the 1.1B shape at realistic lengths (sdpa): tokens/s, MFU, peak
#    memory, and a torch.profiler table where a target (1.5x, MFU 50 %) is missed;
# 2. the same with flash_attention_2 and one packed row per batch, where flash-attn is installed;
# 3. iprm against TRL's DPOTrainer (padding_free, Liger where installed, precomputed reference) on the
#    same rollouts and model.
set -euo pipefail
out=${1:-benchmarks/results}
mkdir -p "$out"
export PYTHONPATH=${PYTHONPATH:-$(pwd)}
python -m benchmarks.packed --config configs/benchmarks/packed_1b.yaml --output "$out/packed_1b.json"
if python -c "import flash_attn" 2>/dev/null; then
  python -m benchmarks.packed --config configs/benchmarks/packed_1b.yaml \
    --set attn_implementation=flash_attention_2 --set packed_row_tokens=65536 \
    --output "$out/packed_1b_flash.json"
fi
python -m benchmarks.trl_packed --config configs/benchmarks/packed_1b.yaml --output "$out/trl_packed_1b.json"
