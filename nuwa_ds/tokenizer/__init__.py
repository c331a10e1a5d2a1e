"""The VQ tokenizer: pictures <-> token grids (docs/design.md, "7. Data").

* ``config.py``      - :class:`VQConfig` and the presets (no torch).
* ``vqgan.py``       - the taming-layout VQGAN (:class:`VQTokenizer`), encode / decode / tiled decode,
  safetensors persistence.
* ``checkpoints.py`` - taming / latent-diffusion ``.ckpt`` loading without running pickled code.
* ``train.py``       - ``nuwa-ds tokenizer-train`` and :func:`train_tokenizer`.
* ``media.py``       - image / GIF / MP4 in and out (Pillow, PyAV), the shipped demo photographs.
"""

from nuwa_ds.tokenizer.media import (demo_pictures, from_uint8, iter_video_frames, load_image, save_gif,
                                     save_media, save_mp4, save_png, to_uint8)
from nuwa_ds.tokenizer.train import train_tokenizer
from nuwa_ds.tokenizer.vqgan import VQ_PRESETS, VQConfig, VQTokenizer, psnr, resolve_device

__all__ = ["VQConfig", "VQ_PRESETS", "VQTokenizer", "psnr", "resolve_device", "train_tokenizer", "demo_pictures",
           "from_uint8", "to_uint8", "load_image", "save_png", "save_gif", "save_mp4", "save_media",
           "iter_video_frames"]
