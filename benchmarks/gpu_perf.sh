#!/usr/bin/env bash
# One GPU session for the performance and distributed work, about 9 minutes on an H100:
#   1. conv4 Omniglot 5w1s seconds per meta-iteration per path (loop, vmap, fused), 1 and 15
#      queries per class (benchmarks/conv4_speed.py --device cuda);
#   2. the compiled path of the fast config without and with CUDA graphs (train.cuda_graphs)
#      (benchmarks/ddp_speed.py --path compiled);
#   3. drawing a meta-batch with the images on the CPU or on the GPU (task.images_on_device),
#      and that both give the same tasks (benchmarks/task_sampling.py);
#   4. peak memory against inner steps, mini-ImageNet conv4, with and without
#      algorithm.checkpoint_inner_steps, fp32 and bf16 (benchmarks/inner_memory.py);
#   5. one run split over processes: 1 process, then 2 processes sharing the GPU (gloo),
#      and one process at 32, 16, 8, 4, 2, 1 tasks (the per-rank floor that bounds scaling)
#      (benchmarks/ddp_speed.py);
#   6. time to 98.7% with configs/omniglot-5w1s-maml-fast.yaml, 3-minute budget
#      (benchmarks/time_to_accuracy.py; the compiled path when auto picks it).
#
#   OMNIGLOT_TGZ=.gpu/omniglot.tgz bash benchmarks/gpu_perf.sh OUT_DIR
#
# On a lent device machine without network (torch, typer, rich, pyyaml, matplotlib there;
# pydantic travels as wheels in .whl/, Omniglot as .gpu/omniglot.tgz, both carried):
#   pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && \
#   PARTS=a PYTHONPATH=/tmp/site OMNIGLOT_TGZ=.gpu/omniglot.tgz bash benchmarks/gpu_perf.sh $OUT
# and then the same with PARTS=b (carry .whl and .gpu).
# Run on an H100 on 2026-11-26 (PARTS=a, then PARTS=b TTA="2 1"; benchmarks/RESULTS.md, "GPU session
# for the performance issue"). SMOKE=1 below checks it on a CPU.
set -uo pipefail
# SMOKE=1 runs every step on the CPU at toy sizes, in about 3 minutes: a check of this
# script's plumbing before device time is spent on it (gpu.txt then says nvidia-smi failed).
# PARTS="a" runs steps 1-5 (~5 minutes), PARTS="b" step 6 (~4 minutes): a device command may
# run 10 minutes at most, so on a lent machine run them as two commands (default: both).
parts=" ${PARTS:-a b} "
dev=cuda; compiled=compiled; conv_iters=10; mem=(--autocast off,bf16); ddp_iters=30
tta=(${TTA:-3 1}); tasks=600  # TTA="BUDGET MARKS" minutes
if [ -n "${SMOKE:-}" ]; then
  dev=cpu; compiled=fused; conv_iters=1; ddp_iters=2; tta=(0.3 0.3); tasks=20
  mem=(--autocast off --steps 1,2 --size 28 --path fused)
fi
source "$(dirname "$0")/gpu_setup.sh"
export FEWSHOT_OMNIGLOT="$root"
if [[ $parts == *" a "* ]]; then
  for q in 1 15; do
    timeout 120 python3 benchmarks/conv4_speed.py --strided --device "$dev" --queries "$q" \
      --iterations "$conv_iters" ${SMOKE:+--no-memory} 2>&1 | tee "$out/conv4_speed_q$q.txt"
  done
  for g in false true; do  # the compiled path, without and with CUDA graphs (fast config)
    echo "# train.cuda_graphs=$g" | tee -a "$out/graphs.txt"
    timeout 150 python3 benchmarks/ddp_speed.py configs/omniglot-5w1s-maml-fast.yaml \
      --iters "$ddp_iters" --path "$compiled" --set "device=$dev" --set "train.cuda_graphs=$g" \
      2>&1 | tail -3 | tee -a "$out/graphs.txt"
  done
  timeout 60 python3 benchmarks/task_sampling.py --device "$dev" 2>&1 | tee "$out/task_sampling.txt"
  timeout 120 python3 benchmarks/inner_memory.py --device "$dev" "${mem[@]}" \
    2>&1 | tee "$out/inner_memory.txt"
  timeout 60 python3 benchmarks/ddp_speed.py configs/omniglot-5w1s-maml.yaml --iters "$ddp_iters" \
    --set "device=$dev" --tasks-per-rank 32,16,8,4,2,1 2>&1 | tee "$out/ddp.txt"
  timeout 90 torchrun --standalone --nproc-per-node 2 benchmarks/ddp_speed.py \
    configs/omniglot-5w1s-maml.yaml --iters "$ddp_iters" --set "device=$dev" \
    --set train.dist_backend=gloo 2>&1 | grep '^{' | tee -a "$out/ddp.txt"
fi
if [[ $parts == *" b "* ]]; then
  timeout 330 python3 benchmarks/time_to_accuracy.py configs/omniglot-5w1s-maml-fast.yaml \
    --budget-minutes "${tta[0]}" --marks-every-minutes "${tta[1]}" --device "$dev" \
    --root "$root" --tasks "$tasks" ${SMOKE:+--set train.vectorize=fused} \
    --work /tmp/tta --out "$out/tta.md" --json "$out/tta.jsonl" 2>&1 | tail -30
fi
