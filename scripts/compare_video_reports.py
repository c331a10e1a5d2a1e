"""The video recipe's headline figures of several runs side by side (``report.json`` files of
``nuwa-ds recipe landscape-videos``, e.g. the ``report_<name>.json`` of scripts/gpu_video_variants.sh):

    python scripts/compare_video_reports.py base=report_base.json notime=report_notime.json

Prints a Markdown table: training, teacher-forced bits by frame (training length and the whole held-out
clips), per-frame SWD of text-to-video and animation (frames and last / first quarter), jitter, clips within
10% of their own pan, caption attributes."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def _get(d, *keys):
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


def _fmt(v, spec=".2f"):
    if v is None:
        return "-"
    if isinstance(v, list):
        return " ".join(_fmt(x, spec) for x in v)
    return format(v, spec) if isinstance(v, (int, float)) and not isinstance(v, bool) else str(v)


def figures(report: dict) -> dict[str, str]:
    ev = report.get("eval", {})
    tr = report.get("train", {})
    rows = {
        "train steps / s": f"{_fmt(tr.get('steps'), 'd')} / {_fmt(tr.get('seconds'), '.0f')}",
        "val bits (training)": _fmt(tr.get("final_val_bits_per_token")),
        "bits by frame, training length": _fmt(_get(ev, "per_frame_bits", "all")),
        "bits by frame, whole held-out clips": _fmt(_get(ev, "per_frame_bits_long", "all")),
    }
    for name in ("text2video", "animation"):
        fake = _get(ev, name, "swd", "rows", "fake")
        rows[f"{name} SWD by frame"] = _fmt([fake[i] for i in (0, 3, 4, 7, 11, 15) if i < len(fake)], ".0f") \
            if fake else "-"
        rows[f"{name} SWD last / first quarter"] = _fmt(_get(ev, name, "swd", "summary", "fake", "last_over_first"))
        rows[f"{name} SWD last quarter / VQ"] = _fmt(_get(ev, name, "swd", "summary", "fake",
                                                          "last_quarter_over_recon"))
        rows[f"{name} jitter (real)"] = (f"{_fmt(_get(ev, name, 'temporal', 'sets', 'fake', 'jitter'))} "
                                         f"({_fmt(_get(ev, name, 'temporal', 'sets', 'real', 'jitter'), '.3f')})")
    for name, path in (("animation", ("animation", "temporal", "truth", "fake")),
                       ("continuation", ("continuation", "video", "temporal", "truth", "fake"))):
        t = _get(ev, *path)
        rows[f"{name} clips within 10% of own pan"] = f"{t['within_10pct']} / {t['clips_scored']}" if t else "-"
    for attr in ("sky", "sun", "motion"):
        rows[f"text2video {attr}"] = _fmt(_get(ev, "text2video_attributes", "text2video", "per_attribute", attr))
    for attr in ("sky", "sun", "motion"):  # the model's reading by likelihood (teacher-forced, no sampling)
        rows[f"caption likelihood {attr} (chance)"] = (
            f"{_fmt(_get(ev, 'caption_likelihood', attr, 'accuracy'))} "
            f"({_fmt(_get(ev, 'caption_likelihood', attr, 'chance'))})")
    sun = _get(ev, "caption_likelihood", "sun_tokens", "over_the_sun")
    rows["bits over the sun, true / no-sun caption"] = (f"{_fmt(sun['true_caption'])} / {_fmt(sun['no_sun_caption'])}"
                                                        if sun else "-")
    for scale, accs in (_get(ev, "text2image_attributes", "by_cfg_scale") or {}).items():
        rows[f"text2image sky / sun, cfg {scale}"] = (f"{_fmt(_get(accs, 'per_attribute', 'sky'))} / "
                                                      f"{_fmt(_get(accs, 'per_attribute', 'sun'))}")
    return rows


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__)
        return 2
    runs = {}
    for item in argv:
        name, _, path = item.rpartition("=")
        runs[name or Path(path).stem] = figures(json.loads(Path(path).read_text()))
    keys = list(dict.fromkeys(k for r in runs.values() for k in r))
    print("| figure | " + " | ".join(runs) + " |")
    print("| --- |" + " --- |" * len(runs))
    for k in keys:
        print(f"| {k} | " + " | ".join(r.get(k, "-") for r in runs.values()) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
