"""The config system's machinery: dataclass <-> dict with type checks, JSON round-trip and ``a.b=value``
overrides, shared by every config dataclass (the model's :class:`~nuwa_ds.model.config.NuwaConfig`, the
tokenizer's ``VQConfig``, the run's ``DataConfig`` / ``TrainConfig`` / ``RunConfig`` in ``nuwa_ds.config``).

Loading is strict: an unknown key or a value of the wrong type raises :class:`ConfigError` (a
``ValueError``) naming the key and what was expected, so a typo never silently trains the wrong model.
Standard library only: the bottom layer of ``nuwa_ds`` (docs/design.md, "11. Layers").
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """A configuration that cannot be used; the message names the key and the fix."""


# ----------------------------------------------------------------------------------------------
# Generic machinery: dataclass <-> dict with type checks, and dotted overrides.


def _type_name(tp) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp, key: str):
    """Check (and gently convert: int -> float, list -> tuple) ``value`` against annotation ``tp``."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{key}: expected one of {list(args)}, got {value!r}")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list like {list(args)}, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{key}: expected {len(args)} values, got {len(value)}: {value!r}")
        return tuple(_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)] if args else list(value)
    if tp is dict:
        origin = dict
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return {k: _coerce(v, args[1], f"{key}.{k}") for k, v in value.items()} if args else dict(value)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping of {tp.__name__} fields, got {value!r}")
        return _from_dict(tp, value, prefix=f"{key}.")
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported field type {tp!r}")


def _hints(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _from_dict(cls, data: dict, prefix: str = ""):
    hints = _hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in data if k not in names]
    if unknown:
        raise ConfigError(
            f"unknown key{'s' if len(unknown) > 1 else ''} {', '.join(prefix + k for k in unknown)} "
            f"in {cls.__name__}; known keys: {', '.join(names)}"
        )
    kwargs = {k: _coerce(v, hints[k], prefix + k) for k, v in data.items()}
    obj = cls(**kwargs)
    validate = getattr(obj, "validate", None)
    if validate is not None:
        validate()
    return obj


def _to_dict(obj) -> dict:
    out = {}
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        if dataclasses.is_dataclass(v):
            v = _to_dict(v)
        elif isinstance(v, tuple):
            v = list(v)
        out[f.name] = v
    return out


def _parse_scalar(text: str, tp, key: str):
    """Turn the right-hand side of ``a.b=value`` into a value of annotation ``tp``."""
    stripped = text.strip()
    if stripped.lower() in ("none", "null"):
        return None
    try:
        parsed = json.loads(stripped)
    except json.JSONDecodeError:
        parsed = stripped
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        tp = inner[0] if len(inner) == 1 else tp
        origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is bool and isinstance(parsed, str):
        low = parsed.lower()
        if low in ("true", "yes", "on"):
            return True
        if low in ("false", "no", "off"):
            return False
    if tp is bool and parsed in (0, 1) and not isinstance(parsed, bool):
        return bool(parsed)
    if origin in (tuple, list) and isinstance(parsed, (str, int, float)):
        parsed = [json.loads(p) if p.strip() not in ("",) else p for p in str(stripped).split(",")]
    if tp is str and not isinstance(parsed, str):
        parsed = stripped
    return parsed


class ConfigBase:
    """Mixin: JSON round-trip and overrides for the config dataclasses."""

    def to_dict(self) -> dict:
        return _to_dict(self)

    @classmethod
    def from_dict(cls, data: dict):
        return _from_dict(cls, data)

    def to_json(self, path: str | Path | None = None) -> str:
        text = json.dumps(self.to_dict(), indent=2, sort_keys=False) + "\n"
        if path is not None:
            Path(path).write_text(text)
        return text

    @classmethod
    def from_json(cls, text_or_path: str | Path):
        text = str(text_or_path)
        if not text.lstrip().startswith("{"):
            path = Path(text)
            if not path.is_file():
                raise ConfigError(f"config file {path} does not exist")
            text = path.read_text()
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"config is not valid JSON: {exc}") from None
        return cls.from_dict(data)

    def override(self, assignments: list[str] | tuple[str, ...]):
        """A copy with ``a.b=value`` assignments applied (values parsed as JSON where they can be)."""
        data = self.to_dict()
        hints_cls = type(self)
        for item in assignments:
            if "=" not in item:
                raise ConfigError(f"override {item!r} is not of the form key=value (e.g. model.d_global=256)")
            key, text = item.split("=", 1)
            parts = key.strip().split(".")
            node, cls = data, hints_cls
            for depth, part in enumerate(parts):
                names = [f.name for f in dataclasses.fields(cls)]
                if part not in names:
                    raise ConfigError(f"unknown key {'.'.join(parts[: depth + 1])} in override {item!r}; "
                                      f"known keys here: {', '.join(names)}")
                tp = _hints(cls)[part]
                if depth == len(parts) - 1:
                    node[part] = _parse_scalar(text, tp, key)
                else:
                    if not dataclasses.is_dataclass(tp):
                        raise ConfigError(f"{'.'.join(parts[: depth + 1])} is not a section; cannot set {key}")
                    node, cls = node[part], tp
        return type(self).from_dict(data)
