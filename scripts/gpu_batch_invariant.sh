#!/usr/bin/env bash
# Issue 16 on a GPU machine: the batch-invariant kernels against their references, the model-level GPU
# tests (nuwa-350m width, bf16), then the invariant path's cost beside the default one in the same run.
# Usage (device runs, after `source .whl/device-setup.sh`): bash scripts/gpu_batch_invariant.sh
# Default limits add up to 560 s (a call has 600 s: lower LIMIT_* or skip a step with LIMIT_X=1); KERNEL_BENCH=1
# adds 120 s more. Exits with the worst step's status.
set -uo pipefail
dest=${OUT:-/tmp/out}
mkdir -p "$dest"
export TRITON_INTERPRET=0
worst=0
step() {  # step NAME SECONDS command...: its output in $dest/NAME.log, its exit status in the summary
  local name=$1 limit=$2; shift 2
  local tic=$SECONDS rc
  timeout -k 10 "$limit" "$@" > "$dest/$name.log" 2>&1
  rc=$?
  echo "$name: rc $rc in $((SECONDS - tic)) s" | tee -a "$dest/summary.txt"
  [ "$rc" -gt "$worst" ] && worst=$rc
  return 0
}
# most telling first: a call cut short keeps what ran (each step's log is in $dest as it goes)
step gpu_generation ${LIMIT_TESTS:-150} python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_gpu_generation.py
# with the per-kernel profile of the token step at 1 and 128 rows, both paths (issue 19)
step bench_decode ${LIMIT_DECODE:-110} python3 -m nuwa_ds.cli bench decode --device cuda --set batch_invariant=true \
  --set 'profile=[1,128]' --out "$dest/bench_decode.json"
step kernels ${LIMIT_KERNELS:-80} python3 -m pytest -q -p no:cacheprovider tests/test_kernels_batch_invariant.py \
  tests/test_kernels_pool_decode.py -k "invariant or split"
step bench_generate ${LIMIT_GENERATE:-220} python3 -m nuwa_ds.cli bench generate --device cuda --set batch_invariant=true \
  --set paper_canvas=false --out "$dest/bench_generate.json"
[ "${KERNEL_BENCH:-0}" = 1 ] && step bench_kernels 120 python3 -m nuwa_ds.cli bench kernels --device cuda --quick \
  --set checks=false --set decode=false --set 'cases=[]' --set peers=false --out "$dest/bench_kernels.json"
tail -n 25 "$dest"/*.log
exit "$worst"
