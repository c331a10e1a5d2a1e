"""``nuwa-ds eval``: FID and Block-FID between two image folders, with the FID Inception weights
from a local file in the pytorch-fid format (FID_WEIGHTS_URL).

    nuwa-ds eval --real REAL_DIR --fake FAKE_DIR --inception-weights pt_inception-2015-12-05-6726825d.pth \\
        [--block-size 256] [--batch-size 50] [--device auto] [--workers 4] [--out eval.json]

Each folder is decoded once; whole images (resized to 299x299 as pytorch-fid does) feed the FID
statistics and, with ``--block-size``, the non-overlapping blocks of each image feed the Block-FID
statistics (definition: ``nuwa_ds.metrics.images`` and docs/decisions.md). ``--real`` / ``--fake`` may
also be a statistics ``.npz`` (pytorch-fid's ``mu``/``sigma``, or one written by ``--save-stats``), so
a reference set is featurised once. Python: ``compute_fid``, ``compute_block_fid``, ``evaluate``.

Without ``--inception-weights`` (or with ``--swd`` / ``--seams``) the metrics that need no downloaded
network run on CPU: multi-scale sliced Wasserstein distance and seam scores, each beside its floor
(real vs real) and ceilings (shuffled real blocks, blocky noise, ``--random-tokens``), with ``--recon``
reported beside them (``nuwa_ds.metrics.quality``):

    nuwa-ds eval --real REAL --fake FAKE [--recon RECON] [--block-size 64] [--swd] [--seams] [--out eval.json]

With ``--video`` the folders hold clips (``.gif`` / ``.mp4`` / ``.webm`` files or sub-folders of frame
pictures): per-frame SWD by frame index against real half B pooled and temporal consistency (phase
correlation shifts, jitter, frame differences), each beside its floors and ceilings
(``nuwa_ds.metrics.video``):

    nuwa-ds eval --video --real REAL --fake FAKE [--recon DIR] [--random-tokens DIR] [--paired] [--out eval.json]
"""

from __future__ import annotations

import json
import os
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional, Union

import numpy as np
import torch

from nuwa_ds.config_base import ConfigBase, cli
from nuwa_ds.metrics.fid import FeatureStats, frechet_distance
from nuwa_ds.metrics.images import ImageFolder, cut_blocks, scan_folder
from nuwa_ds.metrics.inception import (FEATURE_DIM, FID_WEIGHTS_SHA256_PREFIX, FIDInceptionV3, file_sha256,
                                       load_fid_inception, read_state_dict)
from nuwa_ds.metrics.quality import format_report, quality_report
from nuwa_ds.metrics.video import format_video_report, video_report

PathLike = Union[str, Path]
# below this many samples the 2048-d covariance is rank deficient and FID is strongly biased upward
RELIABLE_SAMPLES = FEATURE_DIM

__all__ = ["compute_fid", "compute_block_fid", "evaluate", "folder_statistics", "add_arguments", "run"]


def resolve_device(device: Optional[Union[str, torch.device]]) -> torch.device:
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device} requested but CUDA is not available")
    return device


class _FeatureSink:
    """Collects preprocessed [n, 3, 299, 299] inputs, runs the network per ``batch_size`` rows and
    merges the features into one FeatureStats."""

    def __init__(self, network: FIDInceptionV3, batch_size: int):
        self.network, self.batch_size = network, batch_size
        self.stats = FeatureStats(FEATURE_DIM)
        self.pending: list[torch.Tensor] = []
        self.rows = 0

    def add(self, images: torch.Tensor) -> None:
        """uint8 [n, 3, H, W] (all one size). Resized in chunks so a canvas of thousands of blocks
        never exists as float at full size all at once."""
        for chunk in images.split(self.batch_size):
            x = FIDInceptionV3.preprocess(chunk.float() / 255.0)  # [n, 3, 299, 299] in [-1, 1]
            self.pending.append(x)
            self.rows += x.shape[0]
            while self.rows >= self.batch_size:
                self._run(self.batch_size)

    def flush(self) -> FeatureStats:
        if self.rows:
            self._run(self.rows)
        return self.stats

    def _run(self, n: int) -> None:
        batch = torch.cat(self.pending)
        self.pending = [batch[n:]] if batch.shape[0] > n else []
        self.rows = batch.shape[0] - n
        self.stats.update(self.network.features(batch[:n]))  # [n, 2048]


def folder_statistics(folder: PathLike, network: FIDInceptionV3, *, block_size: Optional[int] = None,
                      batch_size: int = 50, num_workers: int = 0, progress: bool = False,
                      ) -> dict[str, FeatureStats]:
    """One pass over ``folder``: ``{"fid": stats}`` of whole images and, with ``block_size``,
    ``{"block_fid": stats}`` of their blocks. ``network`` is on the device to compute on."""
    from tqdm import tqdm

    paths, _ = scan_folder(folder, None)
    device = next(network.parameters()).device
    sinks = {"fid": _FeatureSink(network, batch_size)}
    if block_size is not None:
        sinks["block_fid"] = _FeatureSink(network, batch_size)
    loader = torch.utils.data.DataLoader(ImageFolder(paths), batch_size=None, num_workers=num_workers,
                                         pin_memory=device.type == "cuda")
    # fp32 convolutions (no TF32): FID values must not depend on the GPU generation
    with torch.inference_mode(), torch.backends.cudnn.flags(enabled=True, benchmark=True, allow_tf32=False):
        for image in tqdm(loader, total=len(paths), desc=f"features {Path(folder).name}", unit="img",
                          disable=not progress, file=sys.stderr):
            image = image.to(device, non_blocking=True)  # uint8 [3, H, W]
            sinks["fid"].add(image[None])
            if block_size is not None:
                sinks["block_fid"].add(cut_blocks(image, block_size))  # [blocks, 3, b, b]
        return {name: sink.flush() for name, sink in sinks.items()}


# ----------------------------------------------------------------------------- statistics files

def save_statistics(stats: dict[str, FeatureStats], path: PathLike, block_size: Optional[int]) -> None:
    """One .npz: pytorch-fid's ``mu``/``sigma`` (+ ``count``, ``rows``), and ``block_*`` with Block-FID."""
    arrays = stats["fid"].arrays()
    if "block_fid" in stats:
        arrays.update(stats["block_fid"].arrays(prefix="block_"), block_size=np.int64(block_size))
    np.savez(path, **arrays)


def load_statistics(path: Path, block_size: Optional[int]) -> dict[str, FeatureStats]:
    with np.load(path) as data:
        stats = {"fid": FeatureStats.from_arrays(data, source=str(path))}
        if block_size is not None:
            stored = int(data["block_size"]) if "block_size" in data else None
            if stored != block_size:
                raise ValueError(f"{path} holds no Block-FID statistics for {block_size}px blocks "
                                 f"(stored: {stored}); compute them from the image folder")
            stats["block_fid"] = FeatureStats.from_arrays(data, prefix="block_", source=str(path))
    return stats


# ----------------------------------------------------------------------------- the evaluation

def _check_source(source: Path, block_size: Optional[int], role: str) -> tuple[dict, Optional[dict]]:
    """Validate one side before any network is built: a statistics file is read at once (small);
    a folder is counted from file headers only. Returns (info, statistics or None)."""
    if source.suffix == ".npz":
        if not source.is_file():
            raise FileNotFoundError(f"{role} statistics file not found: {source}")
        return {"path": str(source), "statistics_file": True}, load_statistics(source, block_size)
    paths, blocks = scan_folder(source, block_size)
    if len(paths) < 2:
        raise ValueError(f"{role} folder {source} holds {len(paths)} image(s); FID needs at least 2")
    if block_size is not None and blocks < 2:
        raise ValueError(f"{role} folder {source} yields {blocks} block(s) of {block_size}x{block_size} px; "
                         f"Block-FID needs at least 2 (images smaller than a block contribute none)")
    info = {"path": str(source), "images": len(paths)}
    if block_size is not None:
        info["blocks"] = blocks
    return info, None


def _check_options(block_size, batch_size, num_workers, method) -> None:
    if block_size is not None and (not isinstance(block_size, int) or block_size < 1):
        raise ValueError(f"block size must be a positive integer (pixels), got {block_size!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch size must be a positive integer, got {batch_size!r}")
    if not isinstance(num_workers, int) or num_workers < 0:
        raise ValueError(f"workers must be a non-negative integer, got {num_workers!r}")
    if method not in ("eigh", "sqrtm"):
        raise ValueError(f"unknown FID method {method!r}; choose 'eigh' or 'sqrtm'")


def _network(weights: Union[PathLike, FIDInceptionV3], device: torch.device) -> tuple[FIDInceptionV3, dict]:
    if isinstance(weights, FIDInceptionV3):
        return weights.to(device, memory_format=torch.channels_last), {"path": None}
    path = Path(weights)
    sha = file_sha256(path)
    network = load_fid_inception(path, device)
    return network, {"path": str(path), "sha256": sha,
                     "pytorch_fid_file": sha.startswith(FID_WEIGHTS_SHA256_PREFIX)}


def evaluate(real: PathLike, fake: PathLike, weights: Union[PathLike, FIDInceptionV3], *,
             block_size: Optional[int] = None, batch_size: int = 50, device=None, num_workers: int = 0,
             method: str = "eigh", progress: bool = False, save_stats: Optional[PathLike] = None) -> dict:
    """FID (and Block-FID with ``block_size``) between ``real`` and ``fake``: image folders or
    statistics ``.npz`` files. Every input is checked before the network is built. Returns a dict
    with ``fid``, ``block_fid`` (or None) and what was measured."""
    _check_options(block_size, batch_size, num_workers, method)
    device = resolve_device(device)
    if not isinstance(weights, FIDInceptionV3) and not Path(weights).is_file():
        read_state_dict(weights)  # raises FileNotFoundError naming the file and the download URL
    sources = {"real": Path(real), "fake": Path(fake)}
    info, stats = {}, {}
    for role, path in sources.items():
        info[role], stats[role] = _check_source(path, block_size, role)
    needs_network = any(s is None for s in stats.values())  # two statistics files: no features to compute
    if needs_network:
        network, weights_info = _network(weights, device)
    else:
        network, weights_info = None, {"path": None if isinstance(weights, FIDInceptionV3) else str(weights)}

    start = time.perf_counter()
    for role, path in sources.items():
        if stats[role] is None:
            stats[role] = folder_statistics(path, network, block_size=block_size, batch_size=batch_size,
                                            num_workers=num_workers, progress=progress)
            if save_stats is not None:
                Path(save_stats).mkdir(parents=True, exist_ok=True)
                save_statistics(stats[role], Path(save_stats) / f"{role}.npz", block_size)
    features_s = time.perf_counter() - start
    result = {"fid": frechet_distance(stats["real"]["fid"], stats["fake"]["fid"], method)}
    result["block_fid"] = (frechet_distance(stats["real"]["block_fid"], stats["fake"]["block_fid"], method)
                           if block_size is not None else None)
    notes = []
    for role in sources:
        for metric, metric_stats in stats[role].items():
            count = metric_stats.count if metric_stats.count_known else None  # None: pytorch-fid file
            info[role][f"{metric}_samples"] = count
            if count is not None and count < RELIABLE_SAMPLES:
                notes.append(f"{role} {metric.replace('_', '-')}: {count} samples; fewer than {RELIABLE_SAMPLES} "
                             f"bias FID upward, compare only scores computed from equal sample counts")
    for note in notes:
        warnings.warn(note)
    result.update(warnings=notes, block_size=block_size, real=info["real"], fake=info["fake"], weights=weights_info,
                  method=method, device=str(device), batch_size=batch_size,
                  seconds={"features": round(features_s, 3),
                           "frechet": round(time.perf_counter() - start - features_s, 3)})
    return result


def compute_fid(folder_a: PathLike, folder_b: PathLike, weights: Union[PathLike, FIDInceptionV3], *,
                batch_size: int = 50, device=None, num_workers: int = 0, method: str = "eigh") -> float:
    """FID between two image folders (or statistics files); ``weights`` is the pytorch-fid weights
    file or an already loaded FIDInceptionV3 (to reuse it across calls)."""
    return evaluate(folder_a, folder_b, weights, batch_size=batch_size, device=device,
                    num_workers=num_workers, method=method)["fid"]


def compute_block_fid(folder_a: PathLike, folder_b: PathLike, weights: Union[PathLike, FIDInceptionV3], *,
                      block_size: int = 256, batch_size: int = 50, device=None, num_workers: int = 0,
                      method: str = "eigh") -> float:
    """Block-FID: FID over the non-overlapping ``block_size`` px blocks of every image (remainders
    dropped; see nuwa_ds.metrics.images)."""
    return evaluate(folder_a, folder_b, weights, block_size=block_size, batch_size=batch_size, device=device,
                    num_workers=num_workers, method=method)["block_fid"]


# ----------------------------------------------------------------------------- command line

@dataclass
class QualityOptions(ConfigBase):
    """SWD and seam scores: no downloaded network, CPU."""

    swd: bool = False
    """Multi-scale sliced Wasserstein distance (x1e3) vs real half B, beside the floor and ceilings
    (default when no --inception-weights)."""
    seams: bool = False
    """Seam scores at patch boundaries (default when no --inception-weights)."""
    recon: Optional[str] = field(default=None, metadata=cli(metavar="DIR"))
    """Reconstructions of real canvases (e.g. VQ encode/decode), reported beside the score."""
    random_tokens: Optional[str] = field(default=None, metadata=cli(metavar="DIR"))
    """Decodes of random tokens: a ceiling."""
    seam_block_size: Optional[int] = field(default=None, metadata=cli(metavar="PX"))
    """Patch size in pixels for seams and shuffled blocks (default: --block-size, else 64)."""
    boundary_column: list[int] = field(default_factory=list, metadata=cli(append=True, metavar="X"))
    """Outpainting: score the boundary before column X (repeatable)."""
    boundary_row: list[int] = field(default_factory=list, metadata=cli(append=True, metavar="Y"))
    """Outpainting: score the boundary before row Y (repeatable)."""
    seed: int = 0
    """Seed of the split, descriptors and directions."""
    swd_descriptors: int = field(default=128, metadata=cli(metavar="N"))
    """Descriptors per level per 256x256 px of image area."""
    swd_max_descriptors: int = field(default=65536, metadata=cli(metavar="N"))
    """At most N descriptors per level and set (~600 bytes each)."""


@dataclass
class VideoOptions(ConfigBase):
    """Per-frame SWD by frame index and temporal consistency of clips: CPU."""

    video: bool = False
    """--real / --fake (/ --recon / --random-tokens) are folders of clips (.gif/.mp4/.webm files or
    sub-folders of frames): per-frame SWD vs real half B and temporal consistency, beside floors and
    ceilings (nuwa_ds.metrics.video)."""
    paired: bool = False
    """Video: fake clip i continues / animates real clip i (sorted order): per-clip shift error and
    whether the first frame was kept."""
    video_descriptors: int = field(default=2048, metadata=cli(metavar="N"))
    """Video: SWD descriptors per level, frame index and set."""
    true_dx: Optional[float] = field(default=None, metadata=cli(metavar="PX"))
    """Video: the real clips' true content shift in px/frame, one for all (a camera panning right by p
    gives -p), when known: speeds are also compared with it."""


@dataclass
class EvalCommand(ConfigBase):
    """Everything ``nuwa-ds eval`` is told; its flags are generated from these fields."""

    real: str
    """Folder of reference images (PNG/JPG/..., any sizes; not recursive) or, for FID only, a
    statistics .npz."""
    fake: str
    """Folder of generated images, or (FID only) a statistics .npz."""
    inception_weights: Optional[str] = field(default=None, metadata=cli(metavar="FILE"))
    """Local pytorch-fid Inception weights (pt_inception-2015-12-05-6726825d.pth, or the same tensors as
    .safetensors); without it FID is skipped and SWD + seam scores run."""
    block_size: Optional[int] = field(default=None, metadata=cli(metavar="PX"))
    """Also compute Block-FID over non-overlapping PX x PX blocks (e.g. 256); also the patch size for seam
    scores and shuffled blocks unless --seam-block-size is given."""
    batch_size: int = 50
    """Network batch size."""
    device: str = "auto"
    """auto (cuda if available), cpu, cuda, cuda:1, ..."""
    workers: int = 0
    """Image decoding processes (0: in-process)."""
    fid_method: Literal["eigh", "sqrtm"] = "eigh"
    """Trace term: exact symmetric eigenvalues (default) or scipy sqrtm as pytorch-fid."""
    save_stats: Optional[str] = field(default=None, metadata=cli(metavar="DIR"))
    """Write real.npz / fake.npz feature statistics, reusable as --real / --fake."""
    quality: QualityOptions = field(default_factory=QualityOptions, metadata=cli(
        group="quality without downloaded networks (SWD, seams; CPU)"))
    clips: VideoOptions = field(default_factory=VideoOptions, metadata=cli(
        group="video (per-frame SWD by frame index, temporal consistency; CPU)"))
    out: Optional[str] = field(default=None, metadata=cli(metavar="JSON"))
    """Write the results as JSON."""
    quiet: bool = False
    """No progress bars."""


def add_arguments(parser) -> None:
    EvalCommand.add_flags(parser)


def _run_video(c: EvalCommand) -> dict:
    if c.inception_weights or c.quality.swd or c.quality.seams or c.save_stats:
        raise ValueError("--video runs the video metrics only; leave out --inception-weights / --swd / --seams / "
                         "--save-stats (run eval on picture folders for those)")
    result = {"video": video_report(c.real, c.fake, recon=c.quality.recon, random_tokens=c.quality.random_tokens,
                                    paired=c.clips.paired, seed=c.quality.seed, descriptors=c.clips.video_descriptors,
                                    true_dx=c.clips.true_dx)}
    for line in format_video_report(result["video"]):
        print(line)
    return result


def _write_json(result: dict, path: str) -> None:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(tmp, out)  # atomic: a reader never sees half a file
    print(f"wrote {out}")


def run(args) -> int:
    c = EvalCommand.from_args(args)
    q = c.quality
    if c.clips.video:
        result = _run_video(c)
        if c.out:
            _write_json(result, c.out)
        return 0
    if c.clips.paired or c.clips.true_dx is not None:
        raise ValueError("--paired / --true-dx are for --video")
    fid = c.inception_weights is not None
    explicit = q.swd or q.seams
    do_swd, do_seams = (q.swd, q.seams) if explicit else (not fid, not fid)
    seam_block = q.seam_block_size or c.block_size or 64
    if do_swd or do_seams:  # fail before FID's features are computed
        for role in ("real", "fake"):
            if Path(getattr(c, role)).suffix == ".npz":
                raise ValueError(f"--{role}: SWD and seam scores need an image folder, not a statistics file")
    elif q.recon or q.random_tokens:
        raise ValueError("--recon / --random-tokens are for --swd / --seams")
    if not fid and c.save_stats:
        raise ValueError("--save-stats writes Inception statistics: give --inception-weights")
    if fid:
        with warnings.catch_warnings(record=True) as caught:  # shown below as plain "warning:" lines
            warnings.simplefilter("always")
            result = evaluate(c.real, c.fake, c.inception_weights, block_size=c.block_size,
                              batch_size=c.batch_size, device=c.device, num_workers=c.workers,
                              method=c.fid_method, progress=not c.quiet, save_stats=c.save_stats)
        for warning in caught:
            print(f"warning: {warning.message}", file=sys.stderr)
        _print_fid(result)
    else:
        result = {"fid": None, "block_fid": None, "fid_skipped": "no --inception-weights given"}
        print("FID skipped (no --inception-weights)")
    if do_swd or do_seams:
        result["quality"] = quality_report(
            c.real, c.fake, recon=q.recon, random_tokens=q.random_tokens, block_size=seam_block,
            swd=do_swd, seams=do_seams, seed=q.seed, descriptors=q.swd_descriptors,
            max_descriptors=q.swd_max_descriptors, boundary_columns=q.boundary_column,
            boundary_rows=q.boundary_row, progress=not c.quiet)
        for line in format_report(result["quality"]):
            print(line)
    if c.out:
        _write_json(result, c.out)
    return 0


def _counted(role: str, count: Optional[int], unit: str) -> str:
    """``real 5000 images``, or the count said to be unknown (a pytorch-fid statistics file records none)."""
    if count is None:
        return f"{role}: number of {unit}s unknown (pytorch-fid statistics file)"
    return f"{role} {count} {unit}s"


def _print_fid(result: dict) -> None:
    real, fake = result["real"], result["fake"]
    print(f"FID {result['fid']:.4f}  ({_counted('real', real['fid_samples'], 'image')}, "
          f"{_counted('fake', fake['fid_samples'], 'image')})")
    if result["block_fid"] is not None:
        print(f"Block-FID@{result['block_size']} {result['block_fid']:.4f}  "
              f"({_counted('real', real['block_fid_samples'], 'block')}, "
              f"{_counted('fake', fake['block_fid_samples'], 'block')})")
    weights = result["weights"]
    if weights.get("sha256") and not weights["pytorch_fid_file"]:
        print(f"note: {weights['path']} has sha256 {weights['sha256'][:8]}..., not the pytorch-fid file "
              f"({FID_WEIGHTS_SHA256_PREFIX}...): compare these scores only with scores from the same weights",
              file=sys.stderr)
