"""The model directory's VQ tokenizer pointer (nuwa_ds/model_dir.py): written as ``vq_tokenizer.json``;
model directories exported before the rename, with a ``tokenizer.json`` pointer, still name their
tokenizer; a Hugging Face ``tokenizer.json`` is never taken for one. The export itself: tests/test_export.py."""

import json
from pathlib import Path

import pytest

from nuwa_ds.model.persistence import has_weights
from nuwa_ds.model_dir import (LEGACY_VQ_POINTER, VQ_COPY, VQ_POINTER, read_initial_weights, resolve_vq_tokenizer,
                               write_vq_pointer)


def _vq(tmp_path):
    vq = tmp_path / "vq"
    vq.mkdir()
    (vq / "tokenizer_config.json").write_text("{}")
    return vq


def test_the_pointer_is_written_as_vq_tokenizer_json(tmp_path):
    vq, out = _vq(tmp_path), tmp_path / "model"
    out.mkdir()
    write_vq_pointer(out, str(vq), copy=False)
    assert json.loads((out / VQ_POINTER).read_text()) == {"vq_tokenizer": str(vq.resolve())}
    assert not (out / LEGACY_VQ_POINTER).exists()
    assert resolve_vq_tokenizer(out) == vq.resolve()

    write_vq_pointer(out, str(vq), copy=True)  # copied: a relative reference, the directory travels whole
    assert json.loads((out / VQ_POINTER).read_text()) == {"vq_tokenizer": VQ_COPY}
    assert resolve_vq_tokenizer(out) == out / VQ_COPY and (out / VQ_COPY / "tokenizer_config.json").is_file()
    assert resolve_vq_tokenizer(out, override="elsewhere") == Path("elsewhere")
    with pytest.raises(FileNotFoundError, match="not found"):
        write_vq_pointer(out, str(tmp_path / "missing"), copy=False)


def test_old_exports_tokenizer_json_pointer_is_read_and_replaced(tmp_path):
    vq, old = _vq(tmp_path), tmp_path / "old"
    old.mkdir()
    (old / LEGACY_VQ_POINTER).write_text(json.dumps({"vq_tokenizer": "../vq"}))
    assert resolve_vq_tokenizer(old) == old / "../vq"
    write_vq_pointer(old, str(vq), copy=False)  # exporting again into it: one pointer, under the new name
    assert not (old / LEGACY_VQ_POINTER).exists() and resolve_vq_tokenizer(old) == vq.resolve()


def test_a_hugging_face_tokenizer_json_is_not_a_pointer(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    hf = {"version": "1.0", "model": {"type": "WordPiece", "vocab": {"[PAD]": 0}}}
    (model / LEGACY_VQ_POINTER).write_text(json.dumps(hf))
    assert resolve_vq_tokenizer(model) is None
    write_vq_pointer(model, str(_vq(tmp_path)), copy=False)
    assert json.loads((model / LEGACY_VQ_POINTER).read_text()) == hf  # not ours: left alone
    (model / VQ_POINTER).write_text("[1, 2]")
    with pytest.raises(ValueError, match="vq_tokenizer"):
        resolve_vq_tokenizer(model)


def test_initial_weights_from_a_model_directory(tmp_path):
    from model_helpers import tiny_model

    model = tiny_model()
    model.save_pretrained(tmp_path / "model")
    assert has_weights(tmp_path / "model") and not has_weights(tmp_path)
    state = read_initial_weights(tmp_path / "model")
    assert set(state) == set(model.state_dict())
    with pytest.raises(FileNotFoundError):
        read_initial_weights(tmp_path / "nothing")
