#!/usr/bin/env bash
# One short GPU session for the algorithm family: MAML++ on Omniglot 5-way 1-shot for a
# wall-time budget (validation accuracy against time, then 600 test tasks), then seconds per
# meta-iteration and peak memory of the meta-LSTM against MAML on the Omniglot config.
#
#   OMNIGLOT_TGZ=.gpu/omniglot.tgz MINUTES=5 bash benchmarks/gpu_family.sh OUT_DIR
set -uo pipefail
source "$(dirname "$0")/gpu_setup.sh"
python3 benchmarks/omniglot_maml.py --config configs/omniglot-5w1s-mamlpp.yaml \
  --minutes "${MINUTES:-5}" --device cuda --root "$root" --val-every 250 \
  --work /tmp/fewshot-runs --out "$out/mamlpp.md"
FEWSHOT_OMNIGLOT="$root" python3 benchmarks/meta_lstm.py --parts speed --device cuda \
  2>&1 | tee "$out/meta_lstm_speed.md"
