"""Durable file writes shared by the model checkpoints and the tokenizer trainer."""

from __future__ import annotations

import os
from pathlib import Path


def fsync_file(path: Path):
    """Flush ``path`` (a file, or a directory's entries) to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path):
    try:
        fsync_file(path)
    except OSError:  # some filesystems refuse fsync on directories; the renames are still ordered
        pass


def write_atomic(path: Path, text: str):
    """Write to a temporary file beside ``path``, flush it, rename it over ``path``, flush the directory."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)
