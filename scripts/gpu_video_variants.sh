#!/usr/bin/env bash
# Several models of the landscape-video recipe on one GPU, trained side by side on the same prepared data
# (device runs): the base runs every stage; once its shards are written, each variant links the base's
# shards, tokenizer and text encoder and runs from stage "train" with its own settings, while the base
# trains too. The recipe's model is small (a few % of the GPU's matrix rate), so models trained at the
# same time share the GPU at little cost each, and one call compares them on the same clips, tokenizer
# and text encoder, bit for bit.
#
# Usage: VARIANTS="name:key=value,key=value name2:key=value" [RECIPE_TIMEOUT=S] [RECIPE_PRESET=gpu|cpu] \
#          bash scripts/gpu_video_variants.sh [--set key=value ...]
#   the --set items go to every run (the base's settings); a variant's own items come after them.
# $OUT gets video_variants.log (every run's log, prefixed by its name), report_<name>.json for each run and
# video_variants_frames.png (per run: text-to-video, animation and continuation clip 0, every frame).
set -uo pipefail
root=${RECIPE_OUT:-/tmp/video-variants}
dest=${OUT:-/tmp/out}
deadline=$((SECONDS + ${RECIPE_TIMEOUT:-560}))
mkdir -p "$dest" "$root"
log="$dest/video_variants.log"
python3 -c 'import av' 2>/dev/null || { echo "PyAV (av==18.1.0, requirements.txt) is missing here: carry its wheel in .whl" \
  | tee "$log" >&2; exit 1; }
[ -n "${VARIANTS:-}" ] || { echo "VARIANTS is empty: name:key=value,... for each variant" | tee "$log" >&2; exit 1; }
for v in $VARIANTS; do
  name=${v%%:*}
  [[ "$name" =~ ^[A-Za-z0-9_-]+$ && "$name" != base && "$v" == *:* ]] || {
    echo "bad variant '$v': name:key=value,... (name of letters, digits, _ and -, not 'base')" | tee "$log" >&2; exit 1; }
done

run() {  # name, out folder, arguments...: one recipe run until the deadline, its log prefixed by its name
  local name=$1 out=$2; shift 2
  timeout $((deadline - SECONDS)) python3 -m nuwa_ds.cli recipe landscape-videos --preset "${RECIPE_PRESET:-gpu}" --out "$out" "$@" 2>&1 \
    | tr '\r' '\n' | grep --line-buffered -v 'step/s[],]\|s/step[],]\|it/s\]$\|s/it\]$\|pic/s\]$\|src/s\]$\|clip/s\]$' \
    | sed -u "s/^/[$name] /" >> "$log"
}

: > "$log"
rm -rf "$root"
mkdir -p "$root/base"
run base "$root/base" "$@" &
base_pid=$!
# the variants start when the base's shards stage is in its report
until python3 - "$root/base/report.json" 2>/dev/null <<'PY'
import json, sys
sys.exit(0 if "4 shards" in json.load(open(sys.argv[1])).get("stage_seconds", {}) else 1)
PY
do
  kill -0 "$base_pid" 2>/dev/null || { echo "the base run ended before its shards were written" >> "$log"; break; }
  sleep 2
done
pids=()
if kill -0 "$base_pid" 2>/dev/null; then
  for v in $VARIANTS; do
    name=${v%%:*}
    sets=()
    IFS=',' read -ra items <<< "${v#*:}"
    for item in "${items[@]}"; do sets+=(--set "$item"); done
    mkdir -p "$root/$name"
    for part in shards tokenizer text_encoder; do ln -s "$root/base/$part" "$root/$name/$part"; done
    cp "$root/base/report.json" "$root/$name/report.json"
    run "$name" "$root/$name" "$@" "${sets[@]}" --from-stage train &
    pids+=($!)
  done
fi
( while sleep 10; do for d in "$root"/*/; do cp "$d/report.json" "$dest/report_$(basename "$d").json" 2>/dev/null; done; done ) &
copier=$!
wait "$base_pid" "${pids[@]}"
kill "$copier" 2>/dev/null
for d in "$root"/*/; do cp "$d/report.json" "$dest/report_$(basename "$d").json" 2>/dev/null; done
python3 - "$root" "$dest" <<'PY'
import sys
from pathlib import Path
from PIL import Image, ImageDraw
root, dest = Path(sys.argv[1]), Path(sys.argv[2])
rows = []
for run in sorted(root.iterdir(), key=lambda p: (p.name != "base", p.name)):
    for name in ("text2video", "animation", "continuation"):
        frames = sorted((run / "generated" / name / "clip_00000").glob("frame_*.png"))
        if frames:
            rows.append((f"{run.name}\n{name}", [Image.open(p).convert("RGB") for p in frames]))
if rows:
    w, h = rows[0][1][0].size
    label = 110
    sheet = Image.new("RGB", (label + max(len(r) for _, r in rows) * w, len(rows) * h), "white")
    draw = ImageDraw.Draw(sheet)
    for y, (text, frames) in enumerate(rows):
        draw.multiline_text((4, y * h + 4), text, fill="black")
        for x, im in enumerate(frames):
            sheet.paste(im, (label + x * w, y * h))
    sheet.save(dest / "video_variants_frames.png")
PY
grep -h '^\[.*\] \(== \|Traceback\|.*Error\)' "$log" | tail -n 40
ls -la "$dest"
