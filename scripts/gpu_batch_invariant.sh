#!/usr/bin/env bash
# Issue 16 on a GPU machine: the batch-invariant kernels against their references, the model-level GPU
# tests (nuwa-350m width, bf16), then the invariant path's cost beside the default one in the same run.
# Usage (device runs, after `source .whl/device-setup.sh`): bash scripts/gpu_batch_invariant.sh
set -uo pipefail
dest=${OUT:-/tmp/out}
mkdir -p "$dest"
export TRITON_INTERPRET=0
step() {  # step NAME SECONDS command...: its output in $dest/NAME.log, its exit status in the summary
  local name=$1 limit=$2; shift 2
  local tic=$SECONDS
  timeout "$limit" "$@" > "$dest/$name.log" 2>&1
  echo "$name: rc $? in $((SECONDS - tic)) s" | tee -a "$dest/summary.txt"
}
# most telling first: a call cut short keeps what ran (each step's log is in $dest as it goes)
step gpu_generation ${LIMIT_TESTS:-180} python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_gpu_generation.py
step bench_decode ${LIMIT_DECODE:-90} python3 -m nuwa_ds.cli bench decode --device cuda --set batch_invariant=true \
  --out "$dest/bench_decode.json"
step kernels ${LIMIT_KERNELS:-100} python3 -m pytest -q -p no:cacheprovider tests/test_kernels_batch_invariant.py \
  tests/test_kernels_pool_decode.py -k "invariant or split"
step bench_generate ${LIMIT_GENERATE:-120} python3 -m nuwa_ds.cli bench generate --device cuda --set batch_invariant=true \
  --set paper_canvas=false --out "$dest/bench_generate.json"
[ "${KERNEL_BENCH:-0}" = 1 ] && step bench_kernels 120 python3 -m nuwa_ds.cli bench kernels --device cuda --quick \
  --set checks=false --set decode=false --set 'cases=[]' --set peers=false --out "$dest/bench_kernels.json"
tail -n 25 "$dest"/*.log
