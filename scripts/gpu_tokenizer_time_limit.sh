#!/usr/bin/env bash
# Issue 21 on a GPU: does `tokenizer-train --time-limit 60` bound the whole command?
#   bash scripts/gpu_tokenizer_time_limit.sh [COUNTS...]     (default: 1600 16000 pictures)
# Renders landscape pictures of 256 x 256 (ten seed ranges in parallel, hard-linked into one folder
# for the larger set), then times `nuwa-ds tokenizer-train ... --time-limit 60 --device cuda` on each
# set under an outer limit of 150 s. Writes TOKLIMIT_OUT (default $OUT or /tmp/toklimit): times.json
# and each run's metrics.json and log.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${TOKLIMIT_OUT:-${OUT:-/tmp/toklimit}}"
work="${TOKLIMIT_WORK:-/tmp/toklimit_work}"
rm -rf "$work" && mkdir -p "$out" "$work"
counts=("$@")
[ ${#counts[@]} -gt 0 ] || counts=(1600 16000)
parts=10
per=1600
for i in $(seq 0 $((parts - 1))); do
  python3 -m nuwa_ds.cli landscapes --out "$work/p$i" --count $per --size 256x256 --worlds $per \
    --world-seed-base $((i * per)) --y random --no-progress > "$work/render$i.log" 2>&1 &
done
wait
for n in "${counts[@]}"; do
  mkdir -p "$work/set$n"
  k=0
  for i in $(seq 0 $((parts - 1))); do
    for f in "$work/p$i"/*.png; do
      [ $k -lt "$n" ] || break 2
      ln "$f" "$work/set$n/p${i}_$(basename "$f")"
      k=$((k + 1))
    done
  done
  t0=$(date +%s.%N)
  timeout 150 python3 -m nuwa_ds.cli tokenizer-train --images "$work/set$n" --out "$work/tok$n" \
    --preset demo-f8 --steps 6000 --batch-size 64 --crop 128 --time-limit 60 --device cuda \
    > "$out/tokenizer$n.log" 2>&1
  rc=$?
  t1=$(date +%s.%N)
  echo "$n $rc $t0 $t1 $k" >> "$work/times.txt"
  cp "$work/tok$n/metrics.json" "$out/metrics$n.json" 2>/dev/null
done
python3 - "$work/times.txt" "$out" <<'EOF'
import json, sys
from pathlib import Path
rows = []
for line in Path(sys.argv[1]).read_text().splitlines():
    n, rc, t0, t1, k = line.split()
    m = Path(sys.argv[2], f"metrics{n}.json")
    rows.append(dict(pictures=int(k), exit_code=int(rc), wall_s=round(float(t1) - float(t0), 1),
                     within_66_s=float(t1) - float(t0) <= 66.0,
                     metrics=json.loads(m.read_text()) if m.exists() else None))
Path(sys.argv[2], "times.json").write_text(json.dumps(rows, indent=1))
for r in rows:
    print({k: v for k, v in r.items() if k != "metrics"})
EOF
