"""The procedural landscape world: seeded, continuous in x and y (a window of a large render equals
the small render bitwise), structured (sky above, water below), fast; the ``nuwa-ds landscapes`` CLI
(files + manifest, disjoint train / val world seeds, clear errors)."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from PIL import Image

from data_pipelines.landscapes import (HORIZON_MAX, HORIZON_MIN, MANIFEST_FILE, VIEW_HEIGHT, World, parse_size,
                                       write_dataset)
from nuwa_ds.cli import main


def test_seeded():
    a, b = World(7).render(-100, 200, 96, 64), World(7).render(-100, 200, 96, 64)
    assert a.dtype == np.uint8 and a.shape == (64, 96, 3)
    assert np.array_equal(a, b)
    c = World(8).render(-100, 200, 96, 64)
    assert not np.array_equal(a, c)
    assert np.abs(a.astype(int) - c).mean() > 2


@pytest.mark.parametrize("seed", [0, 3, 11])
def test_continuity_in_x_and_y(seed):
    world = World(seed)
    X0, Y0, W, H = -600, 350, 1100, 800  # crosses x = 0, the horizon, and y = VIEW_HEIGHT
    big = world.render(X0, Y0, W, H)
    windows = [(-300, 600, 256, 256), (-600, 350, 7, 800), (-1, world.horizon - 3, 50, 9),
               (200, VIEW_HEIGHT - 40, 300, 80), (0, 350, 500, 1), (499, 1149, 1, 1), (-37, 500, 333, 555)]
    for x0, y0, w, h in windows:
        small = world.render(x0, y0, w, h)
        ref = big[y0 - Y0:y0 - Y0 + h, x0 - X0:x0 - X0 + w]
        assert small.shape == ref.shape
        assert np.array_equal(small, ref), (x0, y0, w, h, np.abs(small.astype(int) - ref).max())


def test_continuity_far_away():
    world = World(4)
    big = world.render(10**9 - 50, -3000, 120, 60)
    assert np.array_equal(world.render(10**9, -2980, 40, 20), big[20:40, 50:90])
    big = world.render(-(10**9), 5000, 70, 30)
    assert np.array_equal(world.render(-(10**9) + 10, 5010, 30, 10), big[10:20, 10:40])


def test_structure():
    for seed in range(4):
        world = World(seed)
        assert HORIZON_MIN <= world.horizon <= HORIZON_MAX
        view = world.render(0, 0, 512, VIEW_HEIGHT).astype(np.float32)
        assert np.isfinite(view).all()
        assert view.std() > 8 and view.max() - view.min() > 50  # night worlds are dark but not flat
        rows = view.mean(axis=(1, 2))
        top, bottom = view[:150].mean(axis=(0, 1)), view[-150:].mean(axis=(0, 1))
        assert np.abs(top - bottom).sum() > 6  # sky and water differ
        assert len(np.unique(rows.round())) > 20  # not constant along y
        assert view[:, :, :].std(axis=1).mean() > 1  # not constant along x
    # one or more suns in a wide panorama
    assert len(World(0).suns(0, 4096)) >= 1


def test_render_speed_and_errors():
    world = World(1)
    world.render(0, 384, 256, 256)
    t = time.perf_counter()
    world.render(1234, 384, 256, 256)
    assert time.perf_counter() - t < 0.5  # ~10 ms on one core; generous for a busy machine
    with pytest.raises(ValueError):
        world.render(0, 0, 0, 10)
    with pytest.raises(ValueError):
        world.render(0, 0, 10, -1)
    with pytest.raises(ValueError):
        world.render(0.5, 0, 10, 10)
    assert parse_size("4096x256") == (4096, 256)
    for bad in ("256", "0x256", "axb", "-5x3"):
        with pytest.raises(ValueError):
            parse_size(bad)


def test_write_dataset(tmp_path):
    man = write_dataset(tmp_path / "d", count=3, size=(64, 32), world_seeds=range(5, 7), seed=1, format="jpg")
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == sorted([
        MANIFEST_FILE, "landscape_000000.jpg", "landscape_000001.jpg", "landscape_000002.jpg"])
    assert man["world_seeds"] == {"start": 5, "stop": 7}
    for f in man["files"]:
        assert f["world_seed"] in (5, 6) and 0 <= f["y0"] <= VIEW_HEIGHT - 32
    # the files hold exactly the renders the manifest names (PNG: lossless)
    man = write_dataset(tmp_path / "p", count=2, size=(48, 40), world_seeds=[9], y=100, seed=2)
    for f in man["files"]:
        pic = np.asarray(Image.open(tmp_path / "p" / f["file"]))
        assert f["y0"] == 100
        assert np.array_equal(pic, World(9).render(f["x0"], f["y0"], f["width"], f["height"]))
    with pytest.raises(ValueError):
        write_dataset(tmp_path / "x", count=0)
    with pytest.raises(ValueError):
        write_dataset(tmp_path / "x", count=1, format="gif")


def test_cli_splits_and_errors(tmp_path, capsys):
    common = ["--count", "4", "--size", "64x48", "--worlds", "3", "--no-progress"]
    assert main(["landscapes", "--out", str(tmp_path / "train"), "--split", "train", *common]) == 0
    assert main(["landscapes", "--out", str(tmp_path / "val"), "--split", "val", "--y", "0", *common]) == 0
    mans = {s: json.loads((tmp_path / s / MANIFEST_FILE).read_text()) for s in ("train", "val")}
    for s, man in mans.items():
        assert man["split"] == s and man["count"] == 4 and len(man["files"]) == 4
        assert all((tmp_path / s / f["file"]).is_file() for f in man["files"])
        assert Image.open(tmp_path / s / man["files"][0]["file"]).size == (64, 48)
    assert all(f["y0"] == 0 for f in mans["val"]["files"])
    seeds = {s: set(range(m["world_seeds"]["start"], m["world_seeds"]["stop"])) for s, m in mans.items()}
    assert not seeds["train"] & seeds["val"]
    assert {f["world_seed"] for f in mans["train"]["files"]} <= seeds["train"]
    assert {f["world_seed"] for f in mans["val"]["files"]} <= seeds["val"]
    capsys.readouterr()
    for bad in (["--size", "0x64"], ["--size", "64"], ["--count", "0"], ["--worlds", "0"], ["--y", "top"]):
        assert main(["landscapes", "--out", str(tmp_path / "bad"), "--no-progress", *bad]) == 2
        assert "error" in capsys.readouterr().err
