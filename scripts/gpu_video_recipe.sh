#!/usr/bin/env bash
# The landscape-video recipe on a GPU machine, with its log and figures copied to $OUT (device runs).
# Usage: [KERNEL_CHECK=1] [RECIPE_TIMEOUT=S] bash scripts/gpu_video_recipe.sh [--set key=value ...]
set -uo pipefail
out=${RECIPE_OUT:-/tmp/video-recipe}
dest=${OUT:-/tmp/out}
mkdir -p "$dest"
# the clips are written as MP4 through PyAV, which the GPU machines' image lacks: carry its wheel
# (pip download --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux_2_28_x86_64 av==18.1.0)
python3 -c 'import av' 2>/dev/null || { echo "PyAV (av==18.1.0, requirements.txt) is missing here: carry its wheel in .whl" \
  | tee "$dest/video_recipe.log" >&2; exit 1; }
# KERNEL_CHECK=1: first the compiled Triton kernels against the reference with the aligned-token bias (the
# recipe's model uses it; about a minute), and no recipe if they fail
if [ "${KERNEL_CHECK:-0}" = 1 ]; then
  TRITON_INTERPRET=0 timeout 300 python3 -m pytest -q -x -p no:cacheprovider tests/test_kernels_patch_attention.py \
    tests/test_kernels_pool_decode.py -k aligned 2>&1 | tail -n 30 | tee "$dest/kernel_check.log"
  [ "${PIPESTATUS[0]}" = 0 ] || { echo "kernel check failed: no recipe run" | tee -a "$dest/kernel_check.log"; exit 1; }
fi
# the report as it grows (each stage writes it), so that a run cut by an outer limit still says how far it got
( while sleep 10; do cp "$out/report.json" "$dest/video_report.json" 2>/dev/null; done ) &
copier=$!
timeout "${RECIPE_TIMEOUT:-560}" python3 -m nuwa_ds.cli recipe landscape-videos --preset gpu --out "$out" "$@" 2>&1 \
  | tr '\r' '\n' | grep -v 'step/s[],]\|s/step[],]\|it/s\]$\|s/it\]$\|pic/s\]$\|src/s\]$\|clip/s\]$' | tee "$dest/video_recipe.log"
kill "$copier" 2>/dev/null
cp "$out/report.json" "$dest/video_report.json" 2>/dev/null
cp "$out/run/metrics.jsonl" "$dest/video_metrics.jsonl" 2>/dev/null
cp "$out/run/loss_curve.png" "$dest/video_loss_curve.png" 2>/dev/null
cp "$out/overview.gif" "$dest/video_overview.gif" 2>/dev/null
python3 - "$out" "$dest" <<'PY'
import sys
from pathlib import Path
from PIL import Image
out, dest = Path(sys.argv[1]), Path(sys.argv[2])
# text-to-image by guidance scale: the first 8 pictures of each scale in a row
rows = sorted((out / "generated").glob("text2image_cfg*"))
ims = [[Image.open(p).convert("RGB") for p in sorted(r.glob("clip_*/*.png"))[:8]] for r in rows]
ims = [r for r in ims if r]
if ims:
    w, h = ims[0][0].size
    sheet = Image.new("RGB", (8 * w, len(ims) * h), "white")
    for y, row in enumerate(ims):
        for x, im in enumerate(row):
            sheet.paste(im, (x * w, y * h))
    sheet.save(dest / "video_text2image_by_cfg.png")
PY
ls -la "$dest"
