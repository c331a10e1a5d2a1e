"""What ``nuwa-ds prepare`` reads: folders of pictures and/or videos, tars of pictures, and captions.

Every input item becomes a :class:`Source` with a stable index (sorted paths; tar member order), so a
re-run enumerates the same sources in the same order: sample keys and resuming rely on that.

Captions, first match wins: an entry of the captions file (CSV with a header, or JSONL), matched by
relative path, then file name, then file stem; a sidecar ``<stem>.txt`` next to the file (or in the
same tar sample); a ``.json`` sidecar with a ``caption`` / ``text`` field.
"""

from __future__ import annotations

import csv
import io
import json
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

from nuwa_ds.tokenizer.media import IMAGE_SUFFIXES, VIDEO_SUFFIXES, open_rgb

PATH_COLUMNS = ("file", "path", "filename", "image", "video", "key", "name", "url")
CAPTION_COLUMNS = ("caption", "text", "prompt", "description")


@dataclass
class Source:
    index: int
    """Position in the enumeration (stable across runs)."""
    key: str
    """WebDataset key prefix for its samples (index + a readable, dot-free stem)."""
    origin: str
    """Where it came from, as written into the sample JSON (relative path, or tar:member)."""
    kind: str
    """'image' or 'video'."""
    path: Optional[Path] = None
    """The file, for folder inputs."""
    data: Optional[bytes] = None
    """The encoded picture, for tar inputs."""
    caption: Optional[str] = None


def safe_key(index: int, name: str) -> str:
    stem = re.sub(r"[^A-Za-z0-9_-]+", "_", name)[:48].strip("_") or "item"
    return f"{index:08d}_{stem}"


def _kind(path: str) -> Optional[str]:
    suffix = Path(path).suffix.lower()
    if suffix in IMAGE_SUFFIXES:
        return "image"
    if suffix in VIDEO_SUFFIXES:
        return "video"
    return None


class Captions:
    """Caption lookup from a CSV / JSONL file (optional) plus sidecars."""

    def __init__(self, path=None):
        self.table: dict[str, str] = {}
        self.texts: list[str] = []
        """Every caption of the file in row order (duplicates kept), whatever its path column says."""
        if path is not None:
            self._load(Path(path))

    def _load(self, path: Path):
        if not path.is_file():
            raise FileNotFoundError(f"captions file {path} does not exist")
        if path.suffix.lower() in (".jsonl", ".json"):
            rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        elif path.suffix.lower() in (".csv", ".tsv"):
            with path.open(newline="", encoding="utf-8") as handle:
                rows = list(csv.DictReader(handle, delimiter="\t" if path.suffix.lower() == ".tsv" else ","))
            for number, row in enumerate(rows, start=2):
                if None in row:  # DictReader files the fields beyond the header under None
                    raise ValueError(f"captions file {path}, line {number}: more fields than the header has; "
                                     f"quote a caption that holds the delimiter (\"a sky, at dusk\")")
        else:
            raise ValueError(f"captions file {path}: use .csv, .tsv or .jsonl")
        if not rows:
            return
        columns = {c.lower(): c for c in rows[0]}
        name_col = next((columns[c] for c in PATH_COLUMNS if c in columns), None)
        text_col = next((columns[c] for c in CAPTION_COLUMNS if c in columns), None)
        if name_col is None or text_col is None:
            raise ValueError(f"captions file {path}: need a path column ({'/'.join(PATH_COLUMNS)}) and a caption "
                             f"column ({'/'.join(CAPTION_COLUMNS)}); found {list(rows[0])}")
        for row in rows:
            name, text = str(row.get(name_col, "")).strip(), row.get(text_col)
            if text is not None and str(text).strip():
                self.texts.append(str(text).strip())
            if name and text is not None:
                for variant in (name, Path(name).name, Path(name).stem):
                    self.table.setdefault(variant, str(text).strip())

    def lookup(self, relpath: str) -> Optional[str]:
        for variant in (relpath, Path(relpath).name, Path(relpath).stem):
            if variant in self.table:
                return self.table[variant]
        return None


def _sidecar_caption(path: Path) -> Optional[str]:
    txt = path.with_suffix(".txt")
    if txt.is_file():
        return txt.read_text(encoding="utf-8", errors="replace").strip()
    meta = path.with_suffix(".json")
    if meta.is_file():
        try:
            data = json.loads(meta.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            return None
        if isinstance(data, dict):
            return data.get("caption") or data.get("text")
    return None


def _tar_sources(tar_path: Path, start: int, captions: Captions) -> Iterator[Source]:
    """Pictures inside a tar, grouped WebDataset-style by key (``dir/name.jpg`` + ``dir/name.txt``)."""
    from webdataset.tariterators import base_plus_ext

    def flush(key, members, index):
        image_ext = next((e for e in members if _kind("x." + e) == "image"), None)
        if image_ext is None:
            return None
        name = f"{key}.{image_ext}"
        caption = captions.lookup(name)
        if caption is None and "txt" in members:
            caption = members["txt"].decode("utf-8", errors="replace").strip()
        return Source(index=index, key=safe_key(index, Path(key).name), origin=f"{tar_path.name}:{name}",
                      kind="image", data=members[image_ext], caption=caption)

    index = start
    current_key, members = None, {}
    with tarfile.open(tar_path, mode="r|*") as tar:
        for info in tar:
            if not info.isreg():
                continue
            key, ext = base_plus_ext(info.name)
            if key is None:
                continue
            if key != current_key and members:
                source = flush(current_key, members, index)
                if source is not None:
                    yield source
                    index += 1
                members = {}
            current_key = key
            members[ext.lower()] = tar.extractfile(info).read()
        if members:
            source = flush(current_key, members, index)
            if source is not None:
                yield source


def iter_sources(inputs, captions: Captions | None = None) -> Iterator[Source]:
    """Sources of every input in order: a folder (recursive, sorted), a ``.tar`` of pictures, or a file."""
    captions = captions or Captions()
    if isinstance(inputs, (str, Path)):
        inputs = [inputs]
    index = 0
    for item in inputs:
        root = Path(item)
        if not root.exists():
            raise FileNotFoundError(f"input {root} does not exist")
        if root.is_file() and root.suffix.lower() == ".tar":
            for source in _tar_sources(root, index, captions):
                yield source
                index = source.index + 1
            continue
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file() and _kind(p.name))
        for path in files:
            kind = _kind(path.name)
            if kind is None:
                raise ValueError(f"input {path} is neither a picture ({', '.join(IMAGE_SUFFIXES)}), a video "
                                 f"({', '.join(VIDEO_SUFFIXES)}) nor a .tar")
            rel = path.name if root.is_file() else path.relative_to(root).as_posix()
            caption = captions.lookup(rel)
            if caption is None:
                caption = _sidecar_caption(path)
            yield Source(index=index, key=safe_key(index, path.stem), origin=rel, kind=kind, path=path,
                         caption=caption)
            index += 1


def open_source_image(source: Source):
    """The source picture as a Pillow RGB image."""
    return open_rgb(source.path if source.path is not None else io.BytesIO(source.data))
