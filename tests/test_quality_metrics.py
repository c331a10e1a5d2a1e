"""SWD over Laplacian-pyramid patches, seam scores, the floor / ceiling report and ``nuwa-ds eval``
without Inception weights. Images are built here: smooth random fields (noise grids at a few scales
upsampled bilinearly, like the 1/f spectrum of photographs), blocky noise and shuffled blocks."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from nuwa_ds.metrics.quality import blocky_noise, format_report, quality_report, shuffle_blocks, split_halves
from nuwa_ds.metrics.seams import SeamStats, boundary_score, seam_scores
from nuwa_ds.metrics.swd import descriptor_counts, laplacian_pyramid, num_levels, swd
from nuwa_ds.metrics.swd import _up


def smooth_field(height, width, seed, octaves=((32, 50.0), (8, 20.0), (2, 4.0))):
    """uint8 [3, H, W]: sum over (cell, amplitude) of a Gaussian grid with one sample per cell,
    upsampled bilinearly by the cell size and cropped at a random offset of 1-2 cells: no clamped
    border, and the grid's phase (bilinear fields are periodic in their statistics) is random, so
    nothing lines up with multiples of the block size."""
    gen = torch.Generator().manual_seed(seed)
    out = torch.zeros(3, height, width)
    for cell, amplitude in octaves:
        low = torch.randn(1, 3, height // cell + 4, width // cell + 4, generator=gen)
        up = F.interpolate(low, scale_factor=cell, mode="bilinear", align_corners=False)[0]
        dy, dx = (cell + torch.randint(0, cell, (2,), generator=gen)).tolist()
        out += amplitude * up[:, dy:dy + height, dx:dx + width]
    return (out + 128).round().clamp(0, 255).to(torch.uint8)


def white_noise(height, width, seed):
    return torch.randint(0, 256, (3, height, width), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def write_folder(folder, images):
    folder.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(images):
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(folder / f"{i:03d}.png")
    return folder


# ---------------------------------------------------------------- SWD

def test_pyramid_levels_and_exact_reconstruction():
    assert num_levels(64, 256) == 3 and num_levels(256, 4096) == 5 and num_levels(15, 400) == 0
    assert num_levels(33, 33) == 2  # 33 -> 17 -> 9: ceil halving, stops below 16
    image = smooth_field(64, 96, 0).float()
    bands = laplacian_pyramid(image, 3)
    assert [tuple(b.shape[1:]) for b in bands] == [(64, 96), (32, 48), (16, 24)]
    # a Laplacian pyramid is invertible: collapse it from the coarsest level
    x = bands[-1]
    for band in reversed(bands[:-1]):
        x = band + _up(x, band.shape[1], band.shape[2])
    torch.testing.assert_close(x, image, atol=1e-3, rtol=0)
    # odd sizes: ceil halving, bands keep the size of their Gaussian level
    assert [tuple(b.shape[1:]) for b in laplacian_pyramid(image[:, :63, :95], 3)] == [(63, 95), (32, 48), (16, 24)]


def test_descriptor_counts_follow_area_and_cap():
    assert descriptor_counts([(256, 256), (256, 4096), (64, 256), (8, 8)]) == [128, 2048, 32, 1]
    capped = descriptor_counts([(256, 4096)] * 10, max_descriptors=4096)
    assert 4096 - 10 < sum(capped) <= 4096 and len(set(capped)) == 1


def test_swd_floor_below_other_distributions_and_seeded():
    real = [smooth_field(64, 256, i) for i in range(24)]
    a, b = real[:12], real[12:]
    kw = dict(descriptors=512)  # 128 descriptors per level from each 64x256 image
    floor = swd(a, b, **kw)
    assert floor["num_levels"] == 3 and len(floor["levels"]) == 3 and floor["samples"] == [1536, 1536]
    noise = swd(a, [white_noise(64, 256, 100 + i) for i in range(12)], **kw)
    blocky = swd(a, [blocky_noise(64, 256, 32, 100 + i) for i in range(12)], **kw)
    assert noise["mean"] > 1.5 * floor["mean"] and blocky["mean"] > 1.5 * floor["mean"]
    # the same images, other descriptor positions: below the floor of distinct images
    assert 0 < swd(a, a, **kw)["mean"] < floor["mean"]
    # seeded: the same inputs and seed give the same number; another seed a slightly different one
    again = swd(a, b, **kw)
    assert again == floor
    other = swd(a, b, seed=1, **kw)
    assert other["mean"] != floor["mean"] and abs(other["mean"] - floor["mean"]) < 0.5 * floor["mean"]
    # any sizes: a 64x512 canvas gives twice the descriptors of a 64x256 one
    wide = swd(a, [smooth_field(64, 512, 50 + i) for i in range(6)], **kw)
    assert wide["samples"] == [1536, 1536] and wide["mean"] < noise["mean"]
    with pytest.raises(ValueError, match="at least 16x16"):
        swd(a, [smooth_field(12, 64, 0)])


# ---------------------------------------------------------------- seams

def test_seams_on_smooth_shuffled_and_stepped_canvases():
    smooth = [smooth_field(128, 512, i) for i in range(8)]
    stats = SeamStats(64)
    for image in smooth:
        stats.add(image)
    s = stats.summary()
    assert all(0.85 < s[k] < 1.15 for k in ("columns", "rows", "both")), s
    assert s["images"] == 8 and s["images_with"]["rows"] == 8

    shuffled = SeamStats(64)
    for i, image in enumerate(smooth):
        shuffled.add(shuffle_blocks(image, 64, np.random.default_rng(i)))
    t = shuffled.summary()
    assert all(t[k] > 1.5 for k in ("columns", "rows", "both")), t
    assert seam_scores(blocky_noise(128, 512, 64, 0), 64)["both"] > 3

    # a hand-made step: columns 0..63 dark, 64.. bright, otherwise flat -> a column seam only
    step = torch.full((3, 128, 128), 50, dtype=torch.uint8)
    step[:, :, 64:] = 150
    scores = seam_scores(step, 64)
    assert scores["columns"] > 1e4 and scores["rows"] == pytest.approx(1.0)
    assert seam_scores(step, 128) == {"columns": None, "rows": None, "both": None}  # no inner boundary
    # outpainting: the boundary before column 64 stands out, the one before column 30 does not
    assert boundary_score(step, column=64) > 1e4 and boundary_score(step, column=30) < 1e-2
    assert boundary_score(step, column=128) is None and boundary_score(step, row=32) == pytest.approx(1.0)
    assert seam_scores(step[:, :64], 64)["rows"] is None  # 64 rows: no row boundary inside


def test_shuffle_blocks_is_a_permutation_of_blocks():
    image = smooth_field(70, 200, 3)  # 1 x 3 blocks of 64 px, remainders kept in place
    out = shuffle_blocks(image, 64, np.random.default_rng(0))
    blocks = lambda x: sorted(x[:, :64, j * 64:(j + 1) * 64].numpy().tobytes() for j in range(3))
    assert blocks(out) == blocks(image) and not torch.equal(out, image)
    assert torch.equal(out[:, 64:], image[:, 64:]) and torch.equal(out[:, :, 192:], image[:, :, 192:])
    assert split_halves(5, 0) == split_halves(5, 0) and sorted(sum(split_halves(5, 0), [])) == list(range(5))


# ---------------------------------------------------------------- floors and ceilings, the command

@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("quality")
    real = write_folder(root / "real", [smooth_field(64, 256, i) for i in range(12)])
    good = write_folder(root / "good", [smooth_field(64, 256, 100 + i) for i in range(6)])
    # a generator with seams: fresh smooth canvases whose 32 px blocks are shuffled
    seamy = write_folder(root / "seamy", [shuffle_blocks(smooth_field(64, 256, 200 + i), 32,
                                                         np.random.default_rng(i)) for i in range(6)])
    recon = write_folder(root / "recon", [(smooth_field(64, 256, i).float() * 0.9 + 12).to(torch.uint8)
                                          for i in range(12)])
    return root, real, good, seamy, recon


def test_report_floors_below_ceilings(folders):
    root, real, good, seamy, recon = folders
    kw = dict(block_size=32, descriptors=512, boundary_columns=[128])
    report = quality_report(real, good, recon=recon, **kw)
    swd_scores, seam_rows = report["swd"]["scores"], report["seams"]["scores"]
    floor = swd_scores["real_a"]["mean"]
    assert swd_scores["blocky_noise"]["mean"] > 1.5 * floor
    assert swd_scores["shuffled_real"]["mean"] > floor
    assert swd_scores["fake"]["mean"] < swd_scores["blocky_noise"]["mean"]
    assert report["swd"]["descriptors_per_level"] == 6 * 128 and report["sets"]["real"]["half_b"] == 6
    # reconstructions named like half-B canvases (the reference) are left out
    assert report["sets"]["recon"]["images"] == 6 and report["sets"]["recon"]["left_out_half_b"] == 6
    assert swd_scores["recon"]["mean"] < swd_scores["shuffled_real"]["mean"]
    assert seam_rows["real"]["both"] < 1.2 and seam_rows["fake"]["both"] < 1.2
    assert seam_rows["shuffled_real"]["both"] > 1.5 and seam_rows["blocky_noise"]["both"] > 3
    assert seam_rows["real"]["boundaries"]["column_128"]["images"] == 12
    assert set(report["seams"]["scores"]) == {"real", "fake", "recon", "shuffled_real", "blocky_noise"}
    # the floor and ceilings do not depend on the fake set (the same streams, the same reference)
    bad = quality_report(real, seamy, **kw)
    for name in ("real_a", "shuffled_real", "blocky_noise"):
        assert bad["swd"]["scores"][name] == swd_scores[name]
    assert bad["seams"]["scores"]["fake"]["both"] > 1.5
    assert any("floor" in line for line in format_report(report))


def test_eval_command_without_inception_weights(folders, capsys):
    from nuwa_ds.cli import main

    root, real, good, seamy, recon = folders
    out = root / "eval" / "quality.json"
    args = ["eval", "--real", str(real), "--fake", str(seamy), "--recon", str(recon), "--block-size", "32",
            "--quiet", "--out", str(out), "--swd-descriptors", "512", "--seed", "3"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    result = json.loads(out.read_text())
    assert result["fid"] is None and "fid_skipped" in result
    q = result["quality"]
    assert q["seed"] == 3 and q["block_size"] == 32 and q["sets"]["fake"]["images"] == 6
    assert set(q["swd"]["scores"]) == {"real_a", "fake", "recon", "shuffled_real", "blocky_noise"}
    assert q["seams"]["scores"]["fake"]["both"] > 1.5
    assert "FID skipped" in printed and "SWD x1e3" in printed and "Seams @32 px" in printed

    # only seams; --seam-block-size wins over --block-size
    assert main(args[:5] + ["--seams", "--seam-block-size", "64", "--quiet", "--out", str(out)]) == 0
    q = json.loads(out.read_text())["quality"]
    assert "swd" not in q and q["seams"]["block_size"] == 64
    # statistics files are for FID only: a clear error, exit code 2
    (root / "stats.npz").write_bytes(b"")
    assert main(["eval", "--real", str(root / "stats.npz"), "--fake", str(seamy), "--swd"]) == 2
    assert "need an image folder" in capsys.readouterr().err
