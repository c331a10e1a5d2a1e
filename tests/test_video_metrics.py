"""Video metrics (nuwa_ds.metrics.video): per-frame SWD by frame index and temporal consistency, on
synthetic pans over landscape worlds (frame k is the window at x0 + k * pan: the content moves by
exactly -pan px per frame)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from data_pipelines.landscapes import World
from nuwa_ds.cli import main
from nuwa_ds.metrics.video import clip_motion, format_video_report, load_clips, shuffle_frames, video_report

SIZE = 64


def pan(seed: int, frames: int = 8, speed: int = 3, size: int = SIZE) -> np.ndarray:
    """uint8 [frames, size, size, 3]: the camera pans right by ``speed`` px per frame (one render of
    the strip, windows of it: a window of a render equals the render of the window bitwise)."""
    world = World(seed)
    x0, y0 = (seed * 7919) % 20_000, world.horizon - size // 2  # ridges and water: texture to track
    strip = world.render(x0, y0, size + speed * (frames - 1), size)
    return np.stack([strip[:, k * speed:k * speed + size] for k in range(frames)])


def drift_to_noise(clip: np.ndarray, last: int, seed: int) -> np.ndarray:
    """The clip with its last ``last`` frames blended toward uniform noise, more so each frame, the
    last two all noise."""
    rng = np.random.default_rng(seed)
    out = clip.astype(np.float32)
    for k in range(last):
        t = len(clip) - last + k
        weight = min(1.0, (k + 1) / (last - 1))
        out[t] = (1 - weight) * out[t] + weight * rng.integers(0, 256, out[t].shape)
    return out.round().astype(np.uint8)


@pytest.fixture(scope="module")
def real():
    return [pan(1_000 + i) for i in range(12)]


@pytest.fixture(scope="module")
def fake():
    return [pan(2_000 + i) for i in range(12)]


def test_real_vs_real_is_near_its_floor_and_random_tokens_far(real, fake):
    rng = np.random.default_rng(0)
    noise = [rng.integers(0, 256, c.shape, dtype=np.uint8) for c in fake[:6]]
    report = video_report(real, fake, random_tokens=noise, descriptors=512, true_dx=-3.0)
    swd = report["swd"]["summary"]
    # other worlds panned the same way: about as far from real half B as real half A is (with a dozen
    # worlds a set, which worlds were drawn moves the mean by ~10-50%: the floor is a noisy figure)
    assert swd["fake"]["mean"] < 1.35 * swd["real_a"]["mean"], swd
    assert swd["random_tokens"]["mean"] > 2 * swd["real_a"]["mean"], swd
    assert 0.75 < swd["fake"]["last_over_first"] < 1.33 and 0.75 < swd["real_a"]["last_over_first"] < 1.33
    assert len(report["swd"]["rows"]["fake"]) == 8 and len(set(report["swd"]["descriptors"])) == 1
    temporal = report["temporal"]["sets"]
    assert abs(temporal["real"]["speed"] - 3.0) < 0.05 and temporal["real"]["right"] == 0.0
    truth = report["temporal"]["truth"]["real"]
    assert truth["within_10pct"] == truth["clips_scored"] == 12 and truth["error"] < 0.02
    assert temporal["fake"]["speed_error"] < 0.02 and temporal["real_a"]["speed_error"] < 0.02
    assert temporal["fake"]["true_speed_error"] < 0.02
    assert temporal["random_tokens"]["jitter"] > 10 * temporal["real"]["jitter"] + 1.0
    lines = format_video_report(report)
    assert any("real_a" in line and "floor" in line for line in lines)
    assert any("shuffled_real" in line and "ceiling" in line for line in lines)


def test_shuffled_frames_raise_jitter_and_frame_difference(real):
    clip = real[0]
    shuffled = shuffle_frames(clip, np.random.default_rng(0))
    assert sorted(map(bytes, shuffled)) == sorted(map(bytes, clip)) and not np.array_equal(shuffled, clip)
    steady, jumpy = clip_motion(clip), clip_motion(shuffled)
    np.testing.assert_allclose(steady["shifts"][:, 1], -3.0, atol=0.1)
    assert jumpy["jitter"] > 10 * steady["jitter"] + 1.0
    assert jumpy["frame_diff"] > 1.5 * steady["frame_diff"]
    # any two frames of a pure pan are shifts of each other: once the estimated integer shift is
    # undone they are equal on the overlap, shuffled or not (the aligned difference measures change
    # that is not motion: drifting clouds, decay; jitter is what catches the shuffle)
    assert steady["frame_diff_aligned"] == 0.0 == jumpy["frame_diff_aligned"]
    report = video_report(real, real[:4], swd=False)
    sets = report["temporal"]["sets"]
    assert sets["shuffled_real"]["jitter"] > 10 * sets["real"]["jitter"] + 1.0
    assert sets["shuffled_real"]["frame_diff_ratio"] > 1.5
    assert report["temporal"]["paired"]["shuffled_real"]["shift_error"] > 0.3


def test_a_clip_drifting_to_noise_raises_last_over_first(real, fake):
    drifting = [drift_to_noise(c, 3, i) for i, c in enumerate(fake)]
    report = video_report(real, drifting, recon=real[:6], descriptors=512, temporal=False)
    s = report["swd"]["summary"]
    assert s["fake"]["last_over_first"] > 1.8 > 1.25 > s["real_a"]["last_over_first"], s
    assert s["fake"]["last_quarter_over_recon"] > 1.5 > s["real_a"]["last_quarter_over_recon"]
    # real[:6] named 0..5 like real clips 0..5: the ones in half B are left out of SWD
    left_out = report["sets"]["recon"]["left_out_half_b"]
    assert 0 < left_out < 6 and report["swd"]["descriptors_per_frame"]["recon"] >= 1
    assert report["swd"]["summary"]["recon"]["last_quarter_over_recon"] == pytest.approx(
        s["recon"]["last_quarter"] / s["recon"]["mean"])
    again = video_report(real, drifting, recon=real[:6], descriptors=512, temporal=False)
    assert again["swd"]["rows"] == report["swd"]["rows"]  # seeded: the same inputs give the same numbers
    other = video_report(real, drifting, recon=real[:6], descriptors=512, temporal=False, seed=1)
    assert other["swd"]["rows"] != report["swd"]["rows"]


def test_paired_shift_error_and_first_frame(real):
    same = video_report(real, real, paired=True, swd=False)["temporal"]["paired"]["fake"]
    assert same["shift_error"] == 0.0 and same["first_frame_equal"] and same["first_frame_max_abs_diff"] == 0
    assert same["pairs_scored"] == len(real)
    # animation from each real clip's first frame, panning twice as fast
    faster = [np.concatenate([c[:1], pan(1_000 + i, speed=6)[1:]]) for i, c in enumerate(real)]
    report = video_report(real, faster, paired=True, swd=False)
    paired = report["temporal"]["paired"]["fake"]
    assert paired["first_frame_equal"] and paired["shift_error"] == pytest.approx(1.0, abs=0.05)
    assert paired["shift_error_px"] == pytest.approx(3.0, abs=0.15)
    twice = video_report(real, [pan(1_000 + i, speed=6) for i in range(len(real))], swd=False)
    assert twice["temporal"]["sets"]["fake"]["speed_error"] == pytest.approx(1.0, abs=0.05)
    nudged = [c.copy() for c in real]
    nudged[3][0, 0, 0, 0] ^= 1
    p = video_report(real, nudged, paired=True, swd=False)["temporal"]["paired"]["fake"]
    assert not p["first_frame_equal"] and p["first_frame_equal_clips"] == len(real) - 1
    assert p["first_frame_max_abs_diff"] == 1
    # per-clip truth: the faster fake clips read 2x the true shift, the real ones read it
    truth = video_report(real, faster, paired=True, swd=False, true_dx=[-3.0] * 11 + [0.0])["temporal"]["truth"]
    assert truth["real"]["clips_scored"] == 11 and truth["real"]["error"] < 0.02
    assert truth["fake"]["error"] == pytest.approx(1.0, abs=0.05) and truth["fake"]["within_10pct"] == 0


def test_gif_mp4_and_frame_folders_round_trip(tmp_path, real):
    from PIL import Image

    from nuwa_ds.tokenizer.media import save_gif, save_mp4

    folder = tmp_path / "clips"
    clip = real[0][:4]
    save_gif(clip, folder / "a.gif")
    save_mp4(clip, folder / "b.mp4")
    frames = folder / "c"
    frames.mkdir()
    for t, f in enumerate(clip):
        Image.fromarray(f).save(frames / f"{t:03d}.png")
    (folder / "notes.json").write_text("{}")  # not a clip: ignored
    a, b, c = load_clips(folder)
    assert [x.shape for x in (a, b, c)] == [clip.shape] * 3 and a.dtype == b.dtype == c.dtype == np.uint8
    np.testing.assert_array_equal(c, clip)  # PNG frames: lossless
    assert np.abs(a.astype(int) - clip).mean() < 4  # GIF: adaptive palette
    assert np.abs(b.astype(int) - clip).mean() < 4  # H.264 crf 18
    motion = clip_motion(b)
    np.testing.assert_allclose(motion["shifts"][:, 1], -3.0, atol=0.3)


def test_bad_input_is_refused(tmp_path, real):
    from PIL import Image

    with pytest.raises(FileNotFoundError, match="clip folder not found"):
        load_clips(tmp_path / "missing")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="holds no clips"):
        load_clips(empty)
    Image.fromarray(real[0][0]).save(empty / "000.png")
    with pytest.raises(ValueError, match="sub-folder"):  # a frame folder given as the clip folder
        load_clips(empty)
    mixed = tmp_path / "mixed" / "clip"
    mixed.mkdir(parents=True)
    Image.fromarray(real[0][0]).save(mixed / "0.png")
    Image.fromarray(real[0][0][:32]).save(mixed / "1.png")
    with pytest.raises(ValueError, match=r"clip .*clip mixes frame sizes"):
        load_clips(mixed.parent)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "x.mp4").write_bytes(b"not a video")
    with pytest.raises(ValueError, match=r"cannot read video .*x\.mp4"):
        load_clips(broken)
    with pytest.raises(ValueError, match="at least 2"):
        video_report(real, [real[0][:1]])
    with pytest.raises(ValueError, match="differ in frame size"):
        video_report(real, [c[:, :32] for c in real])
    with pytest.raises(ValueError, match="two halves"):
        video_report(real[:1], real)
    with pytest.raises(ValueError, match="paired"):
        video_report(real, real[:3], paired=True)
    with pytest.raises(ValueError, match="one per clip"):
        video_report(real, real, true_dx=[1.0, 2.0], swd=False)
    with pytest.raises(ValueError, match=r"uint8 \[T, H, W, 3\]"):
        video_report(real, [c.astype(np.float32) for c in real])


def test_eval_video_command(tmp_path, real, fake, capsys):
    from nuwa_ds.tokenizer.media import save_gif

    for name, clips in (("real", real[:6]), ("fake", fake[:3])):
        for i, clip in enumerate(clips):
            save_gif(clip, tmp_path / name / f"{i:03d}.gif")
    out = tmp_path / "eval.json"
    args = ["eval", "--video", "--real", str(tmp_path / "real"), "--fake", str(tmp_path / "fake"),
            "--video-descriptors", "256", "--out", str(out)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "Per-frame SWD" in printed and "Temporal" in printed
    report = json.loads(out.read_text())["video"]
    assert report["sets"]["real"]["clips"] == 6 and report["swd"]["summary"]["fake"]["frames"] == 8
    assert main(args[:6] + ["--paired"]) == 2  # 3 fake vs 6 real clips
    assert "paired" in capsys.readouterr().err
