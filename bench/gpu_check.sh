#!/usr/bin/env bash
# The GPU checks and benchmarks, as one call on a GPU machine without Ray (the `device` tool's
# machine, or any box with CUDA PyTorch): `bash bench/gpu_check.sh [tests] [train] [decode]`.
#   tests:  correctness on CUDA (tests/gpu)
#   train:  350m training with SDPA (reference), flex and no bias (upper bound), with the top
#           kernels of each; 2b training with flex
#   decode: one chat turn, eager vs CUDA graphs vs HF generate
# JSON lines go to stdout and to $OUT/<name>.json; stderr to $OUT/<name>.err.
set -u
OUT=${OUT:-runs/gpu-check}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONWARNINGS=ignore
py=${PYTHON:-python3}

step() {  # step NAME SECONDS CMD...: run with a time limit, keep going whatever happens
  local name=$1 limit=$2; shift 2
  echo "== $name ($(date +%T))"
  timeout "$limit" "$@" >"$OUT/$name.json" 2>"$OUT/$name.err"
  echo "rc=$?"; cat "$OUT/$name.json"; grep -E "Error|error" "$OUT/$name.err" | tail -5
}

train() {  # train NAME SECONDS PRESET BATCH BACKENDS [more flags]
  local name=$1 limit=$2 preset=$3 batch=$4 backends=$5; shift 5
  step "$name" "$limit" $py bench/train_step.py --preset "$preset" --device cuda \
    --batch-size "$batch" --seq-len 1024 --compile --steps 8 --warmup 3 --attn-backend "$backends" "$@"
}

nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader
$py -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
parts=("$@")
[ $# -eq 0 ] && parts=(tests train decode)
for part in "${parts[@]}"; do
  case $part in
    tests)
      echo "== tests/gpu"
      timeout 150 $py -m pytest -q -s -p no:cacheprovider tests/gpu 2>&1 | grep -vE "^\s*$|warn" | tail -25
      ;;
    train)
      train train_350m 240 350m 16 sdpa,flex,nobias --profile
      train train_2b 120 2b 16 flex
      if grep -q '"error"' "$OUT/train_2b.json"; then train train_2b_b8 100 2b 8 flex; fi
      ;;
    decode)
      step decode_350m 170 $py bench/decode.py --device cuda --repeat 5
      ;;
  esac
done
