# Sourced by the GPU session scripts (selection_gpu.sh, gpu_family.sh, gpu_perf.sh): run from
# the source tree, unpack the Omniglot tarball given as OMNIGLOT_TGZ, and record the GPU. Sets
# $out (the script's first argument, created) and $root (the unpacked Omniglot folder).
cd "$(dirname "${BASH_SOURCE[0]}")/.."
out=${1:?output folder}
mkdir -p "$out"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export FEWSHOT_CACHE=/tmp/fewshot-cache
data=/tmp/omniglot-data
mkdir -p "$data" && tar xzf "${OMNIGLOT_TGZ:?path of the Omniglot tarball}" -C "$data"
root="$data/omniglot"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
