#!/usr/bin/env bash
# Time to 98.7% (Omniglot 5-way 1-shot MAML) for configs/omniglot-5w1s-maml-fast.yaml and
# single-lever variants of it, each with benchmarks/time_to_accuracy.py on the same budget,
# one after the other, so that every lever gets its own recorded result.
#
#   bash benchmarks/time_to_accuracy_levers.sh BUDGET_MIN MARKS_EVERY_MIN [time_to_accuracy.py options]
#   e.g. bash benchmarks/time_to_accuracy_levers.sh 10 2 --device cpu
#        VARIANTS="fast paper" bash benchmarks/time_to_accuracy_levers.sh 3 0.5 --device cuda
#
# Variants (VARIANTS="fast batch16 ..." runs a subset, in that order):
#   fast       the fast config as it is (runs first: its seconds per iteration set HORIZON)
#   batch16    algorithm.meta_batch=16: half the cost of a meta-update on a CPU
#   cosine     cosine meta lr from 1e-3 to 1e-5 over HORIZON iterations, the number the fast
#              run reached in the budget (so that the decay ends with the budget)
#   fo_warmup  first-order meta-gradients for the first HORIZON/4 iterations, then second
#              order (an objective that reads the iteration leaves the compiled path: vmap)
#   per_class  train.query_batch=per_class: training's query passes in batches of one image
#              per class, as the test protocol classifies them
#   procs2     the same run in 2 processes (torchrun; on a 2-core CPU, 1 thread each)
#   lr3cos     meta lr 3e-3 annealed to 1e-5 by a cosine over HORIZON iterations
#   paper      configs/omniglot-5w1s-maml.yaml unchanged: 1 query per class instead of 15
#              (and validation every 1,000 iterations on 200 tasks), the reference
# HORIZON=N fixes the horizon instead (needed for cosine or fo_warmup without fast).
#
# Time per variant: process start (data, choosing the batching path: on a CPU up to ~2
# minutes the first time a config is timed with the compiled path, cached after), then
# BUDGET_MIN of training, then one 600-task evaluation per mark (15 queries per class,
# 3 steps: about 1 minute on a 2-core CPU, about 10 s on an H100). All five: CPU, 10-minute
# budget, marks every 2 minutes, about 5 x (1 + 10 + 5 x 1) = 80 minutes; GPU, 3-minute
# budget, marks every 0.5 minutes, about 5 x (0.5 + 3 + 6 x 0.2) = 25 minutes (so on a
# device lease of 10 minutes a command, run two variants per command via VARIANTS).
# Results: $WORK/levers.md and $WORK/levers.jsonl (default WORK=/tmp/fewshot-tta-levers).
set -euo pipefail
cd "$(dirname "$0")/.."
budget=${1:?budget in minutes of training}
every=${2:?minutes of training between evaluated marks}
shift 2
work=${WORK:-/tmp/fewshot-tta-levers}
variants=${VARIANTS:-fast batch16 cosine fo_warmup paper}
horizon=${HORIZON:-}
mkdir -p "$work"
stamp=$(date +%Y%m%d-%H%M%S)

tta() {  # tta LABEL CONFIG [options...]
  local label=$1 config=$2
  shift 2
  python benchmarks/time_to_accuracy.py "$config" --budget-minutes "$budget" \
    --marks-every-minutes "$every" --work "$work" --name "lever-$label-$stamp" \
    --label "$label" --out "$work/levers.md" --json "$work/levers.jsonl" "$@"
}

need_horizon() {
  if [ -z "$horizon" ]; then
    echo "variant $1 needs HORIZON (run 'fast' first or set HORIZON=iterations)" >&2
    exit 2
  fi
}

fast=configs/omniglot-5w1s-maml-fast.yaml
for v in $variants; do
  case $v in
    fast)
      tta fast "$fast" "$@"
      if [ -z "$horizon" ]; then  # iterations the fast config reaches in the whole budget
        horizon=$(python -c 'import json, sys
rec = json.loads(open(sys.argv[1]).read().splitlines()[-1])
print(round(float(sys.argv[2]) * 60 / rec["marks"][-1]["seconds_per_iteration"]))' \
          "$work/levers.jsonl" "$budget")
        echo "HORIZON=$horizon (iterations of the fast config in $budget minutes)"
      fi ;;
    batch16) tta batch16 "$fast" --set algorithm.meta_batch=16 "$@" ;;
    cosine)
      need_horizon cosine
      tta "cosine-$horizon" "$fast" --set algorithm.cosine_meta_lr=true \
        --set algorithm.meta_lr_final=0.00001 --set "train.iterations=$horizon" "$@" ;;
    fo_warmup)
      need_horizon fo_warmup
      fo=$(( horizon / 4 > 0 ? horizon / 4 : 1 ))
      tta "fo_warmup-$fo" "$fast" --set "algorithm.first_order_iterations=$fo" "$@" ;;
    per_class) tta per_class "$fast" --set train.query_batch=per_class "$@" ;;
    procs2) tta procs2 "$fast" --nproc 2 "$@" ;;
    lr3cos)
      need_horizon lr3cos
      tta "lr3cos-$horizon" "$fast" --set algorithm.meta_lr=0.003 --set algorithm.cosine_meta_lr=true \
        --set algorithm.meta_lr_final=0.00001 --set "train.iterations=$horizon" "$@" ;;
    paper) tta paper configs/omniglot-5w1s-maml.yaml "$@" ;;
    *) echo "unknown variant $v" >&2; exit 2 ;;
  esac
done
echo "results: $work/levers.md, $work/levers.jsonl"
