"""nuwa-ds eval: the FID Inception in the pytorch-fid layout, Fréchet distance, FID / Block-FID of
image folders, clear errors, and the command end to end.

No real Inception weights here (users supply them): the network is given random weights, saved in
the pytorch-fid format (a plain state dict written by torch.save) and loaded back through the user
path. Images are small crops of scikit-image photographs and textures plus noise."""

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from nuwa_ds.evaluate import compute_block_fid, compute_fid, evaluate
from nuwa_ds.metrics.fid import FeatureStats, frechet_distance
from nuwa_ds.metrics.images import count_blocks, cut_blocks
from nuwa_ds.metrics.inception import (FID_WEIGHTS_URL, NUM_PARAMETERS, FIDInceptionV3, load_fid_inception,
                                       read_state_dict)

# ---------------------------------------------------------------- the pytorch-fid key set, written down
# from pytorch-fid's fid_inception_v3() (torchvision Inception3 with num_classes=1008, aux_logits=False,
# Mixed_5b..7c replaced by FIDInceptionA/C/E_1/E_2): every BasicConv2d and its branch names.
_A = ["branch1x1", "branch5x5_1", "branch5x5_2", "branch3x3dbl_1", "branch3x3dbl_2", "branch3x3dbl_3", "branch_pool"]
_B = ["branch3x3", "branch3x3dbl_1", "branch3x3dbl_2", "branch3x3dbl_3"]
_C = ["branch1x1", "branch7x7_1", "branch7x7_2", "branch7x7_3", "branch7x7dbl_1", "branch7x7dbl_2",
      "branch7x7dbl_3", "branch7x7dbl_4", "branch7x7dbl_5", "branch_pool"]
_D = ["branch3x3_1", "branch3x3_2", "branch7x7x3_1", "branch7x7x3_2", "branch7x7x3_3", "branch7x7x3_4"]
_E = ["branch1x1", "branch3x3_1", "branch3x3_2a", "branch3x3_2b", "branch3x3dbl_1", "branch3x3dbl_2",
      "branch3x3dbl_3a", "branch3x3dbl_3b", "branch_pool"]
_BLOCKS = {"Mixed_5b": _A, "Mixed_5c": _A, "Mixed_5d": _A, "Mixed_6a": _B, "Mixed_6b": _C, "Mixed_6c": _C,
           "Mixed_6d": _C, "Mixed_6e": _C, "Mixed_7a": _D, "Mixed_7b": _E, "Mixed_7c": _E}
_STEM = ["Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "Conv2d_3b_1x1", "Conv2d_4a_3x3"]
_CONVS = _STEM + [f"{block}.{branch}" for block, branches in _BLOCKS.items() for branch in branches]
PYTORCH_FID_KEYS = {f"{conv}.{leaf}" for conv in _CONVS
                    for leaf in ("conv.weight", "bn.weight", "bn.bias", "bn.running_mean", "bn.running_var")}
PYTORCH_FID_KEYS |= {"fc.weight", "fc.bias"}


def random_fid_state_dict(seed: int = 0) -> dict:
    """A FID Inception with random but well-scaled weights (He init, non-trivial BatchNorm stats),
    so features are O(1) and differ between image sets."""
    gen = torch.Generator().manual_seed(seed)
    net = FIDInceptionV3()
    for module in net.modules():
        if isinstance(module, torch.nn.Conv2d):
            fan_in = module.weight[0].numel()
            module.weight.copy_(torch.randn(module.weight.shape, generator=gen) * (2.0 / fan_in) ** 0.5)
        elif isinstance(module, torch.nn.BatchNorm2d):
            n = module.num_features
            module.weight.copy_(0.5 + torch.rand(n, generator=gen))
            module.bias.copy_(0.1 * torch.randn(n, generator=gen))
            module.running_mean.copy_(0.1 * torch.randn(n, generator=gen))
            module.running_var.copy_(0.5 + torch.rand(n, generator=gen))
    return net.state_dict()


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("weights") / "pt_inception-random.pth"
    torch.save(random_fid_state_dict(), path)  # what pytorch-fid's file is: torch.save of a plain dict
    return path


@pytest.fixture(scope="module")
def network(weights_file):
    return load_fid_inception(weights_file)


def _photos():
    from skimage import data

    return [data.astronaut(), data.coffee(), data.chelsea(), data.rocket()]


def _textures():
    from skimage import data

    return [np.repeat(t()[..., None], 3, axis=2) for t in (data.brick, data.grass, data.gravel)]


def write_crops(folder, sources, count, size, noise, seed, names="img{:02d}.png"):
    """``count`` random (h, w) crops of the source pictures + Gaussian noise, as PNG files."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    h, w = size
    for i in range(count):
        src = sources[i % len(sources)]
        y, x = rng.integers(0, src.shape[0] - h), rng.integers(0, src.shape[1] - w)
        crop = src[y:y + h, x:x + w].astype(np.float64) + rng.normal(0, noise, (h, w, 3))
        Image.fromarray(np.clip(crop, 0, 255).astype(np.uint8)).save(folder / names.format(i))
    return folder


# ---------------------------------------------------------------- the network and its weights file

def test_pytorch_fid_state_dict_round_trip(tmp_path, weights_file):
    """A pytorch-fid-format file loads with no missing / unexpected keys; key set, shapes and
    parameter count are those of the reference network."""
    state = torch.load(weights_file, weights_only=True)
    keys = {k for k in state if not k.endswith("num_batches_tracked")}
    assert keys == PYTORCH_FID_KEYS and len(keys) == 472
    assert tuple(state["Mixed_7c.branch_pool.conv.weight"].shape) == (192, 2048, 1, 1)
    assert tuple(state["Conv2d_1a_3x3.conv.weight"].shape) == (32, 3, 3, 3)
    assert tuple(state["fc.weight"].shape) == (1008, 2048)

    net = load_fid_inception(weights_file)
    assert sum(p.numel() for p in net.parameters()) == NUM_PARAMETERS  # torchvision's count, adjusted
    with torch.device("meta"):
        missing, unexpected = FIDInceptionV3().load_state_dict(state, strict=True, assign=True)
    assert not missing and not unexpected
    for key, value in net.state_dict().items():
        assert torch.equal(value, state[key]), key

    # files without BatchNorm counters (older torch) and safetensors files load the same tensors
    from safetensors.torch import save_file

    no_counters = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    save_file(no_counters, str(tmp_path / "w.safetensors"))
    torch.save(no_counters, tmp_path / "w.pth")
    for path in (tmp_path / "w.safetensors", tmp_path / "w.pth"):
        loaded = load_fid_inception(path).state_dict()
        assert all(torch.equal(loaded[k], v) for k, v in no_counters.items())


def test_network_shapes_follow_the_reference():
    """Spatial sizes along the network for any input size (resized to 299: as in torchvision's
    comments), traced on the meta device (shapes only, no compute)."""
    with torch.device("meta"):
        net = FIDInceptionV3()
    shapes = {}
    for name in ("Conv2d_4a_3x3", "Mixed_5d", "Mixed_6e", "Mixed_7c"):
        getattr(net, name).register_forward_hook(
            lambda module, inputs, out, name=name: shapes.__setitem__(name, tuple(out.shape[1:])))
    features = net(torch.empty(2, 3, 50, 70, device="meta"))
    assert shapes == {"Conv2d_4a_3x3": (192, 71, 71), "Mixed_5d": (288, 35, 35), "Mixed_6e": (768, 17, 17),
                      "Mixed_7c": (2048, 8, 8)}
    assert features.shape == (2, 2048)


def test_missing_or_wrong_weights_give_clear_errors(tmp_path):
    (tmp_path / "a").mkdir()
    missing = tmp_path / "nowhere" / "pt_inception.pth"
    with pytest.raises(FileNotFoundError) as exc:
        compute_fid(tmp_path / "a", tmp_path / "a", missing)  # weights are checked before anything else
    assert str(missing) in str(exc.value) and FID_WEIGHTS_URL in str(exc.value)

    not_torch = tmp_path / "notes.pth"
    not_torch.write_text("not a weights file")
    with pytest.raises(ValueError, match="not a readable weights file"):
        read_state_dict(not_torch)

    torchvision_like = tmp_path / "inception_v3_google.pth"
    torch.save({"AuxLogits.fc.weight": torch.zeros(1000, 768), "fc.weight": torch.zeros(1000, 2048)}, torchvision_like)
    with pytest.raises(ValueError) as exc:
        load_fid_inception(torchvision_like)
    message = str(exc.value)
    assert "torchvision" in message and "missing (471)" in message and "AuxLogits.fc.weight" in message
    assert FID_WEIGHTS_URL in message


# ---------------------------------------------------------------- statistics and the Fréchet distance

def test_feature_stats_streaming_matches_numpy():
    rng = np.random.default_rng(0)
    rows = rng.normal(3.0, 2.0, (300, 16))
    stats = FeatureStats(16, keep_rows_up_to=100)
    for i, chunk in enumerate(np.split(rows, [1, 7, 50, 51, 200])):  # uneven batches, two of one row
        stats.update(torch.from_numpy(chunk) if i == 2 else chunk)  # numpy or torch rows
    np.testing.assert_allclose(stats.mean, rows.mean(0), rtol=1e-12)
    np.testing.assert_allclose(stats.cov, np.cov(rows, rowvar=False), rtol=1e-10)
    assert stats._rows is None  # 300 > 100 rows: switched to moments only

    # statistics files: ours (mu, sigma, count, rows while kept) and pytorch-fid's (mu, sigma only)
    small = FeatureStats(16)
    small.update(rows[:10])
    for original in (stats, small):
        for arrays in (original.arrays(), {k: original.arrays()[k] for k in ("mu", "sigma")}):
            restored = FeatureStats.from_arrays(arrays)
            np.testing.assert_allclose(restored.cov, original.cov, rtol=1e-12)
            assert abs(frechet_distance(restored, original)) < 1e-8 * np.trace(original.cov)
    assert FeatureStats.from_arrays(small.arrays())._rows is not None  # exact low-rank factor kept


def test_frechet_distance_exact_and_methods_agree():
    rng = np.random.default_rng(1)
    d = 64

    def stats_of(rows, keep=None):
        s = FeatureStats(d, keep_rows_up_to=keep)
        s.update(rows)
        return s

    # closed form for diagonal covariances: |mu_a - mu_b|^2 + sum (sqrt(a_i) - sqrt(b_i))^2
    var_a, var_b = rng.uniform(0.5, 2.0, d), rng.uniform(0.5, 2.0, d)
    a = FeatureStats(d, count=11, mean=np.zeros(d), _m2=np.diag(var_a) * 10, _rows=None)
    b = FeatureStats(d, count=11, mean=np.full(d, 0.5), _m2=np.diag(var_b) * 10, _rows=None)
    exact = 0.25 * d + np.sum((np.sqrt(var_a) - np.sqrt(var_b)) ** 2)
    assert frechet_distance(a, b) == pytest.approx(exact, rel=1e-10)
    assert frechet_distance(a, b, method="sqrtm") == pytest.approx(exact, rel=1e-8)

    # few samples (rank-deficient covariances: the kept-rows path) and many samples (eigh path)
    for n_a, n_b in ((20, 30), (500, 400), (20, 400)):
        x = rng.normal(0, 1, (n_a, d)) @ rng.normal(0, 0.3, (d, d))
        y = rng.normal(0.2, 1, (n_b, d)) @ rng.normal(0, 0.3, (d, d))
        fast = frechet_distance(stats_of(x), stats_of(y))
        dense = frechet_distance(stats_of(x, keep=0), stats_of(y, keep=0))  # eigh of full covariances
        reference = frechet_distance(stats_of(x), stats_of(y), method="sqrtm")
        assert fast == pytest.approx(reference, rel=1e-6) and dense == pytest.approx(reference, rel=1e-6)
        assert frechet_distance(stats_of(x), stats_of(x)) == pytest.approx(0.0, abs=1e-9 * np.trace(np.cov(x.T)))

    with pytest.raises(ValueError, match="at least 2"):
        frechet_distance(stats_of(x[:1]), stats_of(y))


# ---------------------------------------------------------------- FID of folders, Block-FID blocks

@pytest.mark.slow
def test_fid_of_folder_with_itself_is_zero_and_other_folder_is_far(tmp_path, network):
    photos = write_crops(tmp_path / "photos", _photos(), count=8, size=(64, 96), noise=4.0, seed=0)
    # the same pictures under other names (other order): features must not depend on the file order
    renamed = tmp_path / "renamed"
    renamed.mkdir()
    for i, path in enumerate(sorted(photos.iterdir())):
        shutil.copy(path, renamed / f"z{7 - i}.png")
    textures = write_crops(tmp_path / "textures", _textures(), count=8, size=(64, 96), noise=20.0, seed=1)

    with pytest.warns(UserWarning, match="8 samples; fewer than 2048"):
        self_fid = evaluate(photos, renamed, network, batch_size=8, save_stats=tmp_path / "stats")["fid"]
    other_fid = compute_fid(tmp_path / "stats" / "real.npz", textures, network, batch_size=8)
    assert other_fid > 0 and np.isfinite(other_fid)
    assert abs(self_fid) < 1e-3 * other_fid


def test_blocks_are_non_overlapping_raster_crops_with_remainders_dropped():
    image = torch.arange(3 * 150 * 200, dtype=torch.int32).reshape(3, 150, 200)
    blocks = cut_blocks(image, 64)
    assert blocks.shape == (6, 3, 64, 64) == (count_blocks(150, 200, 64), 3, 64, 64)
    for i, block in enumerate(blocks):
        r, c = divmod(i, 3)
        assert torch.equal(block, image[:, r * 64:(r + 1) * 64, c * 64:(c + 1) * 64])
    assert cut_blocks(image, 151).shape[0] == 0


def test_bad_options_and_folders_fail_before_any_work(tmp_path, weights_file):
    photos = write_crops(tmp_path / "p", _photos(), count=2, size=(40, 40), noise=1.0, seed=0)
    with pytest.raises(ValueError, match="block size"):
        compute_block_fid(photos, photos, weights_file, block_size=0)
    with pytest.raises(ValueError, match="yields 0 block"):
        compute_block_fid(photos, photos, weights_file, block_size=64)
    with pytest.raises(FileNotFoundError, match="image folder not found"):
        compute_fid(photos, tmp_path / "missing", weights_file)
    (tmp_path / "one").mkdir()
    shutil.copy(next(photos.iterdir()), tmp_path / "one")
    with pytest.raises(ValueError, match="at least 2"):
        compute_fid(photos, tmp_path / "one", weights_file)
    stats = FeatureStats(4)
    stats.update(np.eye(4))
    stats.save(tmp_path / "whole_images_only.npz")
    with pytest.raises(ValueError, match="no Block-FID statistics for 64px"):
        compute_block_fid(tmp_path / "whole_images_only.npz", photos, weights_file, block_size=64)


# ---------------------------------------------------------------- the command

@pytest.mark.slow
def test_eval_command_end_to_end(tmp_path, weights_file, capsys):
    """FID + Block-FID on a few large images through ``nuwa-ds eval``; statistics reused from .npz."""
    from nuwa_ds.cli import main

    # two images per side: 128x192 is 1x2 blocks of 96 px exactly; 150x200 is 1x2 blocks + remainders
    real, fake = tmp_path / "real", tmp_path / "fake"
    for folder, sources, noise, seed in ((real, _photos(), 4.0, 2), (fake, _textures(), 20.0, 3)):
        write_crops(folder, sources, count=1, size=(128, 192), noise=noise, seed=seed, names="a{}.png")
        write_crops(folder, sources, count=1, size=(150, 200), noise=noise, seed=seed + 10, names="b{}.jpg")
    out = tmp_path / "eval" / "result.json"
    args = ["eval", "--real", str(real), "--fake", str(fake), "--inception-weights", str(weights_file),
            "--block-size", "96", "--batch-size", "16", "--device", "cpu", "--quiet", "--out", str(out),
            "--save-stats", str(tmp_path / "stats")]
    assert main(args) == 0
    printed = capsys.readouterr()
    result = json.loads(out.read_text())
    assert result["real"]["images"] == 2 and result["real"]["blocks"] == 2 + 2
    assert result["fake"]["block_fid_samples"] == 4 and result["fake"]["fid_samples"] == 2
    assert result["fid"] > 0 and result["block_fid"] > 0 and result["block_size"] == 96
    assert f"FID {result['fid']:.4f}" in printed.out and f"Block-FID@96 {result['block_fid']:.4f}" in printed.out
    assert "not the pytorch-fid file" in printed.err  # random weights: scores flagged as not comparable
    assert "warning: real block-fid: 4 samples; fewer than 2048" in printed.err
    assert len(result["warnings"]) == 4  # real/fake x FID/Block-FID: all far below 2048 samples

    # the saved statistics stand in for the folders and give the same scores without features
    stats = tmp_path / "stats"
    with pytest.warns(UserWarning):
        again = evaluate(stats / "real.npz", stats / "fake.npz", weights_file, block_size=96)
    assert again["fid"] == pytest.approx(result["fid"], rel=1e-6)
    assert again["block_fid"] == pytest.approx(result["block_fid"], rel=1e-6)

    # bad input through the command: a clear message and exit code 2, no traceback
    assert main(args[:5] + ["--inception-weights", str(tmp_path / "none.pth")]) == 2
    assert "pytorch-fid/releases" in capsys.readouterr().err


def test_eval_says_plainly_when_a_statistics_file_has_no_count(tmp_path, weights_file, capsys):
    """A pytorch-fid ``.npz`` holds mu and sigma only: the printed line says the count is unknown."""
    from nuwa_ds.cli import main

    rng = np.random.default_rng(0)
    for name, shift in (("ours", 0.0), ("theirs", 0.5)):
        stats = FeatureStats(2048)
        stats.update(rng.normal(shift, 1.0, size=(40, 2048)))
        arrays = stats.arrays() if name == "ours" else {k: stats.arrays()[k] for k in ("mu", "sigma")}
        np.savez(tmp_path / f"{name}.npz", **arrays)
    assert main(["eval", "--real", str(tmp_path / "theirs.npz"), "--fake", str(tmp_path / "ours.npz"),
                 "--inception-weights", str(weights_file), "--device", "cpu", "--quiet"]) == 0
    line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("FID "))
    assert "(real: number of images unknown (pytorch-fid statistics file), fake 40 images)" in line
    assert "?" not in line
