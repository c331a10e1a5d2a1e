"""The config system's machinery: dataclass <-> dict with type checks, JSON round-trip and ``a.b=value``
overrides, shared by every config dataclass (the model's :class:`~nuwa_ds.model.config.NuwaConfig`, the
tokenizer's ``VQConfig``, the run's ``DataConfig`` / ``TrainConfig`` / ``RunConfig`` in ``nuwa_ds.config``),
and command-line flags generated from a dataclass's fields (:meth:`ConfigBase.add_flags` /
:meth:`ConfigBase.from_args`, see "Command-line flags" below), so a command's options live in one
dataclass with their defaults and docstrings.

Loading is strict: an unknown key or a value of the wrong type raises :class:`ConfigError` (a
``ValueError``) naming the key and what was expected, so a typo never silently trains the wrong model.
Standard library only: the bottom layer of ``nuwa_ds`` (docs/design.md, "11. Layers").
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import functools
import inspect
import json
import textwrap
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


# ----------------------------------------------------------------------------------------------
# Command-line flags from fields.
#
# Each field of a dataclass is one flag: ``--field-name``, its help the field's docstring, its type
# from the annotation (``Optional[X]`` -> X, ``tuple[int, ...]`` / ``list[X]`` -> one or more values,
# ``tuple[int, int]`` -> two, ``Literal[...]`` -> choices, ``bool`` -> ``--x / --no-x``), its default
# the dataclass's. A field of dataclass type adds the fields of that dataclass, unprefixed, with the
# defaults of its default instance (so a command may default ``wavefront`` otherwise than the library),
# under a heading of ``--help`` when its metadata names one (``cli(group=...)``).
# What argparse needs beyond that is said in the field's metadata, ``field(metadata=cli(...))``.


def cli(*, help: str | None = None, flag: str | None = None, metavar: str | None = None, type=None,
        choices=None, positional: bool = False, negative: tuple[str, str] | None = None,
        one_of: str | None = None, skip: bool = False, append: bool = False, group: str | None = None) -> dict:
    """Field metadata for :func:`add_flags`. ``help``: instead of the docstring; ``flag``: another
    name than ``--field-name``; ``type``: a function parsing the text (e.g. ``N|all``); ``positional``:
    an argument, not an option; ``negative=(flag, help)``: a bool's second flag that sets it false,
    instead of ``--no-x``; ``one_of``: fields sharing the name are exclusive and one is required;
    ``skip``: not on the command line; ``append``: a ``list[X]`` given one value per repeated flag
    (``--x 1 --x 2``) instead of several after one; ``group``: a dataclass field's flags under this
    heading of ``--help``."""
    given = dict(help=help, flag=flag, metavar=metavar, type=type, choices=choices, positional=positional,
                 negative=negative, one_of=one_of, skip=skip, append=append, group=group)
    return {"cli": {k: v for k, v in given.items() if v not in (None, False)}}


@functools.lru_cache(maxsize=None)
def field_docs(cls) -> dict[str, str]:
    """The docstring under each field of a dataclass (the string right after ``name: type = ...``)."""
    docs = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError):  # no source (e.g. defined in an interactive session)
            continue
        body = tree.body[0].body
        for stmt, after in zip(body, body[1:]):
            if (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name) and isinstance(after, ast.Expr)
                    and isinstance(after.value, ast.Constant) and isinstance(after.value.value, str)):
                docs[stmt.target.id] = " ".join(inspect.cleandoc(after.value.value).split())
    return docs


def _field_default(f: dataclasses.Field):
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def _without_none(tp):
    """``Optional[X]`` -> X (other annotations unchanged)."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(inner) == 1:
            return inner[0]
    return tp


def _flag_kwargs(tp, meta: dict) -> dict:
    """argparse's ``type`` / ``nargs`` / ``choices`` for one annotation."""
    tp = _without_none(tp)
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Literal:
        kwargs = dict(type=type(args[0]), choices=args)
    elif origin in (tuple, list):
        many = origin is list or (len(args) == 2 and args[1] is Ellipsis)
        kwargs = dict(type=args[0] if args else str, nargs="+" if many else len(args))
    elif tp in (int, float, str):
        kwargs = dict(type=tp)
    else:
        kwargs = {}
    for key in ("type", "choices", "metavar"):
        if key in meta:
            kwargs[key] = meta[key]
    if "type" not in kwargs:
        raise TypeError(f"no command-line type for {tp!r}: give field(metadata=cli(type=...))")
    return kwargs


def add_flags(parser: argparse.ArgumentParser, cls, defaults: dict | None = None) -> None:
    """Add a flag (or argument) per field of the dataclass ``cls`` to ``parser`` (rules above)."""
    docs, hints, groups = field_docs(cls), typing.get_type_hints(cls), {}
    for f in dataclasses.fields(cls):
        meta = f.metadata.get("cli", {})
        if meta.get("skip"):
            continue
        default = _field_default(f) if defaults is None else defaults.get(f.name, dataclasses.MISSING)
        if dataclasses.is_dataclass(hints[f.name]):
            target = parser.add_argument_group(meta["group"]) if "group" in meta else parser
            add_flags(target, hints[f.name], {} if default is dataclasses.MISSING else
                      {g.name: getattr(default, g.name) for g in dataclasses.fields(default)})
            continue
        help_text = meta.get("help") or docs.get(f.name, "").replace("%", "%%") or None
        if meta.get("positional"):
            kwargs = _flag_kwargs(hints[f.name], meta)
            if default is not dataclasses.MISSING:  # an optional argument: none or more values
                kwargs.update(default=default, nargs="*" if kwargs.get("nargs") == "+" else "?")
            parser.add_argument(f.name, help=help_text, **kwargs)
            continue
        name = meta.get("flag") or "--" + f.name.replace("_", "-")
        required = default is dataclasses.MISSING
        target = parser
        if "one_of" in meta:  # e.g. prepare's --tokenizer | --taming-ckpt: exactly one of them
            if meta["one_of"] not in groups:
                groups[meta["one_of"]] = parser.add_mutually_exclusive_group(required=True)
            target, required, default = groups[meta["one_of"]], False, None
        if _without_none(hints[f.name]) is bool and "negative" in meta:
            negative, negative_help = meta["negative"]
            said = " (default)"  # said on the flag that matches the default, as a bool's --x / --no-x cannot
            pair = parser.add_mutually_exclusive_group()
            pair.add_argument(name, dest=f.name, action="store_true", default=default,
                              help=help_text and help_text + said * (default is True))
            pair.add_argument(negative, dest=f.name, action="store_false",
                              help=negative_help + said * (default is False))
        elif meta.get("append"):  # list[X]: one value per flag, repeated
            kwargs = _flag_kwargs(hints[f.name], meta)
            kwargs.pop("nargs", None)
            target.add_argument(name, dest=f.name, action="append", default=None if required else list(default),
                                required=required, help=help_text, **kwargs)
        elif _without_none(hints[f.name]) is bool:
            target.add_argument(name, dest=f.name, action=argparse.BooleanOptionalAction, default=default,
                                required=required, help=help_text)
        else:
            target.add_argument(name, dest=f.name, default=None if required else default, required=required,
                                help=help_text, **_flag_kwargs(hints[f.name], meta))


def from_args(cls, namespace: argparse.Namespace, defaults=None):
    """The dataclass ``cls`` from a namespace parsed with :func:`add_flags`'s flags (checked and
    validated as a loaded config is); skipped fields keep their defaults."""
    hints, data = typing.get_type_hints(cls), {}
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            data[f.name] = from_args(hints[f.name], namespace, _field_default(f))
        elif not f.metadata.get("cli", {}).get("skip"):
            data[f.name] = getattr(namespace, f.name)
        elif defaults is not None:
            data[f.name] = getattr(defaults, f.name)
    return _from_dict(cls, data)


class ConfigBase:
    """Mixin: JSON round-trip, overrides and command-line flags for the config dataclasses."""

    @classmethod
    def add_flags(cls, parser: argparse.ArgumentParser) -> None:
        """One flag per field (see :func:`add_flags`)."""
        add_flags(parser, cls)

    @classmethod
    def from_args(cls, namespace: argparse.Namespace):
        """This dataclass from the parsed flags (see :func:`from_args`)."""
        return from_args(cls, namespace)

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
