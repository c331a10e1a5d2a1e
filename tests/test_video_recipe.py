"""`nuwa-ds recipe landscape-videos` end to end on CPU with tiny budgets: clips, text encoder, tokenizer,
shards, training with the text encoder, export, text-to-image / text-to-video / animation and the
report's scores beside their floors and ceilings."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

pytestmark = pytest.mark.slow


def test_video_recipe_runs_every_stage_and_reports_floors(tmp_path):
    out = tmp_path / "video-recipe"
    # tokenizer / text encoder steps: neither is scored here (the export must carry the encoder it was
    # given, whatever its training); 2 steps each still train, save and evaluate them. micro_batch: nothing
    # scores the model (10 steps stay inside the warm-up); 2 clips a step, not 8
    # val_clips > videos: text-to-image prompts go round every held-out caption, videos take the first ones;
    # long_factor 2 (the presets: 4): drawing is most of this test's time, and twice the training length
    # still scores frames the model never saw in one clip
    sets = ["train_clips=24", "val_clips=6", "videos=4", "image_prompts=6", "tokenizer_clips=8",
            "tokenizer_steps=2", "text_mlm_steps=2", "train_steps=10", "eval_every=5", "micro_batch=2", "workers=2",
            "cfg_scales=[1, 3]", "video_temperatures=[0.5]", "long_factor=2", "freeze_text_encoder=true"]
    cmd = [sys.executable, "-m", "nuwa_ds.cli", "recipe", "landscape-videos", "--preset", "cpu", "--out", str(out),
           "--device", "cpu"] + [a for s in sets for a in ("--set", s)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert set(report["stage_seconds"]) == {"1 clips", "2 text encoder", "3 tokenizer", "4 shards", "5 train",
                                            "6 export + generate", "7 eval"}
    assert report["clips"] == {"train": 24, "val": 6, "train_frames": 4, "val_frames": 8}
    assert report["train"]["steps"] == 10 and [e["step"] for e in report["train"]["val"]] == [5, 10]
    # the export carries the text path: its tokenizer and the encoder's weights
    assert "text_tokenizer" in report["export"]["files"]
    assert report["animation_first_frame_tokens_kept"] is True
    # ZeRO-1 records no frozen parameters (DeepSpeed's converter drops them): export takes the frozen
    # encoder from the module states, and it is the encoder the run was given
    from safetensors.torch import load_file
    exported, encoder = load_file(str(out / "model" / "model.safetensors")), \
        load_file(str(out / "text_encoder" / "model.safetensors"))
    assert report["settings"]["ds_config"] == "zero1" and len(encoder) > 10
    for name, value in encoder.items():
        assert torch.equal(exported[f"text_encoder.{name}"], value), name

    ev = report["eval"]
    # where the evaluation's time goes, part by part (a run cut by its limit says what it was doing)
    assert set(ev["seconds"]) == {"per_frame_bits", "per_frame_bits_long", "per_frame_bits_shards",
                                  "caption_likelihood", "attributes",
                                  "text2video", "animation", "continuation", "t0.5_attributes", "t0.5_text2video",
                                  "t0.5_animation"} and all(v >= 0 for v in ev["seconds"].values())
    # the model's own reading of each caption word (the class whose caption makes the clip likeliest)
    cl = ev["caption_likelihood"]
    assert cl["clips"] == 6 and {"sky", "sun", "motion"} <= set(cl)
    for key in ("sky", "sun", "motion"):
        table = cl[key]["confusion"]
        assert sum(sum(row.values()) for row in table.values()) == 6 and 0 < cl[key]["chance"] <= 1
        assert cl[key]["accuracy"] == pytest.approx(sum(row.get(t, 0) for t, row in table.items()) / 6)
    sun = cl["sun_tokens"]  # held-out clips 3-5 ask for the sun on the left
    assert sun["clips"] >= 1 and sun["tokens_per_clip"] >= 1
    assert set(sun["over_the_sun"]) == set(sun["elsewhere_in_frame_0"]) == {"true_caption", "no_sun_caption"}
    ti = ev["text2image_attributes"]
    assert set(ti["by_cfg_scale"]) == {"1", "3"} and ti["by_cfg_scale"]["3"]["count"] == 6
    assert set(ti["real"]["per_attribute"]) == {"sky", "sun"}
    for scores in (ti["by_cfg_scale"]["3"], ti["real"]):  # the confusion tables add up to the accuracies
        for key, table in scores["confusion"].items():
            assert sum(sum(row.values()) for row in table.values()) == scores["count"]
            right = sum(row.get(asked, 0) for asked, row in table.items())
            assert right / scores["count"] == pytest.approx(scores["per_attribute"][key])
    tv = ev["text2video_attributes"]
    assert set(tv["text2video"]["per_attribute"]) == {"sky", "sun", "motion"}
    assert 0 < tv["chance"]["mean"] <= 1
    for name in ("text2video", "animation"):
        rows = ev[name]["swd"]["summary"]
        assert {"real_a", "fake", "recon", "random_tokens"} <= set(rows)
        assert len(ev[name]["swd"]["rows"]["fake"]) == 8  # one SWD per frame index of the 2x longer clips
        assert rows["real_a"]["mean"] < rows["random_tokens"]["mean"]  # floor below ceiling
        assert {"real", "fake", "shuffled_real"} <= set(ev[name]["temporal"]["sets"])
    assert ev["animation"]["temporal"]["truth"]["real"]["clips_scored"] >= 1
    # continuation: frames 0-1 given and kept, scored paired from frame 1 on against the true pan
    cont = ev["continuation"]
    assert report["continuation_given_frames_tokens_kept"] is True and cont["given_frames"] == 2
    assert len(cont["video"]["swd"]["rows"]["fake"]) == 7 and cont["attributes"]["count"] == 4
    assert cont["video"]["temporal"]["truth"]["fake"]["clips_scored"] >= 1
    pf = ev["per_frame_bits"]   # teacher-forced on held-out clips of the training length
    assert pf["clips"] == 6 and len(pf["all"]) == 4 and 0 <= pf["repeats_previous"]["share"] <= 1
    assert set(pf["caption"]) == {"own", "other_clip", "none"} and all(len(v) == 4 for v in pf["caption"].values())
    assert pf["caption"]["own"] == pf["all"] and pf["caption"]["none"] != pf["caption"]["own"]
    long = ev["per_frame_bits_long"]  # the whole held-out clips: frames past the training length too
    assert long["clips"] == 6 and len(long["all"]) == 8 and set(long["caption"]) == {"own"}
    assert long["all"][:4] == pytest.approx(pf["all"], abs=1e-3)  # the frames before cannot see those after
    shards = ev["per_frame_bits_shards"]  # as many training and held-out clips, both read from the shards
    assert shards["train"]["clips"] == shards["val"]["clips"] == 6
    assert len(shards["train"]["all"]) == 4 and shards["train"]["all"] != shards["val"]["all"]

    # a further temperature: both video sets drawn again and measured as the main ones
    by_t = ev["by_temperature"]["0.5"]
    assert "text2image_attributes" not in by_t and set(by_t["text2video_attributes"]) == {"text2video", "animation"}
    assert set(by_t["text2video_attributes"]["animation"]["per_attribute"]) == {"sky", "sun", "motion"}
    for name in ("text2video", "animation"):
        assert len(by_t[name]["swd"]["rows"]["fake"]) == 8
        assert by_t[name]["swd"]["rows"]["real_a"] == ev[name]["swd"]["rows"]["real_a"]  # the same reference
        assert "recon" not in by_t[name]["swd"]["rows"]  # floors measured once, by the main sets
        assert by_t[name]["temporal"]["sets"]["fake"] != ev[name]["temporal"]["sets"]["fake"]
    for folder, count, frames in (("text2image_cfg3", 6, 1), ("text2video", 4, 8), ("animation", 4, 8),
                                  ("text2video_t0.5", 4, 8), ("animation_t0.5", 4, 8), ("continuation", 4, 8)):
        clips = sorted((out / "generated" / folder).iterdir())
        assert len(clips) == count and len(list(clips[0].glob("*.png"))) == frames
    with Image.open(clips[0] / "frame_000.png") as img:
        assert img.size == (64, 64)
    with Image.open(out / "overview.gif") as gif:
        assert gif.n_frames == 8

    # --from-stage generate: the trained run drawn and scored again; a setting of the trained stages that
    # differs is refused before anything is touched
    bad = subprocess.run(cmd + ["--from-stage", "generate", "--set", "train_steps=11"], capture_output=True, text=True,
                         timeout=300)
    assert bad.returncode != 0 and "train_steps (10 -> 11)" in bad.stderr
    assert (out / "generated" / "continuation").is_dir() and not (out / "report.previous.json").exists()
    again = subprocess.run(cmd + ["--from-stage", "generate", "--set", "video_temperatures=[]",
                                  "--set", "continuation_frames=3"], capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-3000:]
    resumed = json.loads((out / "report.json").read_text())
    assert json.loads((out / "report.previous.json").read_text()) == report
    assert resumed["train"] == report["train"] and resumed["resumed_from"]["earlier_settings"]["continuation_frames"] == 2
    assert set(resumed["stage_seconds"]) == set(report["stage_seconds"])
    assert "by_temperature" not in resumed["eval"] and resumed["eval"]["continuation"]["given_frames"] == 3
    # the same model, seeds and settings draw the same clips: every score of the main sets is repeated
    assert resumed["eval"]["text2video_attributes"] == ev["text2video_attributes"]
    assert resumed["eval"]["animation"]["swd"]["rows"] == ev["animation"]["swd"]["rows"]
    assert not (out / "generated" / "text2video_t0.5").exists()
    # a run whose checkpoint is gone is refused before its exported model or kept report is touched
    (out / "run").rename(out / "run.moved")
    gone = subprocess.run(cmd + ["--from-stage", "generate"], capture_output=True, text=True, timeout=300)
    assert gone.returncode != 0 and "run" in gone.stderr
    assert (out / "model" / "model.safetensors").is_file() and not (out / "report.previous.2.json").exists()

    # --from-stage train in another folder that links this run's prepared stages (as
    # scripts/gpu_video_variants.sh does): another model trained on the same shards with the same tokenizer
    # and text encoder; a setting the shards or the tokenizer fix is refused before anything runs
    (out / "run.moved").rename(out / "run")
    variant = tmp_path / "variant"
    variant.mkdir()
    for name in ("shards", "tokenizer", "text_encoder"):
        (variant / name).symlink_to(out / name)
    shutil.copyfile(out / "report.json", variant / "report.json")
    vcmd = [variant if part == str(out) else part for part in cmd] + ["--from-stage", "train"]
    vcmd = [str(part) for part in vcmd]
    for setting, named in (("model.patch_size=2", "model.patch_size (4 -> 2)"), ("val_clips=5", "val_clips (6 -> 5)")):
        refused = subprocess.run(vcmd + ["--set", setting], capture_output=True, text=True, timeout=300)
        assert refused.returncode != 0 and named in refused.stderr, refused.stderr[-2000:]
    assert not (variant / "report.previous.json").exists()
    cheap = ["train_steps=4", "eval_every=4", "model.context_noise=0.1", "image_prompts=2", "cfg_scales=[1]",
             "video_temperatures=[]", "continuation_frames=0", "freeze_text_encoder=false"]
    trained = subprocess.run(vcmd + [a for s in cheap for a in ("--set", s)], capture_output=True, text=True, timeout=600)
    assert trained.returncode == 0, trained.stdout[-2000:] + trained.stderr[-3000:]
    vr = json.loads((variant / "report.json").read_text())
    assert vr["resumed_from"]["stage"] == "5 train" and vr["settings"]["model"]["context_noise"] == 0.1
    assert vr["train"]["steps"] == 4 and vr["clips"] == resumed["clips"] and vr["tokenizer"] == resumed["tokenizer"]
    assert set(vr["stage_seconds"]) == set(report["stage_seconds"])
    assert len(vr["eval"]["per_frame_bits_long"]["all"]) == 8
    assert (variant / "model" / "model.safetensors").is_file() and (variant / "run").is_dir()
    # this one trained the encoder it was given (the presets' default): its export carries the trained weights
    trained_encoder = load_file(str(variant / "model" / "model.safetensors"))
    assert any(not torch.equal(trained_encoder[f"text_encoder.{name}"], value) for name, value in encoder.items())
    assert json.loads((out / "report.json").read_text()) == resumed  # the run it reused is untouched

    # the probe on a finished folder, over the run's own held-out clips, repeats the recipe's evaluation
    script = Path(__file__).resolve().parents[1] / "scripts" / "caption_likelihood_of_run.py"
    probe = subprocess.run([sys.executable, str(script), str(out), "--clips", "6"], capture_output=True, text=True,
                           timeout=300)
    assert probe.returncode == 0, probe.stderr[-2000:]
    read = json.loads(probe.stdout)
    assert read.pop("run") == "video-recipe" and read == resumed["eval"]["caption_likelihood"]


@pytest.mark.parametrize("value, ok", [("[0.7, 0.4]", (0.7, 0.4)), ("0.7", (0.7,)), ("[]", ()), ("[0.7, 0.70]", None),
                                       ("[1.0]", None), ("[-0.5]", None), ('["hot"]', None), ("null", None)])
def test_video_temperatures_are_checked_before_anything_runs(value, ok):
    """A bad list fails at once, not after the training (the further temperatures are drawn in stage 6);
    a duplicate, or the main temperature again, would overwrite the same folder and report key."""
    from nuwa_ds.video_recipe import settings_for

    if ok is None:
        with pytest.raises(ValueError, match="video_temperatures"):
            settings_for("cpu", [f"video_temperatures={value}"])
    else:
        assert settings_for("cpu", [f"video_temperatures={value}"]).video_temperatures == ok


@pytest.mark.parametrize("value, ok", [("0", True), ("2", True), ("15", True), ("1", False), ("16", False),
                                       ("true", False), ("2.5", False)])
def test_continuation_frames_are_checked_before_anything_runs(value, ok):
    """1 given frame is the animation set; as many as the videos have leave nothing to draw."""
    from nuwa_ds.video_recipe import settings_for

    if ok:
        assert settings_for("cpu", [f"continuation_frames={value}"]).continuation_frames == int(value)
    else:
        with pytest.raises(ValueError, match="continuation_frames"):
            settings_for("cpu", [f"continuation_frames={value}"])


def test_one_model_setting_is_set_and_the_others_kept():
    """``--set model.context_noise=0.05`` changes that entry of the preset's model table only."""
    from nuwa_ds.video_recipe import settings_for

    base = settings_for("cpu", []).model
    s = settings_for("cpu", ["model.context_noise=0.05", "model.aligned_bias_init=2"])
    assert s.model == {**base, "context_noise": 0.05, "aligned_bias_init": 2}
    with pytest.raises(ValueError, match="not a table"):
        settings_for("cpu", ["train_steps.x=1"])
    with pytest.raises(ValueError, match="unknown setting"):
        settings_for("cpu", ["modle.context_noise=0.05"])


def test_caption_likelihood_reads_each_attribute_by_the_likeliest_caption(tmp_path):
    """The model's reading of an attribute is the class whose rewritten caption gives the clip's tokens the
    fewest bits: checked against the bits of each caption computed one by one (a tiny model with random
    weights and a real text encoder, 4-frame clips of real held-out specs), and the sun's tokens cover the
    sun's disc."""
    import numpy as np

    from data_pipelines import landscape_video as LV
    from model_helpers import tiny_model, write_tiny_text_encoder
    from nuwa_ds.video_recipe import caption_likelihood, sun_token_mask, token_bits

    model = tiny_model(max_text_len=96).attach_text_encoder(write_tiny_text_encoder(tmp_path / "t5"))
    specs = LV.sample_clip_specs(8, split="val", frames=4, size=(64, 64), window=(512, 512), seed=3)
    tokens = torch.randint(0, model.config.vocab_size, (8, 2, 8, 8), generator=torch.Generator().manual_seed(0))
    got = caption_likelihood(model, tokens, specs, batch=3)  # batches that straddle the rewrites
    attrs = [LV.true_attributes(spec) for spec in specs]
    for key, classes in LV.ATTRIBUTES.items():
        totals = np.array([[float(token_bits(model, tokens[i:i + 1], [LV.caption({**a, key: c})]).sum())
                            for c in classes] for i, a in enumerate(attrs)])
        truth = np.array([classes.index(a[key]) for a in attrs])
        read = totals.argmin(1)
        assert got[key]["accuracy"] == pytest.approx(float(np.mean(read == truth)))
        wrong = totals.copy()
        wrong[np.arange(8), truth] = np.inf
        assert got[key]["gap_bits"] == pytest.approx(float(np.mean(wrong.min(1) - totals[np.arange(8), truth])),
                                                     abs=1e-3)
        assert got[key]["confusion"] == LV.confusion_table([(a[key], classes[r]) for a, r in zip(attrs, read)])
    suns = [i for i, spec in enumerate(specs) if LV.sun_disc(spec) is not None]
    assert suns and got["sun_tokens"]["clips"] == len(suns)
    for i in suns:  # the brightest disc the pixel reader finds lies in a masked cell
        u, v, _ = LV.find_sun(LV.render_frame(specs[i], 0))
        assert sun_token_mask(specs[i], (8, 8))[int(v * 8), int(u * 8)]
