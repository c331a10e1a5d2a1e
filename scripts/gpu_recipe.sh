#!/usr/bin/env bash
# The landscape recipe on a GPU machine, with its log and figures copied to $OUT (device runs).
# Usage: bash scripts/gpu_recipe.sh [--set key=value ...]
set -uo pipefail
out=${RECIPE_OUT:-/tmp/recipe}
mkdir -p "${OUT:-/tmp/out}"
timeout "${RECIPE_TIMEOUT:-560}" python3 -m nuwa_ds.cli recipe landscapes --preset gpu --out "$out" "$@" 2>&1 \
  | tr '\r' '\n' | grep -v 'it/s\]$\|s/it\]$\|pic/s\]$\|src/s\]$' | tee "${OUT:-/tmp/out}/recipe.log"
cp "$out/report.json" "${OUT:-/tmp/out}/" 2>/dev/null
cp "$out/run/metrics.jsonl" "$out/run/loss_curve.png" "${OUT:-/tmp/out}/" 2>/dev/null
python3 - "$out" "${OUT:-/tmp/out}" <<'PY'
import sys
from pathlib import Path
from PIL import Image
out, dest = Path(sys.argv[1]), Path(sys.argv[2])
def sheet(paths, name, width=2048):
    ims = [Image.open(p).convert("RGB") for p in paths if p.exists()]
    if not ims:
        return
    ims = [im.resize((width, round(im.height * width / im.width))) for im in ims]
    canvas = Image.new("RGB", (width, sum(im.height for im in ims)))
    y = 0
    for im in ims:
        canvas.paste(im, (0, y)); y += im.height
    canvas.save(dest / name)
g, r = out / "generated", out / "real"
sheet([g / "panorama" / f"panorama_{i:05d}.png" for i in range(3)] + [r / "panorama" / "panorama_00000.png"], "panoramas.png")
sheet([g / "view" / f"view_{i:05d}.png" for i in range(2)] + [r / "view" / "view_00000.png"], "views.png", 1024)
sheet([g / f"outpaint_{d}" / f"outpaint_{d}_00000.png" for d in ("right", "left")] + [r / "outpaint_right" / "outpaint_right_00000.png"], "outpaint_lr.png", 768)
sheet([out / "tokenizer" / "reconstruction.png"], "tokenizer.png", 1024)
PY
ls -la "${OUT:-/tmp/out}"
