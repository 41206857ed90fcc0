#!/usr/bin/env bash
# One short GPU session: environment, sinusoid speed per path, then Omniglot 5-way 1-shot MAML
# for a fixed wall-time budget followed by the 600-task test evaluation.
#
#   OMNIGLOT_TGZ=path/to/omniglot.tgz MINUTES=6 bash benchmarks/gpu_session.sh [OUT_DIR]
#
# Expects torch, typer, rich, pyyaml, matplotlib and pydantic importable; runs from the source
# tree (PYTHONPATH=src), so no install step is needed on a machine without network access.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-${OUT:-/tmp/fewshot-gpu}}
mkdir -p "$out"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export FEWSHOT_CACHE=/tmp/fewshot-cache
minutes=${MINUTES:-6}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(0))" \
  | tee -a "$out/gpu.txt"

data=/tmp/omniglot-data
if [ -n "${OMNIGLOT_TGZ:-}" ]; then
  mkdir -p "$data" && tar xzf "$OMNIGLOT_TGZ" -C "$data"
  root="$data/omniglot"
else
  root=${FEWSHOT_OMNIGLOT:-../shared/data/omniglot}
fi

# Sinusoid MAML speed per path on the GPU (meta-batch 25, second order).
python3 - <<'EOF' 2>&1 | tee "$out/sine_speed.txt"
import statistics, time, torch
from fewshot_cli.algorithms import TrainingProgress
from fewshot_cli.config import load_config
from fewshot_cli.engine.setup import build_experiment
cfg = load_config("configs/sine-maml.yaml", ["device=cuda"])
exp = build_experiment(cfg)
opt = exp.algo.configure_optimizer()
gen = torch.Generator().manual_seed(0)
def rate(mode, n):
    torch.cuda.synchronize(); t = time.perf_counter()
    for _ in range(n):
        b = exp.source.sample(25, gen, "train").to(exp.device)
        loss, _ = exp.algo.meta_loss(b, mode, TrainingProgress(1, 1))
        opt.zero_grad(); loss.backward(); opt.step()
    torch.cuda.synchronize(); return n / (time.perf_counter() - t)
for m in ("vmap", "loop"):
    rate(m, 20)
rates = {"vmap": [], "loop": []}
for _ in range(3):
    for m in rates:
        rates[m].append(rate(m, 300 if m == "vmap" else 60))
for m, v in rates.items():
    print(f"sine-maml cuda {m}: median {statistics.median(v):.0f} it/s "
          f"(min {min(v):.0f}, max {max(v):.0f})")
EOF

python3 benchmarks/omniglot_maml.py --minutes "$minutes" --device cuda --root "$root" \
  --val-every 250 --work /tmp/fewshot-runs --out "$out/omniglot.md"
run=$(ls -d /tmp/fewshot-runs/*/ | head -n 1)
cp "$run/metrics.jsonl" "$run/meta.json" "$run/eval.json" "$out/"
