"""Picture quality without downloaded networks: SWD and seam scores of generated canvases, always
reported beside floors and ceilings measured by the same code on the same reference.

Sets (image folders, any sizes; not recursive):

- ``real``: held-out real canvases, split by a seeded permutation into halves A (``real_a``, the
  first ``n // 2``) and B (``real_b``, the reference of every SWD);
- ``fake``: generated canvases; ``recon`` (optional): e.g. VQ reconstructions of real canvases
  (a file whose stem names a real canvas of half B is left out: it would be compared with its own
  original; the count is reported);
  ``random_tokens`` (optional): e.g. decodes of uniformly random tokens;
- ``shuffled_real``: every canvas of A cut into ``block x block`` blocks (grid from the top-left,
  remainders left in place) reassembled in a random permutation: real content with seams (the
  seam ceiling; SWD barely moves);
- ``blocky_noise``: for every canvas of A a synthetic canvas of the same size whose blocks are
  independent smooth random fields (``blocky_noise``): a ceiling for both metrics.

SWD rows: each set against ``real_b`` with one descriptor count for all rows (the smallest set's),
so every row, ``real_a`` (the floor) included, is comparable. Seam rows: per set (``real`` over all
real canvases is the floor). Python: ``quality_report``; the pure helpers ``shuffle_blocks`` and
``blocky_noise`` make the derived canvases.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F

from nuwa_ds.metrics.images import image_size, list_images, load_image
from nuwa_ds.metrics.seams import SeamStats
from nuwa_ds.metrics.swd import (DescriptorSet, check_settings, descriptor_counts, level_scales, num_levels,
                                 swd_between)

PathLike = Union[str, Path]
_TAG_SPLIT, _TAG_SHUFFLE, _TAG_NOISE = 21, 22, 23
# descriptor-set tags (they key the random streams of each set)
SET_TAGS = {"real_a": 0, "real_b": 1, "fake": 2, "recon": 3, "random_tokens": 4, "shuffled_real": 5,
            "blocky_noise": 6}
ROLES = {"real_a": "floor: real half A vs real half B", "fake": "score", "recon": "reference: reconstructions",
         "random_tokens": "ceiling: random tokens", "shuffled_real": "seam ceiling: real blocks shuffled",
         "blocky_noise": "ceiling: blocky noise"}

__all__ = ["quality_report", "shuffle_blocks", "blocky_noise", "split_halves", "format_report"]


def shuffle_blocks(image: torch.Tensor, block: int, rng: np.random.Generator) -> torch.Tensor:
    """[C, H, W] -> the same image with its full ``block x block`` blocks (grid from the top-left
    corner) in a random permutation (never the identity when there are two or more blocks);
    the right / bottom remainders stay where they are."""
    c, h, w = image.shape
    rows, cols = h // block, w // block
    n = rows * cols
    if n < 2:
        return image.clone()
    perm = rng.permutation(n)
    while np.array_equal(perm, np.arange(n)):
        perm = rng.permutation(n)
    out = image.clone()
    grid = image[:, :rows * block, :cols * block].reshape(c, rows, block, cols, block).permute(1, 3, 0, 2, 4)
    grid = grid.reshape(n, c, block, block)[torch.from_numpy(perm)]
    out[:, :rows * block, :cols * block] = grid.reshape(rows, cols, c, block, block).permute(2, 0, 3, 1, 4).reshape(
        c, rows * block, cols * block)
    return out


def blocky_noise(height: int, width: int, block: int, rng: Union[np.random.Generator, int] = 0) -> torch.Tensor:
    """uint8 [3, height, width]: every ``block x block`` cell (grid from the top-left, the last ones
    cropped) an independent smooth random field: a random mean colour in 40..215 plus a 4x4 Gaussian
    noise grid (sd 40) upsampled bilinearly to the cell. Neighbouring cells are unrelated: seams at
    every boundary, like decodes of random tokens."""
    rng = np.random.default_rng(rng) if not isinstance(rng, np.random.Generator) else rng
    rows, cols = -(-height // block), -(-width // block)
    n = rows * cols
    mean = torch.from_numpy(rng.uniform(40, 215, (n, 3, 1, 1))).float()
    grid = torch.from_numpy(rng.normal(0, 40, (n, 3, 4, 4))).float()
    cells = mean + F.interpolate(grid, size=(block, block), mode="bilinear", align_corners=False)
    canvas = cells.reshape(rows, cols, 3, block, block).permute(2, 0, 3, 1, 4).reshape(3, rows * block, cols * block)
    return canvas[:, :height, :width].round().clamp(0, 255).to(torch.uint8)


def split_halves(count: int, seed: int = 0) -> tuple[list[int], list[int]]:
    """Indices (sorted) of real half A (``count // 2`` images) and half B (the rest), seeded."""
    perm = np.random.default_rng([seed, _TAG_SPLIT]).permutation(count)
    return sorted(perm[:count // 2].tolist()), sorted(perm[count // 2:].tolist())


def _scan(folder: PathLike, role: str, min_images: int) -> tuple[list[Path], list[tuple[int, int]]]:
    folder = Path(folder)
    if folder.suffix == ".npz":
        raise ValueError(f"{role}: SWD and seam scores need an image folder, not a statistics file ({folder})")
    paths = list_images(folder)
    if len(paths) < min_images:
        raise ValueError(f"{role} folder {folder} holds {len(paths)} image(s); SWD / seams need at least {min_images}")
    return paths, [image_size(p) for p in paths]


def quality_report(real: PathLike, fake: PathLike, *, recon: Optional[PathLike] = None,
                   random_tokens: Optional[PathLike] = None, block_size: int = 64, swd: bool = True,
                   seams: bool = True, seed: int = 0, descriptors: int = 128, descriptor_area: int = 256 * 256,
                   min_size: int = 16, dir_repeats: int = 4, dirs_per_repeat: int = 128,
                   max_descriptors: Optional[int] = 65536, boundary_columns: Sequence[int] = (),
                   boundary_rows: Sequence[int] = (), progress: bool = False) -> dict:
    """SWD (x 1e3, vs real half B) and seam scores of ``fake`` beside the floor (real vs real), the
    ceilings (shuffled real blocks, blocky noise, ``random_tokens`` when given) and ``recon`` when
    given. Every input is checked (file headers only) before any image is decoded. Returns a
    JSON-ready dict: ``swd`` (per set: ``levels``, ``mean``), ``seams`` (per set: ``columns``,
    ``rows``, ``both``, boundary scores), sample counts, settings and the seed."""
    if not (swd or seams):
        raise ValueError("nothing to compute: enable swd and/or seams")
    if not isinstance(block_size, int) or block_size < 2:
        raise ValueError(f"block size must be an integer >= 2 (pixels), got {block_size!r}")
    check_settings(descriptors, descriptor_area, min_size, dir_repeats, dirs_per_repeat, max_descriptors)
    folders = {"real": real, "fake": fake, "recon": recon, "random_tokens": random_tokens}
    folders = {role: Path(f) for role, f in folders.items() if f is not None}
    scanned = {role: _scan(f, role, 2 if role == "real" else 1) for role, f in folders.items()}
    half_a, half_b = split_halves(len(scanned["real"][0]), seed)
    in_a = set(half_a)
    recon_left_out = 0
    if "recon" in scanned:  # a reconstruction of a half-B canvas would be compared with its own original
        real_stems = {p.stem: i for i, p in enumerate(scanned["real"][0])}
        keep = [k for k, p in enumerate(scanned["recon"][0]) if real_stems.get(p.stem, half_a[0]) in in_a]
        recon_left_out = len(scanned["recon"][0]) - len(keep)
        if not keep:
            raise ValueError(f"recon folder {folders['recon']}: every image is named like a real canvas of half B "
                             f"(the SWD reference); give reconstructions of more real canvases")
        scanned["recon"] = tuple([x[k] for k in keep] for x in scanned["recon"])

    levels = None
    if swd:
        for role, (paths, sizes) in scanned.items():
            for path, (h, w) in zip(paths, sizes):
                if num_levels(h, w, min_size) < 1:
                    raise ValueError(f"{role} image {path} is {h}x{w} px; SWD needs at least {min_size}x{min_size}")
        levels = min(num_levels(h, w, min_size) for _, sizes in scanned.values() for h, w in sizes)

    real_sizes = scanned["real"][1]
    set_sizes = {"real_a": [real_sizes[i] for i in half_a], "real_b": [real_sizes[i] for i in half_b]}
    set_sizes["shuffled_real"] = set_sizes["blocky_noise"] = set_sizes["real_a"]
    for role in ("fake", "recon", "random_tokens"):
        if role in scanned:
            set_sizes[role] = scanned[role][1]
    counts = {name: descriptor_counts(s, descriptors, descriptor_area, max_descriptors)
              for name, s in set_sizes.items()}
    desc = {name: DescriptorSet(levels, seed=seed, tag=SET_TAGS[name]) for name in set_sizes} if swd else {}
    seam_sets = {name: SeamStats(block_size, boundary_columns, boundary_rows)
                 for name in ("real", "fake", "recon", "random_tokens", "shuffled_real", "blocky_noise")
                 if name in scanned or name in ("shuffled_real", "blocky_noise")} if seams else {}

    def add(name: str, image: torch.Tensor, index: int, count: Optional[int], seam_name: Optional[str] = None) -> None:
        if swd:
            desc[name].add(image, count, index)
        if seams and seam_name:
            seam_sets[seam_name].add(image)

    start = time.perf_counter()
    position = {"real_a": {i: k for k, i in enumerate(half_a)}, "real_b": {i: k for k, i in enumerate(half_b)}}
    for index, path in enumerate(_progress(scanned["real"][0], "real", progress)):
        image = load_image(path)
        if index in in_a:
            k = position["real_a"][index]
            add("real_a", image, k, counts["real_a"][k], "real")
            shuffled = shuffle_blocks(image, block_size, np.random.default_rng([seed, _TAG_SHUFFLE, index]))
            add("shuffled_real", shuffled, k, counts["shuffled_real"][k], "shuffled_real")
            h, w = image.shape[1:]
            noise = blocky_noise(h, w, block_size, np.random.default_rng([seed, _TAG_NOISE, index]))
            add("blocky_noise", noise, k, counts["blocky_noise"][k], "blocky_noise")
        else:
            k = position["real_b"][index]
            add("real_b", image, k, counts["real_b"][k], "real")
    for role in ("fake", "recon", "random_tokens"):
        if role in scanned:
            for index, path in enumerate(_progress(scanned[role][0], role, progress)):
                add(role, load_image(path), index, counts[role][index], role)
    images_s = time.perf_counter() - start

    result = {"seed": seed, "block_size": block_size,
              "sets": {role: {"path": str(folders[role]), "images": len(scanned[role][0])} for role in scanned}}
    result["sets"]["real"].update(half_a=len(half_a), half_b=len(half_b))
    if "recon" in scanned:
        result["sets"]["recon"]["left_out_half_b"] = recon_left_out
    result["sets"]["shuffled_real"] = {"from": "real half A", "images": len(half_a)}
    result["sets"]["blocky_noise"] = {"from": "sizes of real half A", "images": len(half_a)}
    if swd:
        compared = [name for name in ("real_a", "fake", "recon", "random_tokens", "shuffled_real", "blocky_noise")
                    if name in desc]
        n = min(len(desc[name]) for name in compared + ["real_b"])
        scores = {name: swd_between(desc[name], desc["real_b"], count=n, dir_repeats=dir_repeats,
                                    dirs_per_repeat=dirs_per_repeat, seed=seed) for name in compared}
        for score in scores.values():
            del score["descriptors"]  # one count for every row, stated once below
        result["swd"] = {"reference": "real_b", "scale": 1e3, "levels": levels, "level_scales": level_scales(levels),
                         "descriptors_per_level": n, "scores": scores,
                         "roles": {name: ROLES[name] for name in compared},
                         "descriptors_available": {name: len(d) for name, d in desc.items()},
                         "settings": {"descriptors": descriptors, "descriptor_area": descriptor_area,
                                      "min_size": min_size, "dir_repeats": dir_repeats,
                                      "dirs_per_repeat": dirs_per_repeat, "max_descriptors": max_descriptors}}
    if seams:
        result["seams"] = {"block_size": block_size, "scores": {name: s.summary() for name, s in seam_sets.items()},
                           "roles": {"real": "floor: real canvases", "fake": "score",
                                     "recon": "reference: reconstructions", "random_tokens": "ceiling: random tokens",
                                     "shuffled_real": ROLES["shuffled_real"], "blocky_noise": ROLES["blocky_noise"]}}
        result["seams"]["roles"] = {k: v for k, v in result["seams"]["roles"].items() if k in seam_sets}
        if boundary_columns or boundary_rows:
            result["seams"]["boundary_lines"] = {"columns": list(boundary_columns), "rows": list(boundary_rows)}
    result["seconds"] = {"images": round(images_s, 3), "total": round(time.perf_counter() - start, 3)}
    return result


def _progress(paths, name, enabled):
    if not enabled:
        return paths
    from tqdm import tqdm

    return tqdm(paths, desc=f"swd/seams {name}", unit="img", file=sys.stderr)


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.4f}"


def format_report(quality: dict) -> list[str]:
    """The printed table: every score beside its floor and ceilings."""
    lines = []
    if "swd" in quality:
        s = quality["swd"]
        lines.append(f"SWD x1e3 vs real half B ({s['descriptors_per_level']} descriptors per level and set, "
                     f"levels {' '.join(s['level_scales'])}, seed {quality['seed']}):")
        for name, score in s["scores"].items():
            per_level = " ".join(f"{v:.2f}" for v in score["levels"])
            lines.append(f"  {name:<14} mean {score['mean']:9.3f}  [{per_level}]  {s['roles'][name]}")
    if "seams" in quality:
        s = quality["seams"]
        lines.append(f"Seams @{s['block_size']} px (boundary / interior gradient; 1.0 = none):")
        for name, score in s["scores"].items():
            extra = ""
            for key, b in score.get("boundaries", {}).items():
                extra += f"  {key.replace('_', ' ')}: {_fmt(b['score'])}"
            lines.append(f"  {name:<14} columns {_fmt(score['columns'])}  rows {_fmt(score['rows'])}  "
                         f"both {_fmt(score['both'])}  ({score['images']} images){extra}  {s['roles'][name]}")
    return lines
