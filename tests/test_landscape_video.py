"""Procedural landscape video (data_pipelines.landscape_video): time in the World, exact pans, seeded
balanced clips, captions that parse back, a pixel reader measured on real clips, files that
``prepare`` reads with their captions."""

from __future__ import annotations

import itertools
import json
import tarfile

import numpy as np
import pytest

from data_pipelines.landscape_video import (ATTRIBUTES, CAPTIONS_FILE, MANIFEST_FILE, ClipSpec, caption,
                                            parse_caption, read_attributes, read_manifest, reader_accuracy,
                                            render_clip, render_frame, sample_clip_specs, true_attributes,
                                            write_clips)
from data_pipelines.landscapes import World
from nuwa_ds.cli import main
from nuwa_ds.metrics.temporal import clip_shifts


def test_time_zero_is_the_still_world_and_time_moves_only_the_sky():
    world = World(4)
    still = world.render(-40, 250, 160, 480)
    assert np.array_equal(world.render(-40, 250, 160, 480, t=0, cloud_drift=1.3, sun_rise=-0.4), still)
    spec = ClipSpec(world_seed=4, x0=-40, y0=250, width=160, height=480, size=(160, 480), frames=3, pan=2,
                    cloud_drift=1.3, sun_rise=-0.4)
    assert np.array_equal(render_frame(spec, 0), still)  # size == window: no resampling
    later = world.render(-40, 250, 160, 480, t=20, cloud_drift=1.3, sun_rise=-0.4)
    assert np.abs(later.astype(int) - still)[:world.horizon - 250].mean() > 0.2  # the clouds moved
    # a window of a moved world is still a window of that moved world (pure function of coordinates)
    big = world.render(-40, 250, 160, 480, t=7, cloud_drift=1.3, sun_rise=-0.4)
    assert np.array_equal(world.render(0, 500, 50, 200, t=7, cloud_drift=1.3, sun_rise=-0.4), big[250:450, 40:90])
    with pytest.raises(ValueError, match="finite"):
        world.render(0, 0, 8, 8, t=float("nan"))


def test_pan_shift_is_read_back_and_clips_are_deterministic():
    specs = sample_clip_specs(3, split="val", frames=4, seed=3)  # motion left, right, still
    assert [true_attributes(s)["motion"] for s in specs] == ["left", "right", "still"]
    for spec in specs:
        clip = render_clip(spec)
        assert clip.dtype == np.uint8 and clip.shape == (4, 128, 128, 3)
        shifts = clip_shifts(list(clip))
        np.testing.assert_allclose(shifts[:, 1], -spec.true_shift, atol=0.25)  # content moves against the camera
        np.testing.assert_allclose(shifts[:, 0], 0.0, atol=0.25)
        assert spec.true_shift == spec.pan * 128 / 512
    assert np.array_equal(render_clip(specs[0]), render_clip(ClipSpec.from_dict(specs[0].to_dict())))


def test_sampling_is_seeded_balanced_and_splits_are_disjoint():
    a = sample_clip_specs(24, split="train", frames=16, seed=1)
    assert [s.to_dict() for s in a] == [s.to_dict() for s in sample_clip_specs(24, split="train", frames=16, seed=1)]
    assert [s.to_dict() for s in a[:12]] == [s.to_dict() for s in sample_clip_specs(12, split="train", frames=16, seed=1)]
    assert [s.x0 for s in a] != [s.x0 for s in sample_clip_specs(24, split="train", frames=16, seed=2)]
    val = sample_clip_specs(24, split="val", frames=64, seed=1)
    assert not {s.world_seed for s in a} & {s.world_seed for s in val}
    attrs = [true_attributes(s) for s in a]
    for key in ("sun", "motion"):
        counts = [sum(t[key] == c for t in attrs) for c in ATTRIBUTES[key]]
        assert max(counts) == min(counts), (key, counts)  # every class equally often
    for spec in a:
        world = World(spec.world_seed)
        assert spec.y0 < world.horizon - 0.5 * spec.height < world.horizon < spec.y0 + spec.height  # sky and water
        assert spec.pan == 0 or 4 <= abs(spec.pan) <= 16  # 1-4 output px per frame
    assert all(s.frames == 64 for s in val)


def test_captions_parse_back():
    for sky, sun, motion in itertools.product(ATTRIBUTES["sky"], ATTRIBUTES["sun"], (*ATTRIBUTES["motion"], None)):
        attrs = {"sky": sky, "sun": sun, **({} if motion is None else {"motion": motion})}
        texts = {caption(attrs, v) for v in range(3)}
        assert len(texts) == (1 if motion is None else 3)
        assert all(parse_caption(t) == attrs for t in texts)
    assert caption({"sky": "dusk", "sun": "left", "motion": "right"}) == \
        "an orange dusk sky over ridges and a lake, the sun on the left, panning right"
    assert "moon" in caption({"sky": "night", "sun": "right"})
    with pytest.raises(ValueError):
        caption({"sky": "purple", "sun": "left"})
    with pytest.raises(ValueError):
        caption({"sun": "left"})
    with pytest.raises(ValueError):
        parse_caption("a cat on a mat")


def test_the_reader_reads_real_clips():
    # frames=2: one shift is enough for the motion; the 500-clip figure is in docs/decisions.md
    specs = sample_clip_specs(36, split="val", frames=2, seed=11)
    acc = reader_accuracy(specs)
    for key in ATTRIBUTES:
        assert acc[key]["count"] == 36
        assert acc[key]["accuracy"] >= 0.9, (key, acc[key])
        assert acc[key]["accuracy"] > acc[key]["chance"]
    one = read_attributes(render_frame(specs[0], 0))  # a single picture: no motion
    assert set(one) == {"sky", "sun"}
    with pytest.raises(ValueError, match="uint8"):
        read_attributes(np.zeros((2, 64, 64, 3), np.float32))
    with pytest.raises(ValueError):
        read_attributes(np.zeros((64, 64), np.uint8))


def test_written_clips_go_through_prepare_with_captions(tmp_path):
    from data_pipelines.prepare import prepare_shards
    from tests.test_data import small_tokenizer

    train = sample_clip_specs(2, split="train", frames=8, size=(64, 64), window=(256, 256))
    held_out = sample_clip_specs(1, split="val", frames=32, size=(64, 64), window=(256, 256))
    man = write_clips(tmp_path / "train", train, formats=("mp4", "gif"), workers=0, split="train")
    write_clips(tmp_path / "val", held_out, split="val")
    assert (tmp_path / "train" / "mp4" / "clip_000001.mp4").is_file()
    assert (tmp_path / "train" / "gif" / "clip_000001.gif").is_file()
    assert 0 < man["mp4_mean_abs_error"] < 4  # h264 at crf 18
    manifest, specs = read_manifest(tmp_path / "train")
    assert [s.to_dict() for s in specs] == [s.to_dict() for s in train]
    assert manifest["clips"][0]["caption"] == caption(true_attributes(train[0]))
    lines = [json.loads(x) for x in (tmp_path / "train" / CAPTIONS_FILE).read_text().splitlines()]
    assert len(lines) == 4 and {x["file"] for x in lines} >= {"mp4/clip_000000.mp4", "gif/clip_000000.gif"}
    tok = small_tokenizer()
    for split, clip_frames, clips in (("train", 8, train), ("val", 32, held_out)):
        out = tmp_path / f"shards_{split}"
        prep = prepare_shards(tmp_path / split / "mp4", out, tok, captions=tmp_path / split / CAPTIONS_FILE,
                              device="cpu", image_size=64, patch_size=2, fps=8, clip_frames=clip_frames,
                              progress=False)
        assert prep["num_samples"] == len(clips)
        with tarfile.open(out / "shard-000000.tar") as tar:
            metas = [json.loads(tar.extractfile(n).read()) for n in sorted(tar.getnames()) if n.endswith(".json")]
        assert [m["caption"] for m in metas] == [caption(true_attributes(s)) for s in clips]
        assert all(m["token_thw"][0] == clip_frames for m in metas)


def test_cli_and_bad_input(tmp_path, capsys):
    assert main(["landscape-videos", "--out", str(tmp_path / "v"), "--count", "1", "--frames", "2", "--size", "32x32",
                 "--window", "256x256", "--format", "frames", "--no-progress"]) == 0
    manifest, specs = read_manifest(tmp_path / "v")
    frame = np.asarray(__import__("PIL.Image").Image.open(tmp_path / "v" / "frames" / "clip_000000" / "0001.png"))
    assert np.array_equal(frame, render_frame(specs[0], 1))  # PNG frames are lossless
    assert not (tmp_path / "v" / CAPTIONS_FILE).exists() and (tmp_path / "v" / MANIFEST_FILE).is_file()
    capsys.readouterr()
    for bad in (["--format", "avi"], ["--size", "100x100"], ["--count", "0"], ["--frames", "0"], ["--split", "x"]):
        code = None
        try:
            code = main(["landscape-videos", "--out", str(tmp_path / "bad"), "--no-progress", *bad])
        except SystemExit as exc:  # argparse's own refusals
            code = exc.code
        assert code == 2, bad
    with pytest.raises(ValueError, match="integer multiple"):
        ClipSpec(world_seed=0, x0=0, y0=0, width=500, height=512, size=(128, 128), frames=4)
    with pytest.raises(ValueError, match="integer"):
        ClipSpec(world_seed=0, x0=0.5, y0=0, width=512, height=512, size=(128, 128), frames=4)
    with pytest.raises(ValueError, match="frames"):
        ClipSpec(world_seed=0, x0=0, y0=0, width=512, height=512, size=(128, 128), frames=0)
    with pytest.raises(ValueError, match="split"):
        sample_clip_specs(2, split="test")
    with pytest.raises(ValueError, match="formats"):
        write_clips(tmp_path / "bad", sample_clip_specs(1, frames=2), formats=("webm",))
