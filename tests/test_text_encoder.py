"""`nuwa-ds text-encoder` (a BERT + tokenizer made from captions, no download) and the whole text path a
user takes with it: prepare pictures with captions, train on 2 ranks with train.text_encoder_path,
export, move the export away, delete the encoder folder, generate text-to-image from the export alone."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from nuwa_ds.cli import main

SKIES = {"red": (220, 40, 30), "blue": (40, 80, 220), "yellow": (230, 210, 40)}
GROUNDS = {"green": (30, 160, 40), "grey": (120, 120, 120)}


def caption_files(root):
    """The same kind of captions in a .txt (one per line), a prepare-style .csv and a .jsonl."""
    captions = [f"a {s} sky over {g} ground, horizon {h}" for s in SKIES for g in GROUNDS for h in ("high", "low")]
    (root / "captions.txt").write_text("\n".join(captions[:6]) + "\n\n")  # a blank line is skipped
    (root / "captions.csv").write_text("file,caption\n" + "".join(f'p{i}.png,"{c}"\n' for i, c in enumerate(captions[6:9])))
    (root / "captions.jsonl").write_text("".join(json.dumps({"path": f"q{i}.png", "text": c}) + "\n"
                                                 for i, c in enumerate(captions[9:])))
    return captions, [root / "captions.txt", root / "captions.csv", root / "captions.jsonl"]


def test_command_makes_a_folder_transformers_and_the_model_load(tmp_path, capsys):
    from transformers import AutoModel, AutoTokenizer

    from nuwa_ds.model.text import load_text_encoder
    from nuwa_ds.text_encoder import read_captions

    captions, files = caption_files(tmp_path)
    assert read_captions(files) == captions  # every format, in order, through prepare's reader for csv/jsonl
    args = ["text-encoder", "--captions", *map(str, files), "--mlm-steps", "100", "--batch-size", "16"]
    assert main([*args, "--out", str(tmp_path / "te")]) == 0
    assert "train.text_encoder_path=" in capsys.readouterr().out
    report = json.loads((tmp_path / "te" / "text_encoder.json").read_text())

    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "te", local_files_only=True)
    assert len(tokenizer) == report["vocab_size"] < 100  # what these captions need: their words and characters
    for caption in captions:  # every caption word is one token: the round trip is exact
        ids = tokenizer(caption)["input_ids"]
        assert tokenizer.unk_token_id not in ids and ids[0] == tokenizer.cls_token_id
        assert tokenizer.decode(ids, skip_special_tokens=True) == caption
    assert tokenizer.unk_token_id not in tokenizer("a greyish skyline")["input_ids"]  # spelled from characters
    encoder = AutoModel.from_pretrained(tmp_path / "te", local_files_only=True)
    assert type(encoder).__name__ == "BertModel" and encoder.config.hidden_size == report["config"]["hidden_size"]
    project_encoder, project_tokenizer = load_text_encoder(str(tmp_path / "te"))
    batch = project_tokenizer(captions[:2], padding=True, return_tensors="pt")
    with torch.no_grad():
        assert torch.equal(project_encoder(**batch).last_hidden_state, encoder(**batch).last_hidden_state)

    mlm = report["mlm"]  # pre-training learned the captions: far below chance (log vocab) and the start
    assert mlm["loss_before"] > 0.8 * mlm["chance_loss"] and mlm["loss_after"] < 0.5 * mlm["loss_before"]
    # the same captions make the same tokenizer (token ids) in another process run
    assert main([*args[:-4], "--mlm-steps", "0", "--out", str(tmp_path / "again")]) == 0
    assert AutoTokenizer.from_pretrained(tmp_path / "again").get_vocab() == tokenizer.get_vocab()
    assert "loss_after" not in json.loads((tmp_path / "again" / "text_encoder.json").read_text())["mlm"]


@pytest.mark.parametrize("content, suffix, message", [
    ("\n  \n", ".txt", "holds no caption"),
    ("file,caption\n", ".csv", "holds no caption"),
    ("file,colour\na.png,red\n", ".csv", "need a path column"),
    ("file,caption\na.png,a sky, at dusk\n", ".csv", "line 2: more fields than the header"),
    ("a red sky\n", ".md", "use .txt"),
    (None, ".txt", "does not exist"),
])
def test_bad_captions_fail_clearly(tmp_path, capsys, content, suffix, message):
    path = tmp_path / f"caps{suffix}"
    if content is not None:
        path.write_text(content)
    assert main(["text-encoder", "--captions", str(path), "--out", str(tmp_path / "te")]) == 2
    assert message in capsys.readouterr().err and not (tmp_path / "te").exists()


def test_refuses_to_overwrite_and_a_too_small_vocabulary(tmp_path, capsys):
    (tmp_path / "c.txt").write_text("a red sky\n")
    base = ["text-encoder", "--captions", str(tmp_path / "c.txt"), "--out", str(tmp_path / "te"), "--mlm-steps", "0"]
    assert main([*base, "--vocab-size", "10"]) == 2 and "vocab_size 10 is too small" in capsys.readouterr().err
    assert main(base) == 0
    assert main(base) == 2 and "--overwrite" in capsys.readouterr().err
    assert main([*base, "--overwrite"]) == 0


def test_an_encoder_with_fewer_positions_than_max_text_len_is_refused(tmp_path):
    from nuwa_ds import NuwaConfig, NuwaInfinity
    from nuwa_ds.train import check_text_encoder

    (tmp_path / "c.txt").write_text("a red sky\n")
    assert main(["text-encoder", "--captions", str(tmp_path / "c.txt"), "--out", str(tmp_path / "te"),
                 "--mlm-steps", "0", "--max-length", "32"]) == 0
    with pytest.raises(ValueError, match="set model.max_text_len=32"):
        check_text_encoder(str(tmp_path / "te"), 64)  # train's preflight, before any rank starts
    with pytest.raises(ValueError, match="set model.max_text_len=32"):
        NuwaInfinity(NuwaConfig.preset("tiny")).attach_text_encoder(str(tmp_path / "te"))
    model = NuwaInfinity(NuwaConfig.preset("tiny", max_text_len=32)).attach_text_encoder(str(tmp_path / "te"))
    assert model(torch.zeros(1, 1, 8, 8, dtype=torch.long), text=["a red sky"]).loss.isfinite()
    with pytest.raises(ValueError, match="has no config.json"):
        check_text_encoder(str(tmp_path), 32)


def write_pictures(root, count: int = 12) -> None:
    """64x64 pictures (8x8 tokens with an f8 tokenizer): a sky colour over a ground colour, captioned so."""
    rng = np.random.default_rng(0)
    (root / "pics").mkdir()
    rows = ["file,caption"]
    names = [(s, g) for s in SKIES for g in GROUNDS]
    for i in range(count):
        sky, ground = names[i % len(names)]
        picture = np.empty((64, 64, 3), np.uint8)
        picture[:32], picture[32:] = SKIES[sky], GROUNDS[ground]
        picture = np.clip(picture + rng.integers(-10, 10, picture.shape), 0, 255).astype(np.uint8)
        Image.fromarray(picture).save(root / "pics" / f"p{i:02d}.png")
        rows.append(f"p{i:02d}.png,a {sky} sky over {ground} ground")
    (root / "captions.csv").write_text("\n".join(rows) + "\n")


@pytest.mark.slow
def test_two_ranks_train_with_a_made_text_encoder_and_the_export_generates_alone(tmp_path, capsys):
    from safetensors.torch import load_file
    from test_train_utils import records, run, train_cmd
    from transformers import AutoTokenizer

    from nuwa_ds.tokenizer import VQConfig, VQTokenizer

    torch.manual_seed(0)
    VQTokenizer(VQConfig.preset("demo-f8", n_embed=256, ch=16, norm_groups=8)).eval().save_pretrained(tmp_path / "vq")
    write_pictures(tmp_path)
    assert main(["prepare", str(tmp_path / "pics"), "--out", str(tmp_path / "shards"), "--tokenizer",
                 str(tmp_path / "vq"), "--captions", str(tmp_path / "captions.csv"), "--image-size", "64",
                 "--patch-size", "4", "--shard-maxcount", "6", "--no-progress", "--device", "cpu"]) == 0
    text_dir = tmp_path / "text encoder"  # a space in the path, as users' folders have
    assert main(["text-encoder", "--captions", str(tmp_path / "captions.csv"), "--out", str(text_dir),
                 "--mlm-steps", "30"]) == 0
    capsys.readouterr()

    run_dir = tmp_path / "run"
    rc = run(train_cmd(2, run_dir, "train.steps=4", "train.save_every=4", "train.micro_batch_size=2",
                       "train.samples=0", f"data.shards={tmp_path}/shards/shard-{{000000..000001}}.tar",
                       f"train.text_encoder_path={text_dir}"), tmp_path / "log.txt")
    assert rc == 0, (tmp_path / "log.txt").read_text()[-3000:]
    losses = [r["loss"] for r in records(run_dir) if "loss" in r and "event" not in r]
    assert len(losses) == 4 and all(np.isfinite(losses))

    assert main(["export", str(run_dir), str(tmp_path / "export"), "--tokenizer", str(tmp_path / "vq"),
                 "--copy-tokenizer"]) == 0
    model_dir = tmp_path / "elsewhere" / "model"
    model_dir.parent.mkdir()
    shutil.move(tmp_path / "export", model_dir)
    # the export holds the frozen encoder's weights and the caption tokenizer, unchanged
    weights = load_file(model_dir / "model.safetensors")
    for name, value in load_file(text_dir / "model.safetensors").items():
        assert torch.equal(weights[f"text_encoder.{name}"], value), name
    caption = "a red sky over grey ground"
    made = AutoTokenizer.from_pretrained(text_dir)(caption)["input_ids"]
    assert AutoTokenizer.from_pretrained(model_dir / "text_tokenizer")(caption)["input_ids"] == made
    shutil.rmtree(text_dir)
    shutil.rmtree(run_dir)
    shutil.rmtree(tmp_path / "vq")

    from nuwa_ds import NuwaInfinity

    model = NuwaInfinity.from_pretrained(model_dir)  # the text path is live: the caption changes the logits
    tokens = torch.randint(0, model.config.vocab_size, (1, 1, 8, 8))
    with torch.no_grad():
        red, blue, none = (model(tokens, text=text).logits for text in ([caption], ["a blue sky"], None))
    assert not torch.allclose(red, blue) and not torch.allclose(red, none)
    for extra in ([], ["--cfg-scale", "3.0"]):
        out = tmp_path / f"picture{len(extra)}.png"
        assert main(["generate", str(model_dir), "--task", "text2image", "--prompt", caption, "--size", "64x32",
                     "--out", str(out), *extra]) == 0, capsys.readouterr().err
        with Image.open(out) as picture:
            assert picture.size == (64, 32)
