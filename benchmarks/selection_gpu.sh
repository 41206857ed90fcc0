#!/usr/bin/env bash
# Best against last on the test set for the Omniglot configs not yet measured on CPU, one short
# GPU session: four benchmarks/selection.py runs side by side on one GPU, each with a capped
# number of iterations (the full 60,000 do not fit in a session's device time).
#
#   OMNIGLOT_TGZ=.gpu/omniglot.tgz bash benchmarks/selection_gpu.sh OUT_DIR
set -uo pipefail
source "$(dirname "$0")/gpu_setup.sh"
run() {  # name config iterations every shots steps
  timeout "${CAP:-400}" python3 benchmarks/selection.py --config "configs/$2" --device cuda \
    --every "$4" --shots "$5" --steps "$6" --out "$out/$1.md" \
    --set "task.root=$root" --set "train.iterations=$3" >"$out/$1.log" 2>&1
  echo "$1 exit $?" | tee -a "$out/gpu.txt"
}
run 5w5s omniglot-5w5s-maml.yaml "${IT5:-2000}" 250 5 1,3 &
run fomaml omniglot-5w1s-fomaml.yaml "${IT5:-2000}" 250 1 1,3 &
run 20w1s omniglot-20w1s-maml.yaml "${IT20:-1000}" 125 1 1,5 &
run 20w5s omniglot-20w5s-maml.yaml "${IT20:-1000}" 125 5 1,5 &
wait
cat "$out"/*.md
