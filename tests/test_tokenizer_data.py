"""tokenizer-train's pictures (issue 21): headers read up front, pixels decoded on demand by a thread
pool with a bounded cache, crops drawn in order from the seeded generator (results independent of
the threads and the cache), bad files named, the evaluation decoding only what it evaluates."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import nuwa_ds.tokenizer.train as T
from nuwa_ds.tokenizer import demo_pictures, from_uint8, save_png
from nuwa_ds.tokenizer.media import open_rgb


def photo(width: int, height: int, k: int = 0) -> np.ndarray:
    """A crop of a demo photograph (texture everywhere: resampling differences show)."""
    array = demo_pictures(["astronaut"])["astronaut"]
    return np.ascontiguousarray(array[7 * k:7 * k + height, 5 * k:5 * k + width])


def picture_folder(directory, count: int = 6, size=(96, 80)):
    directory.mkdir()
    for k in range(count):
        save_png(from_uint8(photo(size[0] + 8 * (k % 2), size[1], k)), directory / f"p{k}.png")
    return directory


def test_pictures_read_headers_only_and_decode_like_open_rgb(tmp_path):
    """Only the headers are read up front; the pixels decoded later are open_rgb's (EXIF orientation
    applied, grey / RGBA / palette converted), and arrays mix with files."""
    d = tmp_path / "pics"
    d.mkdir()
    Image.fromarray(photo(64, 48)).save(d / "a.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate: a 64x48 file shows as 48x64
    Image.fromarray(photo(64, 48, 1)).save(d / "b.jpg", exif=exif.tobytes(), quality=90)
    Image.fromarray(photo(40, 56, 2)[..., 0]).save(d / "c.png")  # grey
    Image.fromarray(np.dstack([photo(40, 32, 3), np.full((32, 40), 128, np.uint8)])).save(d / "d.png")  # RGBA
    Image.fromarray(photo(48, 40, 4)).convert("P").save(d / "e.gif")
    pictures = T._load_pictures(d)
    assert pictures.decoded == 0 and len(pictures) == 5
    files = sorted(d.iterdir())
    for i, path in enumerate(files):
        expected = np.asarray(open_rgb(path))
        assert pictures.size(i) == expected.shape[:2], path
        assert np.array_equal(pictures.array(i), expected), path
    assert pictures.size(1) == (64, 48) and pictures.decoded == 5
    pictures.array(0)
    assert pictures.decoded == 5  # cached

    grey = photo(40, 30)[..., 0]
    mixed = T._load_pictures([files[0], grey, files[1]])
    assert [mixed.size(i) for i in range(3)] == [(48, 64), (30, 40), (64, 48)]
    assert np.array_equal(mixed.array(1), np.repeat(grey[..., None], 3, -1)) and mixed.decoded == 0
    with pytest.raises(ValueError, match="picture 1: expected uint8"):
        T._load_pictures([files[0], np.zeros((8, 8, 3), np.float32)])


def test_picture_cache_is_bounded_and_shared_decodes_happen_once(tmp_path):
    d = picture_folder(tmp_path / "pics")
    one = 96 * 80 * 3 / 2 ** 20  # MB of one 96x80 picture
    pictures = T._load_pictures(d, cache_mb=2.5 * one)
    for i in (0, 2, 4, 0, 4):  # 0, 2 cached; 4 evicts 0 (least recent); 0 evicts 2; 4 hits
        pictures.level(i)
    assert pictures.decoded == 4 and sorted(pictures._cache) == [(0, 1.0), (4, 1.0)]
    assert pictures._cached_bytes <= pictures.cache_bytes
    half = pictures.level(4, 0.5)  # from the cached full size: no decode
    assert half.shape == (40, 48, 3) and pictures.decoded == 4
    uncached = T._load_pictures(d, cache_mb=0)
    for _ in range(3):
        uncached.level(1)
    assert uncached.decoded == 3 and not uncached._cache

    from concurrent.futures import ThreadPoolExecutor

    shared = T._load_pictures(d)
    with ThreadPoolExecutor(8) as pool:
        levels = list(pool.map(lambda k: shared.level(3, (1.0, 0.75)[k % 2]), range(32)))
    assert shared.decoded == 1 and all(a is levels[k % 2] for k, a in enumerate(levels))


def reference_crops(arrays, crop: int, seed: int, size: int) -> tuple[list, torch.Tensor]:
    """The earlier sampler, restated: a pyramid (1, 3/4, 1/2 Lanczos) of every picture, crops of it."""
    levels = []
    for array in arrays:
        img = Image.fromarray(array)
        for scale in (1.0, 0.75, 0.5):
            w, h = round(img.width * scale), round(img.height * scale)
            if min(w, h) >= crop:
                levels.append((scale, from_uint8(np.asarray(img.resize((w, h), Image.Resampling.LANCZOS)))))
    g = torch.Generator().manual_seed(seed)
    scales, out = [], []
    for _ in range(size):
        scale, img = levels[int(torch.randint(len(levels), (1,), generator=g))]
        y = int(torch.randint(img.shape[1] - crop + 1, (1,), generator=g))
        x = int(torch.randint(img.shape[2] - crop + 1, (1,), generator=g))
        patch = img[:, y:y + crop, x:x + crop]
        out.append(patch.flip(-1) if torch.rand((), generator=g) < 0.5 else patch)
        scales.append(scale)
    return scales, torch.stack(out)


def test_crops_are_the_earlier_pyramids_crops():
    """The same draws and pixels as the sampler that held every picture's pyramid, bitwise."""
    arrays = [photo(100, 90, 0), photo(160, 120, 1), photo(70, 64, 2)]
    scales, expected = reference_crops(arrays, 48, seed=5, size=120)
    got = T.CropSampler(arrays, 48, seed=5).batch(120)
    assert {1.0, 0.75, 0.5} <= set(scales)
    assert got.shape == expected.shape == (120, 3, 48, 48) and torch.equal(got, expected)


def test_batches_do_not_depend_on_threads_cache_or_timing(tmp_path):
    d = picture_folder(tmp_path / "pics", count=5)
    reference = T.CropSampler(T._load_pictures(d), 32, seed=3)
    expected = [((reference.batch(7) + 1.0) * 127.5).round().to(torch.uint8) for _ in range(6)]
    for workers, depth, cache_mb in ((1, 1, 0.0), (4, 5, 1024.0), (3, 2, 0.05)):
        sampler = T.CropSampler(T._load_pictures(d, workers=workers, cache_mb=cache_mb), 32, seed=3)
        with sampler.stream(7, workers=workers, depth=depth) as stream:
            got = [stream.next() for _ in range(6)]
        assert all(torch.equal(a, b) for a, b in zip(got, expected)), (workers, depth, cache_mb)
        batch = T._model_input(got[0], "cpu")
        assert batch.is_contiguous() and batch.dtype == torch.float32
        assert torch.equal(batch, from_uint8(got[0].permute(0, 2, 3, 1).numpy()))
    with pytest.raises(ValueError, match="data_workers must be >= 1"):
        T.worker_count(0)


def test_training_is_deterministic_whatever_the_threads(tmp_path, monkeypatch):
    d = picture_folder(tmp_path / "pics")
    losses: list[float] = []
    real = T.training_step

    def recorded(*args, **kwargs):
        result = real(*args, **kwargs)
        losses.append(result[0].item())
        return result

    monkeypatch.setattr(T, "training_step", recorded)
    runs = []
    for workers, cache_mb in ((1, 0.0), (3, 1024.0)):
        losses.clear()
        model, metrics = T.train_tokenizer(str(d), codebook_size=32, device="cpu", steps=6, batch_size=4, crop=32,
                                           ae_warmup_steps=2, eval_pictures=3, log_every=0, seed=1,
                                           data_workers=workers, picture_cache_mb=cache_mb)
        runs.append((list(losses), model.state_dict(), metrics))
    (losses_a, weights_a, m_a), (losses_b, weights_b, m_b) = runs
    assert len(losses_a) == 6 and losses_a == losses_b
    assert all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)
    assert m_a["psnr_per_picture"] == m_b["psnr_per_picture"] and m_a["eval_indices"] == m_b["eval_indices"]
    assert m_a["load_seconds"] > 0 and m_a["data_wait_seconds"] >= 0 and m_a["pictures_total"] == 6


def test_bad_pictures_are_named(tmp_path, capsys):
    from nuwa_ds.cli import main

    d = picture_folder(tmp_path / "pics", count=3)
    (d / "zz_notes.png").write_text("not a picture")
    with pytest.raises(ValueError, match="zz_notes.png cannot be read"):
        T._load_pictures(d)
    args = ["tokenizer-train", "--images", str(d), "--out", str(tmp_path / "tok"), "--steps", "1", "--batch-size",
            "1", "--crop", "32", "--codebook-size", "32", "--device", "cpu"]
    assert main(args) == 2
    assert "zz_notes.png cannot be read" in capsys.readouterr().err

    # a header that reads but pixels that do not: found when first decoded, during training
    (d / "zz_notes.png").unlink()
    data = (d / "p0.png").read_bytes()
    (d / "p0.png").write_bytes(data[: len(data) // 2])
    pictures = T._load_pictures(d)
    assert pictures.size(0) == (80, 96)
    with pytest.raises(ValueError, match="p0.png cannot be decoded"):
        pictures.level(0)
    with pytest.raises(ValueError, match="p0.png cannot be decoded"):
        T.CropSampler(T._load_pictures([d / "p0.png"]), 32, 0).batch(1)
    one = ["tokenizer-train", "--images", str(d / "p0.png"), *args[3:]]
    assert main(one) == 2
    assert "p0.png cannot be decoded" in capsys.readouterr().err


def test_evaluation_decodes_only_the_pictures_it_evaluates(tmp_path, monkeypatch):
    from nuwa_ds.tokenizer import VQConfig, VQTokenizer

    d = picture_folder(tmp_path / "pics", count=8)
    pictures = T._load_pictures(d)
    decoded: list[int] = []
    real = T.Pictures._decode

    def recorded(self, index):
        decoded.append(index)
        return real(self, index)

    monkeypatch.setattr(T.Pictures, "_decode", recorded)
    sample = T.eval_sample(len(pictures), 3, seed=0)
    batches = T.eval_batches(pictures, sample, 8, batch_size=2)
    assert sorted(i for b in batches for i in b) == sample and not decoded  # sizes from the headers
    model = VQTokenizer(VQConfig.preset("demo-f8", n_embed=32))
    result = T.evaluate(model, pictures, sample, batch_size=2)
    assert sorted(decoded) == sample and result["eval_indices"] == sample
    arrays = [pictures.array(i) for i in range(8)]
    again = T.evaluate(model, arrays, sample, batch_size=2)  # arrays work as before, with the same figures
    assert again["psnr_per_picture"] == result["psnr_per_picture"]
