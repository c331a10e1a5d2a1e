#!/usr/bin/env bash
# Issue 20 on a GPU: the run that once trained on through SIGUSR1, repeated with different signal times.
#   bash scripts/gpu_stop_trials.sh [N ...]      (default: ten trials, N = 40 .. 250 s)
# Each trial is `timeout -s USR1 N nuwa-ds train --config small ... data.num_workers=4` (one rank,
# ZeRO-2, bf16, token shards), as the user ran it; `timeout` signals the whole process group, as
# Slurm's --signal does for a job step. The trials run side by side (the GPU and 16 cores hold ten
# small runs), which also varies when the signal falls. A trial passes when the trainer announces
# the signal, checkpoints, says "preempted" and exits 75 well before the outer kill (N + 120 s);
# then the first stopped run is resumed with --resume auto for 20 more steps.
# Writes STOP_OUT (default $OUT or /tmp/stop_trials): trials.json, one log and metrics.jsonl per trial.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${STOP_OUT:-${OUT:-/tmp/stop_trials}}"
work="${STOP_WORK:-/tmp/stop_trials_work}"
rm -rf "$work" && mkdir -p "$out" "$work"
device="${STOP_DEVICE:-cuda}"
precision=$([ "$device" = cuda ] && echo "train.precision=bf16" || echo "train.precision=fp32")
trials=("$@")
[ ${#trials[@]} -gt 0 ] || trials=(40 60 80 100 120 150 170 200 220 250)

pattern=$(python3 -c "
from pathlib import Path
from nuwa_ds.bench.data import write_token_shards
print(write_token_shards(Path('$work/shards'), shards=16, per_shard=256, side=16, vocab=1024))")

for n in "${trials[@]}"; do
  ( start=$(date +%s.%N)
    timeout -k 5 $((n + 120)) timeout --preserve-status -s USR1 "$n" python3 -m nuwa_ds.cli train --config small \
      --ds-config zero2 "train.run_dir=$work/run$n" "data.shards=$pattern" data.num_workers=4 \
      train.steps=1000000 "$precision" train.log_every=10 > "$work/trial$n.log" 2>&1
    rc=$?
    echo "$rc $start $(date +%s.%N)" > "$work/trial$n.rc" ) &
done
wait

first=""
for n in "${trials[@]}"; do
  read -r rc _ _ < "$work/trial$n.rc"
  if [ "$rc" = 75 ] && [ -z "$first" ]; then first=$n; fi
done
if [ -n "$first" ]; then
  stopped=$(python3 -c "
import json
ev=[json.loads(l) for l in open('$work/run$first/metrics.jsonl')]
print([e for e in ev if e.get('event')=='preempted'][-1]['step'])")
  python3 -m nuwa_ds.cli train --config small --ds-config zero2 "train.run_dir=$work/run$first" \
    "data.shards=$pattern" data.num_workers=4 "train.steps=$((stopped + 20))" "$precision" \
    train.log_every=10 --resume auto > "$work/resume$first.log" 2>&1
  echo "$? $first $stopped" > "$work/resume.rc"
fi

python3 - "$work" "$out" "${trials[@]}" <<'EOF'
import json, shutil, sys
from pathlib import Path
work, out, trials = Path(sys.argv[1]), Path(sys.argv[2]), [int(n) for n in sys.argv[3:]]
rows = []
for n in trials:
    rc, t0, t1 = (Path(work, f"trial{n}.rc").read_text().split())
    log = Path(work, f"trial{n}.log").read_text(errors="replace")
    metrics = Path(work, f"run{n}", "metrics.jsonl")
    ev = [json.loads(l) for l in metrics.read_text().splitlines()] if metrics.exists() else []
    steps = [e for e in ev if "loss" in e and "event" not in e]
    pre = [e for e in ev if e.get("event") == "preempted"]
    rate = None
    if len(steps) >= 2 and "time" in steps[-1]:
        rate = (steps[-1]["step"] - steps[0]["step"]) / max(1e-9, steps[-1]["time"] - steps[0]["time"])
    rows.append(dict(signal_after_s=n, exit_code=int(rc), wall_s=round(float(t1) - float(t0), 1),
                     stop_after_signal_s=round(float(t1) - float(t0) - n, 1),
                     announced=log.count("SIGUSR1 received"), preempted_step=pre[-1]["step"] if pre else None,
                     last_logged_step=steps[-1]["step"] if steps else None,
                     steps_per_s=round(rate, 1) if rate else None, finished=any(e.get("event") == "end" for e in ev),
                     stopped=int(rc) == 75 and bool(pre)))
    shutil.copy(Path(work, f"trial{n}.log"), out)
    if metrics.exists():
        shutil.copy(metrics, Path(out, f"metrics{n}.jsonl"))
resume = Path(work, "resume.rc")
report = dict(trials=rows, stopped=sum(r["stopped"] for r in rows), of=len(rows))
if resume.exists():
    rc, first, stopped = resume.read_text().split()
    report["resume"] = dict(trial=int(first), stopped_step=int(stopped), exit_code=int(rc))
    shutil.copy(Path(work, f"resume{first}.log"), out)
Path(out, "trials.json").write_text(json.dumps(report, indent=1))
for r in rows:
    print(r)
print({k: v for k, v in report.items() if k != "trials"})
EOF
