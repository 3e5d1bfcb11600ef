#!/usr/bin/env bash
# The GPU checks and benchmarks, as one call on a GPU machine without Ray (the `device` tool's
# machine, or any box with CUDA PyTorch): `bash bench/gpu_check.sh [a|b]`.
#   a: correctness on CUDA (tests/gpu), then 350m training with the SDPA reference and flex
#   b: one chat turn (eager vs CUDA graphs vs HF), 2b training, the no-bias upper bound
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

train350=(bench/train_step.py --preset 350m --device cuda --batch-size 16 --seq-len 1024 --compile
          --steps 8 --warmup 3)
case ${1:-a} in
  a)
    nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader
    $py -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
    echo "== tests/gpu"
    timeout 150 $py -m pytest -q -s -p no:cacheprovider tests/gpu 2>&1 | grep -vE "^\s*$|warn" | tail -25
    step train_350m 240 $py "${train350[@]}" --attn-backend sdpa,flex
    ;;
  b)
    step decode_350m 170 $py bench/decode.py --device cuda --repeat 5
    step train_2b 120 $py bench/train_step.py --preset 2b --device cuda --batch-size 8 \
      --seq-len 1024 --compile --steps 5 --warmup 2 --attn-backend flex
    step train_350m_nobias 90 $py "${train350[@]}" --attn-backend nobias
    ;;
esac
