#!/usr/bin/env bash
# One GPU session for the performance and distributed work, about 8 minutes on an H100:
#   1. conv4 Omniglot 5w1s seconds per meta-iteration per path (loop, vmap, fused), 1 and 15
#      queries per class (benchmarks/conv4_speed.py --device cuda);
#   2. drawing a meta-batch with the images on the CPU or on the GPU (task.images_on_device),
#      and that both give the same tasks (benchmarks/task_sampling.py);
#   3. peak memory against inner steps, mini-ImageNet conv4, with and without
#      algorithm.checkpoint_inner_steps, fp32 and bf16 (benchmarks/inner_memory.py);
#   4. one run split over processes: 1 process, then 2 processes sharing the GPU (gloo),
#      and one process at 32, 16, 8, 4, 2, 1 tasks (the per-rank floor that bounds scaling)
#      (benchmarks/ddp_speed.py);
#   5. time to 98.7% with configs/omniglot-5w1s-maml-fast.yaml, 3-minute budget
#      (benchmarks/time_to_accuracy.py; the compiled path when auto picks it).
#
#   OMNIGLOT_TGZ=.gpu/omniglot.tgz bash benchmarks/gpu_perf.sh OUT_DIR
#
# On a lent device machine without network (torch, typer, rich, pyyaml, matplotlib there;
# pydantic travels as wheels in .whl/, Omniglot as .gpu/omniglot.tgz, both carried):
#   pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && \
#   PYTHONPATH=/tmp/site OMNIGLOT_TGZ=.gpu/omniglot.tgz bash benchmarks/gpu_perf.sh $OUT
# Written in a session whose device time was spent elsewhere: not yet run on a GPU.
set -uo pipefail
source "$(dirname "$0")/gpu_setup.sh"
export FEWSHOT_OMNIGLOT="$root"
for q in 1 15; do
  timeout 120 python3 benchmarks/conv4_speed.py --strided --device cuda --queries "$q" \
    2>&1 | tee "$out/conv4_speed_q$q.txt"
done
timeout 60 python3 benchmarks/task_sampling.py --device cuda 2>&1 | tee "$out/task_sampling.txt"
timeout 120 python3 benchmarks/inner_memory.py --device cuda --autocast off,bf16 \
  2>&1 | tee "$out/inner_memory.txt"
timeout 60 python3 benchmarks/ddp_speed.py configs/omniglot-5w1s-maml.yaml --iters 30 \
  --tasks-per-rank 32,16,8,4,2,1 2>&1 | tee "$out/ddp.txt"
timeout 90 torchrun --standalone --nproc-per-node 2 benchmarks/ddp_speed.py \
  configs/omniglot-5w1s-maml.yaml --iters 30 --set train.dist_backend=gloo \
  2>&1 | grep '^{' | tee -a "$out/ddp.txt"
timeout 330 python3 benchmarks/time_to_accuracy.py configs/omniglot-5w1s-maml-fast.yaml \
  --budget-minutes 3 --marks-every-minutes 1 --device cuda --root "$root" \
  --work /tmp/tta --out "$out/tta.md" --json "$out/tta.jsonl" 2>&1 | tail -30
