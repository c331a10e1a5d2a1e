"""Token shards: prepare (pictures, panoramas, videos, tars, captions, resume), the shard format read
without project code, and the loader (contract, exact resume on 2 spawned ranks x 2 workers, fewer
shards than workers, corrupt input)."""

from __future__ import annotations

import io
import json
import logging
import multiprocessing
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from data_pipelines import build_loader
from data_pipelines.loader import SkipLog, read_shard
from data_pipelines.prepare import PrepareOptions, plan_crops, prepare_shards
from data_pipelines.samples import encode_sample
from nuwa_ds.config import ConfigError, DataConfig, NuwaConfig
from nuwa_ds.tokenizer import VQConfig, VQTokenizer, demo_pictures, from_uint8, psnr, save_mp4
from test_tokenizer import trained_demo_tokenizer

TINY = NuwaConfig.preset("tiny")  # vocab 256, patch 4


def small_tokenizer(codebook: int = 256) -> VQTokenizer:
    torch.manual_seed(0)
    return VQTokenizer(VQConfig.preset("demo-f8", n_embed=codebook)).eval()


def hf_text_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["[PAD]", "[UNK]", "a", "cup", "of", "coffee", "cat", "astronaut", "rocket"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]")


def write_shards(directory: Path, shapes_per_shard: list[list[tuple]], vocab: int = 256, seed: int = 0,
                 caption: str | None = "a cup of coffee") -> str:
    """Token shards written with plain webdataset; every sample unique. Returns the brace pattern. The JSON
    holds only what the loader reads (no ``tokenizer_sha256``, as in shards of earlier versions of prepare)."""
    import webdataset as wds

    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    for s, shapes in enumerate(shapes_per_shard):
        with wds.TarWriter(str(directory / f"tok-{s:03d}.tar"), encoder=False) as sink:
            for i, shape in enumerate(shapes):
                tokens = rng.integers(0, vocab, size=shape).astype(np.int16)
                sink.write(encode_sample(f"s{s:03d}_{i:04d}", tokens, {"caption": caption, "token_thw": list(shape)}))
    return str(directory / f"tok-{{000..{len(shapes_per_shard) - 1:03d}}}.tar")


# ----------------------------------------------------------------------------------------------
# prepare


def test_resize_crop_rule():
    # short side to 128, long side cut to a multiple of 32 (centred): 300 x 451 -> 128 x 192.4 -> 128 x 192
    size, boxes = plan_crops(451, 300, image_size=128, align=32, max_aspect=4)
    assert size == (192, 128) and boxes == [(0, 0, 192, 128)]
    # a portrait is the same rule transposed
    size, boxes = plan_crops(300, 451, image_size=128, align=32, max_aspect=4)
    assert size == (128, 192) and boxes == [(0, 0, 128, 192)]
    # a panorama within the limit stays whole (aspect 4 exactly)
    assert plan_crops(2048, 512, 128, 32, max_aspect=4)[1] == [(0, 0, 512, 128)]
    # beyond it: the fewest equal pieces of the limit length, evenly spread, covering everything
    size, boxes = plan_crops(38912, 2048, 128, 32, max_aspect=4)
    assert size == (2432, 128)
    assert len(boxes) == 5 and all(b[2] - b[0] == 512 for b in boxes)
    assert boxes[0][0] == 0 and boxes[-1][2] == 2432
    # native size kept (image_size=0); too small for one patch is a skip
    assert plan_crops(100, 70, 0, 32, 4) == ((100, 70), [(2, 3, 98, 67)])
    with pytest.raises(Exception, match="too_small"):
        plan_crops(20, 10, 0, 32, 4)


@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory) -> Path:
    """Real photographs (scikit-image) in several formats, sizes and aspects, with captions:
    ``images/`` (+ ``sub/``), ``captions.csv``, ``more.tar`` (pictures with caption members)."""
    import skimage.data

    root = tmp_path_factory.mktemp("photos")
    images = root / "images"
    (images / "sub").mkdir(parents=True)
    pics = demo_pictures()
    Image.fromarray(pics["astronaut"]).save(images / "astronaut.jpg", quality=95)
    Image.fromarray(pics["chelsea"][:, 100:300]).save(images / "cat_portrait.png")  # 300 x 200 portrait
    Image.fromarray(np.concatenate([pics["rocket"]] * 3, axis=1)).save(images / "sub" / "rocket_pano.png")
    Image.fromarray(skimage.data.camera()).save(images / "camera_grey.png")  # a grey picture
    (images / "sub" / "rocket_pano.txt").write_text("a rocket\n")
    (root / "captions.csv").write_text("file,caption\nastronaut.jpg,an astronaut\ncat_portrait.png,a cat\n")
    with tarfile.open(root / "more.tar", "w") as tar:
        for name, array in (("coffee", pics["coffee"]), ("cup/coffee2", pics["coffee"][:, ::-1])):
            buffer = io.BytesIO()
            Image.fromarray(np.ascontiguousarray(array)).save(buffer, format="JPEG", quality=95)
            for suffix, data in (("jpg", buffer.getvalue()), ("txt", b"a cup of coffee")):
                info = tarfile.TarInfo(f"{name}.{suffix}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return root


@pytest.mark.slow
def test_prepare_round_trip_on_real_photographs(photo_folder, tmp_path, tmp_path_factory):
    import webdataset as wds

    tok, _ = trained_demo_tokenizer(tmp_path_factory)
    out = tmp_path / "shards"
    images = photo_folder / "images"
    manifest = prepare_shards([images, photo_folder / "more.tar"], out, tok, captions=photo_folder / "captions.csv",
                              device="cpu", image_size=128, patch_size=4, max_aspect=3.0, shard_maxcount=3,
                              progress=False)
    # 4 pictures + the panorama (427 x 1920 -> 128 x 575 -> cut into 2 pieces of 128 x 384) + 2 from the tar
    assert manifest["counts"]["images"] == 6 and manifest["num_samples"] == 7
    assert manifest["num_shards"] == 3 and manifest["shard_samples"] == [3, 3, 1]
    f = tok.downsample

    # 1. plain tarfile, no project code
    seen = {}
    for shard in sorted(out.glob("shard-*.tar")):
        with tarfile.open(shard) as tar:
            names = tar.getnames()
            assert all(n.endswith((".tokens.npy", ".json")) for n in names)
            for name in names:
                if name.endswith(".json"):
                    key = name[: -len(".json")]
                    meta = json.loads(tar.extractfile(name).read())
                    tokens = np.load(io.BytesIO(tar.extractfile(f"{key}.tokens.npy").read()), allow_pickle=False)
                    seen[key] = (tokens, meta)
    assert len(seen) == 7
    captions = {}
    for key, (tokens, meta) in seen.items():
        T, h, w = tokens.shape
        assert tokens.dtype == np.int16 and T == 1 and h % 4 == 0 and w % 4 == 0
        assert meta["token_thw"] == [1, h, w] and meta["pixel_hw"] == [h * f, w * f]
        assert min(meta["pixel_hw"]) == 128 and meta["fps"] is None and meta["kind"] == "image"
        assert meta["downsample"] == f and meta["codebook_size"] == tok.codebook_size
        assert meta["tokenizer_sha256"] == manifest["settings"]["tokenizer"]["weights_sha256"]
        captions[meta["source"]] = meta["caption"]
    assert captions["astronaut.jpg"] == "an astronaut" and captions["cat_portrait.png"] == "a cat"
    assert captions["sub/rocket_pano.png"] == "a rocket" and captions["camera_grey.png"] is None
    assert captions["more.tar:coffee.jpg"] == "a cup of coffee"
    pano = sorted(k for k in seen if "rocket_pano" in k)
    assert [k[-4:] for k in pano] == ["_p00", "_p01"]
    assert all(seen[k][1]["pixel_hw"] == [128, 384] for k in pano)

    # 2. webdataset without project code: same samples, decoded
    dataset = wds.WebDataset(str(out / manifest["shards"]), shardshuffle=False, nodesplitter=wds.split_by_node,
                             workersplitter=wds.split_by_worker).decode()
    read = {s["__key__"]: s for s in dataset}
    assert set(read) == set(seen)
    for key, sample in read.items():
        assert np.array_equal(sample["tokens.npy"], seen[key][0]) and sample["json"] == seen[key][1]

    # 3. tokens decode to pictures of the stated size that look like the stated crop of the source
    for key, (tokens, meta) in seen.items():
        decoded = tok.decode(torch.from_numpy(tokens.astype(np.int64)))
        assert tuple(decoded.shape) == (1, 3, *meta["pixel_hw"])
        if ":" in meta["source"]:
            continue
        source = Image.open(images / meta["source"]).convert("RGB")
        resized = source.resize(tuple(meta["resized_hw"][::-1]), Image.Resampling.LANCZOS)
        y, x = meta["crop_yx"]
        reference = from_uint8(np.asarray(resized)[y:y + meta["pixel_hw"][0], x:x + meta["pixel_hw"][1]])[None]
        upside_down = reference.flip(-2)  # the same pixels in the wrong place (the tokenizer is short-trained)
        assert psnr(reference, decoded) > max(11.0, psnr(upside_down, decoded) + 1.5), key

    # 4. the training loader reads them
    loader = build_loader(DataConfig(shards=str(out / manifest["shards"]), canvas=(1, 16, 16), num_workers=0,
                                     shuffle_buffer=8), TINY, 0, 1, 2)
    batch = next(iter(loader))
    assert batch["tokens"].shape == (2, 1, 16, 16) and batch["tokens"].dtype == torch.long


def _video(path: Path, frames: int = 20, fps: int = 10):
    base = demo_pictures(["astronaut"])["astronaut"][100:172, 100:200]  # 72 x 100
    clip = torch.stack([from_uint8(np.roll(base, 3 * t, axis=1)) for t in range(frames)])
    save_mp4(clip, path, fps=fps)


def test_video_becomes_token_clips_with_fps(tmp_path):
    _video(tmp_path / "in" / "walk.mp4")
    # device="auto": the GPU when there is one (batched frames), here the CPU
    manifest = prepare_shards(tmp_path / "in", tmp_path / "out", small_tokenizer(), device="auto", image_size=64,
                              patch_size=2, fps=5, clip_frames=4, progress=False)
    assert manifest["counts"]["videos"] == 1 and manifest["num_samples"] == 2  # 10 sampled frames -> 2 clips
    with tarfile.open(tmp_path / "out" / "shard-000000.tar") as tar:
        metas = [json.loads(tar.extractfile(n).read()) for n in sorted(tar.getnames()) if n.endswith(".json")]
        arrays = [np.load(io.BytesIO(tar.extractfile(n).read())) for n in sorted(tar.getnames()) if n.endswith(".npy")]
    # 72 x 100 -> short side 64 -> 64 x 89 -> multiples of 16 px -> 64 x 80 -> 8 x 10 tokens
    assert [a.shape for a in arrays] == [(4, 8, 10), (4, 8, 10)]
    assert all(m["fps"] == 5.0 and m["kind"] == "video" and m["token_thw"] == [4, 8, 10] for m in metas)
    assert [m["frame_start"] for m in metas] == [0, 4]
    # every sample names the tokenizer that made it, as the manifest does
    assert {m["tokenizer_sha256"] for m in metas} == {manifest["settings"]["tokenizer"]["weights_sha256"]}
    assert metas[1]["time_start"] == pytest.approx(0.8, abs=0.05)
    # a video shorter than a clip is one shorter clip
    manifest = prepare_shards(tmp_path / "in", tmp_path / "out2", small_tokenizer(), device="cpu", image_size=64,
                              patch_size=2, fps=5, clip_frames=16, progress=False)
    assert manifest["num_samples"] == 1


class Interrupted(Exception):
    """What ``stop_after`` raises: a prepare run stopped right after a finished shard."""


def stop_after(shards: int):
    """An ``on_shard_closed`` hook that interrupts the run once ``shards`` shards are finished."""
    def stop(path, state):
        if state["closed_shards"] == shards:
            raise Interrupted

    return stop


def test_prepare_resumes_an_interrupted_run(tmp_path):
    pics = demo_pictures()
    (tmp_path / "in").mkdir()
    for i, (name, array) in enumerate(pics.items()):
        Image.fromarray(array[: 96 + 16 * i, :128]).save(tmp_path / "in" / f"{name}.png")
    _video(tmp_path / "in" / "clip.mp4", frames=30)  # 3 clips of 4 at 5 fps: crosses a shard boundary
    tok = small_tokenizer()
    opts = dict(device="cpu", image_size=64, patch_size=2, fps=5, clip_frames=4, shard_maxcount=2, progress=False)

    clean = prepare_shards(tmp_path / "in", tmp_path / "clean", tok, **opts)

    with pytest.raises(Interrupted):
        prepare_shards(tmp_path / "in", tmp_path / "resumed", tok, on_shard_closed=stop_after(2), **opts)
    state = json.loads((tmp_path / "resumed" / "prepare_state.json").read_text())
    assert state["closed_shards"] == 2 and not state["complete"]
    # a shard that was being written when the process died
    (tmp_path / "resumed" / "shard-000002.tar").write_bytes(b"partial")
    resumed = prepare_shards(tmp_path / "in", tmp_path / "resumed", tok, **opts)

    assert resumed["shard_samples"] == clean["shard_samples"] and clean["num_samples"] == 7
    for shard in sorted((tmp_path / "clean").glob("shard-*.tar")):
        assert (tmp_path / "resumed" / shard.name).read_bytes() == shard.read_bytes(), shard.name
    # done is done; other settings in the same folder are refused unless asked to overwrite
    assert prepare_shards(tmp_path / "in", tmp_path / "resumed", tok, **opts)["num_samples"] == 7
    with pytest.raises(ValueError, match="different prepare run"):
        prepare_shards(tmp_path / "in", tmp_path / "resumed", tok, **{**opts, "image_size": 96})


def _shards(folder: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.tar"))}


def _samples(folder: Path) -> list[tuple[str, np.ndarray, dict]]:
    """(key, tokens, meta) of every sample, in shard order."""
    out = []
    for shard in sorted(folder.glob("shard-*.tar")):
        with tarfile.open(shard) as tar:
            names = tar.getnames()
            for name in names:
                if name.endswith(".json"):
                    key = name[:-len(".json")]
                    tokens = np.load(io.BytesIO(tar.extractfile(f"{key}.tokens.npy").read()))
                    out.append((key, tokens, json.loads(tar.extractfile(name).read())))
    return out


def test_short_clips_decoded_ahead_and_batched_give_the_same_shards(tmp_path, monkeypatch):
    """Many short clips (landscape-videos MP4s) among pictures, a panorama, a long video, a video
    shorter than a clip and an unreadable one: decoded ahead in threads and encoded in batches across
    clips, the shards are byte-identical to streaming every video in the main thread, and every
    sample's tokens are those of its own frames; an interrupted run resumes to them.

    The encoder's floats depend on the batch it runs in (about 1e-6, docs/decisions.md), which can
    flip a code at a near-tie on some machines, so the pipeline is checked with an encode that is
    batch-invariant by construction: each frame of a call encoded alone."""
    from data_pipelines import prepare as P
    from data_pipelines.landscape_video import sample_clip_specs, write_clips
    from nuwa_ds.tokenizer.media import VideoFile, iter_video_frames, open_rgb

    src = tmp_path / "in"
    specs = sample_clip_specs(6, split="train", frames=5, size=(64, 64), window=(256, 256))
    write_clips(tmp_path / "lv", specs, formats=("mp4",))
    src.mkdir()
    for clip in sorted((tmp_path / "lv" / "mp4").glob("*.mp4")):
        (src / clip.name).write_bytes(clip.read_bytes())
    pics = demo_pictures()
    for i, (name, array) in enumerate(pics.items()):
        Image.fromarray(array[: 96 + 16 * i, :128]).save(src / f"{name}.png")
    Image.fromarray(pics["rocket"][:64, :400]).save(src / "clip_000001_pano.png")  # 64 x 400: 2 pieces of 4:1
    _video(src / "clip_000002_long.mp4", frames=45)  # 23 frames at 5 fps: 5 clips, more than the limit below
    _video(src / "clip_000004_short.mp4", frames=3)  # shorter than a clip: one clip of 2 frames
    (src / "clip_000003_broken.mp4").write_bytes(b"not a video")
    tok = small_tokenizer()
    calls, encode = [], tok.encode

    def per_frame(images):
        calls.append(len(images))
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # one-frame calls on a busy machine: thread hand-offs would cost most
        try:
            return torch.cat([encode(image[None]) for image in images])
        finally:
            torch.set_num_threads(threads)

    monkeypatch.setattr(tok, "encode", per_frame)
    opts = dict(device="cpu", image_size=64, patch_size=2, fps=5, clip_frames=4, batch_size=8, shard_maxcount=5,
                progress=False, max_aspect=4)
    small = 10 * 64 * 80  # pixels: the 64 x 64 clips (5 sampled frames) are held, the long video is streamed

    serial = prepare_shards(src, tmp_path / "serial", tok, workers=1, video_ahead_pixels=0, **opts)
    serial_calls, calls[:] = list(calls), []
    ahead = prepare_shards(src, tmp_path / "ahead", tok, workers=2, video_ahead_pixels=small, **opts)
    assert len(calls) < len(serial_calls) and max(calls) == 8  # full batches across clips and sources
    prepare_shards(src, tmp_path / "default", tok, workers=2, **opts)  # everything held, the long video too
    with monkeypatch.context() as m:  # headers that say less than the file holds: streamed after all
        m.setattr(VideoFile, "sampled_frames", lambda self, fps=None: 1)
        prepare_shards(src, tmp_path / "lying", tok, workers=2, video_ahead_pixels=small, **opts)

    counts = serial["counts"]
    assert counts["videos"] == 8 and counts["images"] == 5 and counts["skipped_unreadable"] == 1
    assert serial["num_samples"] == 6 + 5 + 1 + 4 + 2 and serial["num_shards"] == 4
    for run in ("ahead", "default", "lying"):
        assert _shards(tmp_path / run) == _shards(tmp_path / "serial"), run
        assert (tmp_path / run / "prepare_state.json").read_text() == \
            (tmp_path / "serial" / "prepare_state.json").read_text(), run
    assert {k: v for k, v in ahead.items() if k != "seconds_last_run"} == \
        {k: v for k, v in serial.items() if k != "seconds_last_run"}

    # every sample: its own frames, resized and cropped by the stated rule
    decoded = {}
    for key, tokens, meta in _samples(tmp_path / "serial"):
        path = src / meta["source"]
        (h, w), (y, x), (ph, pw) = meta["resized_hw"], meta["crop_yx"], meta["pixel_hw"]
        if meta["kind"] == "video":
            if path not in decoded:
                decoded[path] = [image for _, image in iter_video_frames(path, 5)]
            images = decoded[path][meta["frame_start"]:meta["frame_start"] + meta["token_thw"][0]]
        else:
            images = [open_rgb(path)]
        frames = np.stack([np.asarray(P._resize(i.convert("RGB"), (w, h)).crop((x, y, x + pw, y + ph)))
                           for i in images])
        assert np.array_equal(tokens, P.encode_frames(tok, frames, 8)), key

    # interrupted after two shards and resumed: the same shards
    with pytest.raises(Interrupted):
        prepare_shards(src, tmp_path / "resumed", tok, workers=2, on_shard_closed=stop_after(2), **opts)
    resumed = prepare_shards(src, tmp_path / "resumed", tok, workers=2, **opts)
    assert resumed["counts"] == counts and _shards(tmp_path / "resumed") == _shards(tmp_path / "serial")
    with pytest.raises(ValueError, match="video_ahead_pixels"):
        PrepareOptions(video_ahead_pixels=-1).validate()


def test_prepare_command_and_bad_input(tmp_path, capsys):
    from nuwa_ds.cli import main

    small_tokenizer(64).save_pretrained(tmp_path / "tok")
    (tmp_path / "in").mkdir()
    Image.fromarray(demo_pictures(["coffee"])["coffee"][:64, :96]).save(tmp_path / "in" / "coffee.png")
    (tmp_path / "in" / "broken.jpg").write_bytes(b"not a jpeg")
    (tmp_path / "captions.jsonl").write_text(json.dumps({"path": "coffee.png", "text": "a cup of coffee"}) + "\n")
    rc = main(["prepare", str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--tokenizer", str(tmp_path / "tok"),
               "--image-size", "64", "--patch-size", "2", "--no-progress", "--device", "cpu",
               "--captions", str(tmp_path / "captions.jsonl")])
    out = capsys.readouterr().out
    assert rc == 0 and "skipped 1" in out and f"data.shards={tmp_path / 'out'}/shard-{{000000..000000}}.tar" in out
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["counts"]["skipped_unreadable"] == 1 and manifest["num_samples"] == 1
    assert manifest["tokenizer_path"] == str((tmp_path / "tok").resolve())  # what decodes training's samples
    with tarfile.open(tmp_path / "out" / "shard-000000.tar") as tar:
        meta = json.loads(tar.extractfile(next(n for n in tar.getnames() if n.endswith(".json"))).read())
    assert meta["caption"] == "a cup of coffee" and meta["source"] == "coffee.png"
    # other settings into the same folder: refused, unless --overwrite
    again = ["prepare", str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--tokenizer", str(tmp_path / "tok"),
             "--image-size", "48", "--patch-size", "2", "--no-progress", "--device", "cpu"]
    assert main(again) == 2 and "--overwrite" in capsys.readouterr().err
    assert main([*again, "--overwrite"]) == 0
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["settings"]["options"]["image_size"] == 48
    assert main(["prepare", str(tmp_path / "absent"), "--out", str(tmp_path / "o2"),
                 "--tokenizer", str(tmp_path / "tok")]) == 2
    assert "does not exist" in capsys.readouterr().err
    with pytest.raises(ValueError, match="patch_size"):
        PrepareOptions(patch_size=0).validate()


# ----------------------------------------------------------------------------------------------
# loader


def test_loader_batches_follow_the_contract(tmp_path):
    pattern = write_shards(tmp_path, [[(1, 16, 16)] * 6 + [(1, 8, 32)] * 6, [(3, 12, 12)] * 6])
    cfg = DataConfig(shards=pattern, canvas=(1, 8, 8), canvases=[(1, 8, 24), (2, 8, 8)], num_workers=0,
                     shuffle_buffer=30, caption_dropout=0.5, orders={"down": 1.0, "left": 3.0, "up": 0.0})
    text_tok = hf_text_tokenizer()
    model_cfg = NuwaConfig.preset("tiny", max_text_len=6)
    loader = build_loader(cfg, model_cfg, 0, 1, 3, text_tokenizer=text_tok)
    it = iter(loader)
    batches = [next(it) for _ in range(12)]
    shapes = {tuple(b["tokens"].shape) for b in batches}
    assert shapes == {(3, 1, 8, 8), (3, 1, 8, 24), (3, 2, 8, 8)}  # buckets by aspect: square, wide, video
    orders = [o for b in batches for o in b["orders"]]
    assert set(orders) <= {"down", "left"} and orders.count("left") > orders.count("down")
    for b in batches:
        assert b["tokens"].dtype == torch.long and 0 <= int(b["tokens"].min()) and int(b["tokens"].max()) < 256
        ids, mask = b["text"]["input_ids"], b["text"]["attention_mask"]
        assert ids.shape == mask.shape == (3, 6)
        kept = mask.sum(1) > 0
        assert (ids[kept][:, :4] == torch.tensor([2, 3, 4, 5])).all()
        assert (mask[kept][:, 4:] == 0).all() and (mask[~kept] == 0).all()
    dropped = sum(int((b["text"]["attention_mask"].sum(1) == 0).sum()) for b in batches)
    assert 0 < dropped < 36  # caption dropout 0.5
    # without a text tokenizer there is no text
    assert next(iter(build_loader(cfg, model_cfg, 0, 1, 3)))["text"] is None


def test_loader_rejects_bad_settings(tmp_path):
    pattern = write_shards(tmp_path, [[(1, 8, 8)] * 4])
    with pytest.raises(ValueError, match="multiples of model.patch_size=4"):
        build_loader(DataConfig(shards=pattern, canvas=(1, 6, 8)), TINY, 0, 1, 2)
    with pytest.raises(FileNotFoundError, match="1 of 2 shards"):
        build_loader(DataConfig(shards=str(tmp_path / "tok-{000..001}.tar")), TINY, 0, 1, 2)
    with pytest.raises(ValueError, match="rank"):
        build_loader(DataConfig(shards=pattern), TINY, 2, 2, 2)
    with pytest.raises(ConfigError, match="shuffle_buffer"):
        DataConfig.from_dict({"shuffle_buffer": 0})
    loader = build_loader(DataConfig(shards=pattern, canvas=(1, 8, 8), num_workers=0), TINY, 0, 2, 2)
    with pytest.raises(ValueError, match="rank 1 given to rank 0"):
        loader.load_state_dict({**loader.state_dict(), "rank": 1})
    with pytest.raises(ValueError, match="synthetic"):
        loader.load_state_dict({"kind": "synthetic"})


def _resume_on_rank(rank: int, pattern: str, out: str, before: int, after: int):
    """Runs in a spawned process: rank `rank` of 2, two DataLoader workers."""
    from data_pipelines import build_loader as build

    cfg = DataConfig(shards=pattern, canvas=(1, 8, 8), canvases=[(1, 8, 16)], num_workers=2, shuffle_buffer=10,
                     seed=7, prefetch_factor=2)
    loader = build(cfg, TINY, rank, 2, 2)
    it = iter(loader)
    first = [next(it) for _ in range(before)]
    state = json.loads(json.dumps(loader.state_dict()))  # what a checkpoint stores
    expected = [next(it) for _ in range(after)]
    del it
    fresh = build(cfg, TINY, rank, 2, 2)
    fresh.load_state_dict({"ranks": [state, state] if rank == 0 else [None, state]})
    it = iter(fresh)
    resumed = [next(it) for _ in range(after)]
    same = all(torch.equal(a["tokens"], b["tokens"]) and a["orders"] == b["orders"] for a, b in zip(expected, resumed))
    digest = [b["tokens"].sum().item() for b in first + expected]
    Path(out).write_text(json.dumps({"same": same, "digest": digest, "state": state}))


@pytest.mark.slow
def test_resume_gives_the_same_batches_on_two_spawned_ranks_with_two_workers(tmp_path):
    # 3 shards for 2 ranks x 2 workers: fewer shards than streams, every stream still served
    pattern = write_shards(tmp_path, [[(1, 8, 8)] * 5 + [(1, 8, 16)] * 4] * 3)
    context = multiprocessing.get_context("spawn")
    procs = [context.Process(target=_resume_on_rank, args=(r, pattern, str(tmp_path / f"r{r}.json"), 5, 7))
             for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=180)
    alive = [p for p in procs if p.is_alive()]
    for p in alive:
        p.terminate()
    assert not alive, "a rank hung"
    assert all(p.exitcode == 0 for p in procs)
    results = [json.loads((tmp_path / f"r{r}.json").read_text()) for r in range(2)]
    assert all(r["same"] for r in results)
    assert all(r["state"]["position"] == 5 and r["state"]["num_streams"] == 2 for r in results)
    assert results[0]["digest"] != results[1]["digest"]  # ranks see different data


def test_one_shard_two_workers_no_hang(tmp_path):
    pattern = write_shards(tmp_path, [[(1, 8, 8)] * 6])
    loader = build_loader(DataConfig(shards=pattern, canvas=(1, 8, 8), num_workers=2, shuffle_buffer=6), TINY, 1, 2, 2)
    it = iter(loader)
    batches = [next(it) for _ in range(8)]
    assert len(batches) == 8 and loader.state_dict()["streams"] != [[0, 0], [0, 0]]


def _corrupt_shards(directory: Path) -> str:
    """tok-000: 4 good samples + bad ones of every kind; tok-001: truncated; tok-002: not a tar;
    tok-003: an empty tar; tok-004: good."""
    import webdataset as wds

    directory.mkdir(parents=True, exist_ok=True)
    good = lambda i: encode_sample(f"good{i}", np.full((1, 8, 8), i, np.int16), {"caption": None})  # noqa: E731

    def npy(array, allow_pickle=False):
        buffer = io.BytesIO()
        np.save(buffer, array, allow_pickle=allow_pickle)
        return buffer.getvalue()

    meta = json.dumps({"caption": None}).encode()
    with wds.TarWriter(str(directory / "tok-000.tar"), encoder=False) as sink:
        for i in range(4):
            sink.write(good(i))
        sink.write({"__key__": "no_tokens", "json": meta})
        sink.write({"__key__": "no_json", "tokens.npy": npy(np.zeros((1, 8, 8), np.int16))})
        sink.write({"__key__": "float_tokens", "tokens.npy": npy(np.zeros((1, 8, 8), np.float32)), "json": meta})
        sink.write({"__key__": "int64_tokens", "tokens.npy": npy(np.zeros((1, 8, 8), np.int64)), "json": meta})
        sink.write({"__key__": "bad_json", "tokens.npy": npy(np.zeros((1, 8, 8), np.int16)), "json": b"{caption"})
        sink.write({"__key__": "pickled", "tokens.npy": npy(np.array([{"x": 1}], dtype=object), True), "json": meta})
        sink.write({"__key__": "flat", "tokens.npy": npy(np.zeros((8, 8), np.int16)), "json": meta})
        sink.write({"__key__": "big_ids", "tokens.npy": npy(np.full((1, 8, 8), 999, np.int16)), "json": meta})
        sink.write({"__key__": "tiny", "tokens.npy": npy(np.zeros((1, 4, 4), np.int16)), "json": meta})
    with wds.TarWriter(str(directory / "full.tar"), encoder=False) as sink:
        for i in range(6):
            sink.write(good(10 + i))
    with tarfile.open(directory / "full.tar") as tar:
        cut = tar.getmembers()[4].offset_data + 10  # inside the 5th member (good12.json)
    (directory / "tok-001.tar").write_bytes((directory / "full.tar").read_bytes()[:cut])
    (directory / "full.tar").unlink()
    (directory / "tok-002.tar").write_bytes(b"\x00garbage" * 100)
    with wds.TarWriter(str(directory / "tok-003.tar"), encoder=False):
        pass
    with wds.TarWriter(str(directory / "tok-004.tar"), encoder=False) as sink:
        for i in range(4):
            sink.write(good(20 + i))
    return str(directory / "tok-{000..004}.tar")


def test_read_shard_skips_counts_and_logs_bad_input(tmp_path, caplog):
    _corrupt_shards(tmp_path)
    skips = SkipLog()
    with caplog.at_level(logging.WARNING, logger="nuwa_ds.data"):
        good = read_shard(str(tmp_path / "tok-000.tar"), skips)
        truncated = read_shard(str(tmp_path / "tok-001.tar"), skips)
        garbage = read_shard(str(tmp_path / "tok-002.tar"), skips)
        empty = read_shard(str(tmp_path / "tok-003.tar"), skips)
    # the shard reader rejects format errors; range and size are the loader's checks (below)
    assert [k for _, _, k in good] == ["good0", "good1", "good2", "good3", "big_ids", "tiny"]
    assert [k for _, _, k in truncated] == ["good10", "good11"] and garbage == [] and empty == []
    assert dict(skips.counts) == {"missing_tokens": 1, "wrong_dtype": 2, "unreadable_json": 1,
                                  "unreadable_tokens": 1, "wrong_shape": 1, "truncated_shard": 1,
                                  "unreadable_shard": 1, "missing_json": 1}
    text = caplog.text
    assert "tok-000.tar key no_tokens" in text and "tok-000.tar key bad_json" in text
    assert "missing_tokens" in text and "wrong_dtype" in text and "truncated_shard in shard" in text


def test_loader_survives_corrupt_input_with_workers(tmp_path):
    pattern = _corrupt_shards(tmp_path)
    cfg = DataConfig(shards=pattern, canvas=(1, 8, 8), num_workers=2, shuffle_buffer=1000)
    loader = build_loader(cfg, TINY, 0, 1, 2)
    it = iter(loader)
    batches = [next(it) for _ in range(6)]
    values = {int(v) for b in batches for v in b["tokens"][:, 0, 0, 0]}
    assert values <= {0, 1, 2, 3, 10, 11, 20, 21, 22, 23}  # only the good samples
    counts = loader.counts
    for reason in ("missing_tokens", "wrong_dtype", "unreadable_json", "unreadable_tokens", "wrong_shape",
                   "truncated_shard", "unreadable_shard", "token_out_of_range", "too_small"):
        assert counts.get(reason, 0) >= 1, (reason, counts)
    assert loader.state_dict()["counts"] == counts


def test_loader_with_nothing_usable_fails_clearly(tmp_path):
    pattern = write_shards(tmp_path, [[(1, 4, 4)] * 3])  # every sample smaller than the canvas
    loader = build_loader(DataConfig(shards=pattern, canvas=(1, 8, 8), num_workers=0, shuffle_buffer=4), TINY, 0, 1, 2)
    with pytest.raises(RuntimeError, match="too few usable samples"):
        next(iter(loader))


@pytest.mark.slow
def test_data_bench_quick(tmp_path):
    from nuwa_ds.bench import validate_report
    from nuwa_ds.cli import main

    out = tmp_path / "bench.json"
    assert main(["bench", "data", "--device", "cpu", "--quick", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert validate_report(report) == []
    rows = report["suites"]["data"]["rows"]
    assert [r["what"] for r in rows] == ["prepare", "loader", "loader"]
    assert rows[0]["images_per_s"] > 0 and {r["workers"] for r in rows[1:]} == {2, 0}
    assert all(r["tokens_per_s"] > 0 and r["goal_tokens_per_s"] == 1_000_000 for r in rows[1:])
