"""The FID Inception-v3, in plain torch, with the parameter names of the pytorch-fid weights file.

FID numbers are only comparable when they come from the same network: the TensorFlow Inception of
2015-12-05 that the original FID code used. pytorch-fid ported it to PyTorch as
``pt_inception-2015-12-05-6726825d.pth`` (FID_WEIGHTS_URL). That port is torchvision's Inception-v3
with 1008 classes, no auxiliary head, and three TensorFlow quirks, which this file reproduces:

- the 3x3 average pools inside the A, C and first E blocks do not count the zero padding;
- the last E block (``Mixed_7c``) pools its pool branch with a 3x3 *max* pool;
- BatchNorm eps is 0.001.

Every module name below is the attribute name in that file (``Mixed_7c.branch_pool.conv.weight``
...), so the user's downloaded file loads with no renaming. We only need the 2048-d features of the
final average pool; ``fc`` is kept so that the file loads strictly (and a wrong file is caught).
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path
from typing import Union

import torch
import torch.nn.functional as F
from torch import nn

FID_WEIGHTS_URL = (
    "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth"
)
# torch.hub names weight files <name>-<first 8 hex digits of the file's sha256>.<ext>
FID_WEIGHTS_SHA256_PREFIX = "6726825d"
INPUT_SIZE = 299
FEATURE_DIM = 2048
NUM_CLASSES = 1008
# torchvision documents 27,161,264 parameters for Inception-v3 (1000 classes, with the aux head).
# Without the aux head (3,326,696) and with 1008 classes (+16,392): 23,850,960.
NUM_PARAMETERS = 23_850_960

__all__ = ["FIDInceptionV3", "load_fid_inception", "FID_WEIGHTS_URL", "FEATURE_DIM", "INPUT_SIZE"]


class BasicConv2d(nn.Module):
    """Conv (no bias) -> BatchNorm(eps=1e-3) -> ReLU; keys ``conv.weight``, ``bn.*``."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(out_channels, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)), inplace=True)


def _tf_avg_pool(x: torch.Tensor) -> torch.Tensor:
    # TensorFlow's padded average pool divides by the number of real (unpadded) inputs
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class InceptionA(nn.Module):
    """35x35 block: 1x1 | 1x1->5x5 | 1x1->3x3->3x3 | pool->1x1. Out: 224 + pool_features channels."""

    def __init__(self, in_channels: int, pool_features: int):
        super().__init__()
        self.branch1x1 = BasicConv2d(in_channels, 64, 1)
        self.branch5x5_1 = BasicConv2d(in_channels, 48, 1)
        self.branch5x5_2 = BasicConv2d(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, padding=1)
        self.branch_pool = BasicConv2d(in_channels, pool_features, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch1x1(x), b5, b3, self.branch_pool(_tf_avg_pool(x))], 1)


class InceptionB(nn.Module):
    """35x35 -> 17x17 reduction: stride-2 3x3 | 1x1->3x3->stride-2 3x3 | max pool. Out: 480 + in."""

    def __init__(self, in_channels: int):
        super().__init__()
        self.branch3x3 = BasicConv2d(in_channels, 384, 3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch3x3(x), b3, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class InceptionC(nn.Module):
    """17x17 block with factorised 7x7 convolutions (1x7 / 7x1) of width c7. Out: 768 channels."""

    def __init__(self, in_channels: int, channels_7x7: int):
        super().__init__()
        c7 = channels_7x7
        self.branch1x1 = BasicConv2d(in_channels, 192, 1)
        self.branch7x7_1 = BasicConv2d(in_channels, c7, 1)
        self.branch7x7_2 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(in_channels, c7, 1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, (1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(in_channels, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        b7dbl = self.branch7x7dbl_1(x)
        for conv in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
            b7dbl = conv(b7dbl)
        return torch.cat([self.branch1x1(x), b7, b7dbl, self.branch_pool(_tf_avg_pool(x))], 1)


class InceptionD(nn.Module):
    """17x17 -> 8x8 reduction. Out: 512 + in channels."""

    def __init__(self, in_channels: int):
        super().__init__()
        self.branch3x3_1 = BasicConv2d(in_channels, 192, 1)
        self.branch3x3_2 = BasicConv2d(192, 320, 3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(in_channels, 192, 1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = self.branch7x7x3_1(x)
        for conv in (self.branch7x7x3_2, self.branch7x7x3_3, self.branch7x7x3_4):
            b7 = conv(b7)
        return torch.cat([b3, b7, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class InceptionE(nn.Module):
    """8x8 block with split 1x3 / 3x1 outputs. Out: 2048 channels.

    ``max_pool``: the FID network's last block (Mixed_7c) pools its pool branch with a max pool
    (a quirk of the TF graph that pytorch-fid keeps); Mixed_7b uses the TF average pool."""

    def __init__(self, in_channels: int, max_pool: bool):
        super().__init__()
        self.max_pool = max_pool
        self.branch1x1 = BasicConv2d(in_channels, 320, 1)
        self.branch3x3_1 = BasicConv2d(in_channels, 384, 1)
        self.branch3x3_2a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 448, 1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(in_channels, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
        b3dbl = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        b3dbl = torch.cat([self.branch3x3dbl_3a(b3dbl), self.branch3x3dbl_3b(b3dbl)], 1)
        pooled = F.max_pool2d(x, kernel_size=3, stride=1, padding=1) if self.max_pool else _tf_avg_pool(x)
        return torch.cat([self.branch1x1(x), b3, b3dbl, self.branch_pool(pooled)], 1)


class FIDInceptionV3(nn.Module):
    """Images ``[B, 3, H, W]`` (float in [0, 1] or uint8; any H, W) -> pool features ``[B, 2048]``."""

    def __init__(self):
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, 3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, 1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, 3)
        self.Mixed_5b = InceptionA(192, pool_features=32)
        self.Mixed_5c = InceptionA(256, pool_features=64)
        self.Mixed_5d = InceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, channels_7x7=128)
        self.Mixed_6c = InceptionC(768, channels_7x7=160)
        self.Mixed_6d = InceptionC(768, channels_7x7=160)
        self.Mixed_6e = InceptionC(768, channels_7x7=192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280, max_pool=False)
        self.Mixed_7c = InceptionE(2048, max_pool=True)
        self.fc = nn.Linear(FEATURE_DIM, NUM_CLASSES)  # loaded, unused: FID reads the pool features
        self.eval()
        self.requires_grad_(False)

    @staticmethod
    def preprocess(images: torch.Tensor) -> torch.Tensor:
        """As pytorch-fid: bilinear resize to 299x299 (align_corners=False, no antialias), then
        [0, 1] -> [-1, 1]. [B, 3, H, W] -> [B, 3, 299, 299]."""
        x = F.interpolate(images, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False)
        return 2 * x - 1

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Preprocessed input [B, 3, 299, 299] -> [B, 2048]."""
        # channels-last: oneDNN / cuDNN NHWC convolutions (measured on CPU: 1.4-5x faster than NCHW)
        x = x.contiguous(memory_format=torch.channels_last)
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))  # [B, 64, 147, 147]
        x = F.max_pool2d(x, kernel_size=3, stride=2)  # [B, 64, 73, 73]
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))  # [B, 192, 71, 71]
        x = F.max_pool2d(x, kernel_size=3, stride=2)  # [B, 192, 35, 35]
        x = self.Mixed_5d(self.Mixed_5c(self.Mixed_5b(x)))  # [B, 288, 35, 35]
        x = self.Mixed_6a(x)  # [B, 768, 17, 17]
        x = self.Mixed_6e(self.Mixed_6d(self.Mixed_6c(self.Mixed_6b(x))))  # [B, 768, 17, 17]
        x = self.Mixed_7c(self.Mixed_7b(self.Mixed_7a(x)))  # [B, 2048, 8, 8]
        return x.mean(dim=(2, 3))  # adaptive average pool to 1x1: [B, 2048]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
        return self.features(self.preprocess(x))


def _missing_hint(path: Path) -> str:
    example = path.parent / FID_WEIGHTS_URL.rsplit("/", 1)[1]
    return (f"Download the pytorch-fid Inception weights from {FID_WEIGHTS_URL} and pass the local file, "
            f"e.g. --inception-weights {example}")


def read_state_dict(path: Union[str, Path]) -> dict[str, torch.Tensor]:
    """Read a weights file (``.pth``/``.pt`` plain state dict without pickle code, or
    ``.safetensors``). Raises FileNotFoundError / ValueError naming the file and where to get it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Inception weights file not found: {path}. {_missing_hint(path)}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling / header errors: the file is not a tensor file at all
        raise ValueError(f"{path} is not a readable weights file ({type(exc).__name__}: {exc}). "
                         f"{_missing_hint(path)}") from exc
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path} does not hold a plain state dict of tensors (as the pytorch-fid file does). "
                         f"{_missing_hint(path)}")
    return state


@functools.lru_cache(maxsize=1)
def expected_shapes() -> dict[str, tuple[int, ...]]:
    """Key -> shape of the FID Inception state dict (built on the meta device: no memory, no init)."""
    with torch.device("meta"):
        return {k: tuple(v.shape) for k, v in FIDInceptionV3().state_dict().items()}


def check_state_dict(state: dict[str, torch.Tensor], path: Union[str, Path] = "<state dict>") -> None:
    """Raise ValueError unless ``state`` has exactly the FID Inception's keys and shapes.
    BatchNorm's ``num_batches_tracked`` counters are optional (files written before torch 0.4.1
    lack them; they do not affect evaluation)."""
    expected = expected_shapes()
    optional = {k for k in expected if k.endswith("num_batches_tracked")}
    missing = sorted(set(expected) - set(state) - optional)
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(state) & set(expected) if tuple(state[k].shape) != expected[k])
    if not (missing or unexpected or wrong):
        return
    hint = ""
    if any(k.startswith("AuxLogits.") for k in unexpected) or ("fc.weight" in wrong):
        hint = (" This looks like torchvision's ImageNet Inception-v3 (aux head / 1000 classes), not the "
                "FID Inception: its FID values would not be comparable with published ones.")
    detail = "; ".join(f"{name} ({len(keys)}): {', '.join(keys[:4])}{' ...' if len(keys) > 4 else ''}"
                       for name, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong))
                       if keys)
    raise ValueError(f"{path} is not a pytorch-fid FID Inception state dict: {detail}.{hint} "
                     f"{_missing_hint(Path(str(path)))}")


def file_sha256(path: Union[str, Path]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_fid_inception(path: Union[str, Path], device: Union[str, torch.device] = "cpu") -> FIDInceptionV3:
    """The FID Inception with weights from a user-supplied local file, checked key by key before use."""
    state = read_state_dict(path)
    check_state_dict(state, path)
    for key in expected_shapes():  # optional BatchNorm counters: fill so the strict load below passes
        if key.endswith("num_batches_tracked"):
            state.setdefault(key, torch.zeros((), dtype=torch.long))
    with torch.device("meta"):  # no random init of 24M parameters that the file replaces anyway
        model = FIDInceptionV3()
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()},
                          strict=True, assign=True)
    return model.to(device, memory_format=torch.channels_last)
