"""Pictures and videos in and out: Pillow for images and GIFs, PyAV for video (no torchvision).

Tensors follow the tokenizer: ``[3, H, W]`` or ``[T, 3, H, W]`` floats in [-1, 1]. Arrays are
``[H, W, 3]`` / ``[T, H, W, 3]`` uint8.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from fractions import Fraction
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif")
VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v")
DEMO_PICTURES = ("astronaut", "coffee", "chelsea", "rocket")
"""scikit-image sample photographs (public domain / CC0, shipped inside the installed package)."""


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """``[..., 3, H, W]`` in [-1, 1] -> ``[..., H, W, 3]`` uint8."""
    arr = ((images.detach().float().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)
    return arr.movedim(-3, -1).cpu().numpy()


def from_uint8(array: np.ndarray) -> torch.Tensor:
    """``[..., H, W, 3]`` uint8 (or ``[H, W]`` grey) -> ``[..., 3, H, W]`` float in [-1, 1]."""
    array = np.asarray(array)
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=-1)
    if array.dtype != np.uint8 or array.shape[-1] not in (3, 4):
        raise ValueError(f"expected uint8 [..., H, W, 3] pixels, got {array.dtype} {array.shape}")
    tensor = torch.from_numpy(np.array(array[..., :3], copy=True)).movedim(-1, -3)
    return tensor.float() / 127.5 - 1.0


def open_rgb(path_or_file):
    """A Pillow RGB image, EXIF orientation applied (what a viewer shows)."""
    from PIL import Image, ImageOps

    with Image.open(path_or_file) as img:
        img = ImageOps.exif_transpose(img)
        return img.convert("RGB")


def load_image(path) -> torch.Tensor:
    """An image file -> ``[3, H, W]`` in [-1, 1]."""
    return from_uint8(np.asarray(open_rgb(path)))


def _frames_uint8(frames) -> np.ndarray:
    if isinstance(frames, torch.Tensor):
        if frames.dim() == 3:
            frames = frames[None]
        return to_uint8(frames)
    frames = np.asarray(frames)
    return frames[None] if frames.ndim == 3 else frames


def save_png(image, path) -> Path:
    """``[3, H, W]`` tensor (or ``[H, W, 3]`` uint8) -> PNG (lossless)."""
    from PIL import Image

    frames = _frames_uint8(image)
    if len(frames) != 1:
        raise ValueError(f"a PNG holds one picture, got {len(frames)} frames (use save_gif / save_mp4)")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(frames[0]).save(path, format="PNG")
    return path


def save_gif(frames, path, fps: float = 8.0) -> Path:
    """``[T, 3, H, W]`` -> looping animated GIF (Pillow picks an adaptive palette per frame)."""
    from PIL import Image

    frames = _frames_uint8(frames)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    images = [Image.fromarray(f) for f in frames]
    images[0].save(path, format="GIF", save_all=True, append_images=images[1:], loop=0,
                   duration=max(20, round(1000.0 / fps)), disposal=2)
    return path


def save_mp4(frames, path, fps: float = 8.0, crf: int = 18) -> Path:
    """``[T, 3, H, W]`` -> H.264 MP4 through PyAV (odd sizes padded by one pixel: yuv420p needs even)."""
    import av

    frames = _frames_uint8(frames)
    T, H, W, _ = frames.shape
    pad_h, pad_w = H % 2, W % 2
    if pad_h or pad_w:
        frames = np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1000))
        stream.width, stream.height = W + pad_w, H + pad_h
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": str(crf)}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def save_media(frames, path, fps: float = 8.0) -> Path:
    """By suffix: ``.png`` (one frame), ``.gif``, ``.mp4``."""
    suffix = Path(path).suffix.lower()
    if suffix == ".png":
        return save_png(frames, path)
    if suffix == ".gif":
        return save_gif(frames, path, fps)
    if suffix == ".mp4":
        return save_mp4(frames, path, fps)
    raise ValueError(f"unsupported output {path}: use .png, .gif or .mp4")


class VideoFile:
    """An opened video's first video stream: its header facts (``info``) and its sampled frames
    (``frames``) from the one container (:func:`open_video`)."""

    def __init__(self, container):
        self.container = container
        self.stream = container.streams.video[0]
        stream = self.stream
        fps = float(stream.average_rate or stream.guessed_rate or 0) or None
        duration = float(stream.duration * stream.time_base) if stream.duration else None
        self.info = {"fps": fps, "frames": stream.frames or None, "width": stream.codec_context.width,
                     "height": stream.codec_context.height, "duration": duration}
        """``{"fps", "frames", "width", "height", "duration"}`` from the header (None where it is silent)."""

    def sampled_frames(self, fps: float | None = None) -> int | None:
        """How many frames ``frames(fps)`` should yield, from the header alone: an upper estimate
        (duration x rate, plus one), or None when the header gives no duration and no frame count."""
        info = self.info
        rate = sampled_fps(info["fps"], fps)
        if info["duration"] and rate:
            return math.ceil(info["duration"] * rate) + 1
        if info["frames"] and (fps is None or (info["fps"] and fps >= info["fps"])):
            return info["frames"]
        return None

    def frames(self, fps: float | None = None, threads: bool = True) -> Iterator[tuple[float, "object"]]:
        """Decode and yield ``(time_s, PIL.Image)`` for frames sampled at ``fps``.

        Rule: sample times are k / fps; each takes the first decoded frame at or after it (within half a
        source frame). ``fps`` None or >= the source rate keeps every frame. The effective rate is
        ``sampled_fps(...)``. ``threads=False`` decodes on the calling thread alone (FFmpeg's own
        threads cost more than they give on a clip of a few frames, and callers that decode many
        videos at once are parallel already); the frames are the same."""
        stream = self.stream
        if threads:
            stream.thread_type = "AUTO"
        else:
            stream.codec_context.thread_count = 1
        source_fps = self.info["fps"]
        step = None if (fps is None or source_fps is None or fps >= source_fps) else 1.0 / fps
        half = 0.5 / source_fps if source_fps else 0.0
        next_time, index = 0.0, 0
        for frame in self.container.decode(stream):
            t = float(frame.time) if frame.time is not None else index / (source_fps or 1.0)
            index += 1
            if step is None:
                yield t, frame.to_image()
            elif t + half >= next_time:
                yield t, frame.to_image()
                while next_time <= t + half:
                    next_time += step


@contextmanager
def open_video(path) -> Iterator[VideoFile]:
    """``with open_video(path) as video``: header facts and frames from one opened container (PyAV)."""
    import av

    with av.open(str(path)) as container:
        yield VideoFile(container)


def video_info(path) -> dict:
    """``{"fps", "frames", "width", "height", "duration"}`` of a video's first video stream."""
    with open_video(path) as video:
        return video.info


def iter_video_frames(path, fps: float | None = None) -> Iterator[tuple[float, "object"]]:
    """Decode a video and yield ``(time_s, PIL.Image)`` for frames sampled at ``fps``
    (:meth:`VideoFile.frames`: the sampling rule)."""
    with open_video(path) as video:
        yield from video.frames(fps)


def sampled_fps(source_fps: float | None, fps: float | None) -> float | None:
    """The frame rate of ``iter_video_frames(path, fps)``'s output."""
    if fps is None or source_fps is None:
        return source_fps
    return min(float(fps), float(source_fps))


def demo_pictures(names=DEMO_PICTURES) -> dict[str, np.ndarray]:
    """Real photographs from the installed scikit-image package: ``{name: [H, W, 3] uint8}``."""
    try:
        import skimage.data as data
    except ImportError as exc:  # an optional dependency ("media" extra)
        raise ImportError("the demo pictures come from scikit-image: pip install scikit-image") from exc
    out = {}
    for name in names:
        if name not in DEMO_PICTURES:
            raise ValueError(f"unknown demo picture {name!r}; choose from {', '.join(DEMO_PICTURES)}")
        array = getattr(data, name)()
        out[name] = np.repeat(array[..., None], 3, -1) if array.ndim == 2 else array[..., :3]
    return out
