#!/usr/bin/env bash
# The GPU checks and benchmarks, as one call on a GPU machine without Ray (the `device` tool's
# machine, or any box with CUDA PyTorch):
#   `bash bench/gpu_check.sh [tests] [attn] [train] [flex] [tune] [train2b] [decode]`
#   (by default tests, attn, train, train2b and decode)
#   tests:   correctness on CUDA (tests/gpu)
#   attn:    one attention layer per variant with its top kernels (bench/attention.py), and the
#            Triton band kernels per launch setting (bench/band_kernels.py)
#   train:   350m training with sdpa (reference), flex, band and no bias (upper bound), with
#            the top kernels of each
#   flex:    350m training with the flex backend's defaults, its previous settings (whole-row bias
#            table, "rows" bias-gradient kernel, FlexAttention's own block sizes), and no bias
#   tune:    the flex backend's settings: the bias-gradient kernels' launch settings, then 350m
#            training with the previous settings (whole-row bias table, "rows" kernel), the near
#            table, the fastest bias-gradient kernel, and Inductor's FlexAttention autotuning
#   train2b: 2b training with the default (auto) backend
#   decode:  one chat turn, eager vs CUDA graphs vs HF generate
#   engine:  the decode engine (continuous batching), 350m random weights, 1 / 16 / 64 clients
#   curve:   held-out tool use against training steps (bench/tool_curve.py), 125m at two learning
#            rates and tiny, in the background (the next parts run beside them; `wait` at the end).
#            Needs the data of `make run` (runs/local/{data,index.sqlite,tokenizer.model}) and the
#            FreeDict databases (LAMDA_DICTD_DIRS)
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
# the flex backend's settings before the third GPU pass (bench/RESULTS.md), for comparisons
previous=(--no-near-table --bias-grad rows --flex-options "")
parts=("$@")
[ $# -eq 0 ] && parts=(tests attn train train2b decode)
for part in "${parts[@]}"; do
  case $part in
    attn)
      step attention 120 $py bench/attention.py --profile \
        --variants "flex;flex_torchband;band;band_cudnn;nobias"
      step band_kernels 60 $py bench/band_kernels.py
      ;;
    train)
      train train_350m 260 350m 16 sdpa,flex,band,nobias --profile
      ;;
    flex)
      train flex_defaults 150 350m 16 flex,nobias
      train flex_previous 110 350m 16 flex "${previous[@]}"
      ;;
    tune)
      step band_kernels 90 $py bench/band_kernels.py --dq "" --bias-grad "rows:8.1.1024;\
rows:8.1.2048;tiles:4.1.1024;tiles:4.2.1024;tiles:4.3.1024;tiles:8.2.1024;tiles:8.3.1024;\
tiles:4.2.512;tiles:4.2.2048;tiles:8.2.4096"
      # the fastest bias-gradient setting -> "--bias-grad K --launch KEY=SETTING"
      best=$($py - "$OUT/band_kernels.json" <<'PY'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1]) if '"ms"' in line]
kernel, _, setting = min(rows, key=lambda r: r["ms"])["bias_grad"].partition(":")
key = {"rows": "bias_grad", "tiles": "bias_grad_tiles"}[kernel]
print(f"--bias-grad {kernel} --launch {key}={setting}")
PY
)
      echo "fastest bias gradient: ${best:-none}"
      train tune_previous 110 350m 16 flex "${previous[@]}"
      train tune_near 110 350m 16 flex --near-table --bias-grad rows --flex-options ""
      train tune_near_best 110 350m 16 flex --near-table $best --flex-options "" --profile
      timeout 100 $py -m pytest -q -p no:cacheprovider tests/gpu -k float64 2>&1 | tail -3
      train tune_near_best_autotune 240 350m 16 flex --near-table $best --flex-options "" \
        --flex-autotune
      grep -A12 "AUTOTUNE" "$OUT/tune_near_best_autotune.err" | head -60
      ;;
    train2b)
      train train_2b 100 2b 16 auto
      ;;
    tests)
      echo "== tests/gpu"
      timeout 240 $py -m pytest -q -s -p no:cacheprovider tests/gpu 2>&1 | grep -vE "^\s*$|warn|DEBUG" | tail -40
      ;;
    decode)
      step decode_350m 170 $py bench/decode.py --device cuda --repeat 5
      ;;
    engine)
      step engine_350m 120 $py bench/engine.py --preset 350m --tokenizer runs/local/tokenizer.model \
        --device cuda --clients 1 16 64 --turns 64 --max-rows 1024
      ;;
    curve)
      for run in "125m 1e-3" "125m 2e-3" "tiny 2e-3"; do
        set -- $run
        step "curve_$1_$2" 400 $py bench/tool_curve.py --data runs/local/data \
          --index runs/local/index.sqlite --tokenizer runs/local/tokenizer.model --device cuda \
          --threads 4 --preset "$1" --lr "$2" --batch 32 --steps 2400 --eval-at 1200 &
      done
      ;;
  esac
done
wait
