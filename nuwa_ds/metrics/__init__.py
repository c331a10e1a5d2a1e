"""Evaluation metrics: the FID Inception network (``inception``), feature statistics and the
Fréchet distance (``fid``), image folders and Block-FID blocks (``images``); without any network:
sliced Wasserstein distance (``swd``), seam scores (``seams``) and their floors / ceilings
(``quality``). The ``nuwa-ds eval``
command and ``compute_fid`` / ``compute_block_fid`` live in ``nuwa_ds.evaluate``."""
