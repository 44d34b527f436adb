"""params.yaml: one section per stage, loaded into typed, frozen dataclasses.

    params = load_params("params.yaml", ["pretrain.lr=0.1"])   # --set overrides, dotted keys
    cfg = from_dict(PretrainConfig, params["pretrain"], "pretrain")

Unknown keys, missing keys without a default and wrong types end in a `UserError` that names the
dotted key and what was expected, so a typo in params.yaml never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from segloc.errors import UserError

DEFAULT_PARAMS = Path("params.yaml")


def load_params(path: str | Path, overrides: Iterable[str] = ()) -> dict[str, Any]:
    """Read a YAML params file and apply `KEY=VALUE` overrides (values parsed as YAML)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise UserError(f"{path}: cannot read params file ({err.strerror or err})") from err
    try:
        params = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise UserError(f"{path}: not valid YAML ({err})") from err
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise UserError(f"{path}: expected a mapping of sections at the top level")
    for item in overrides:
        apply_override(params, item)
    return params


# Sections whose keys go together: given in a params file, they are taken as they are, never
# completed key by key from the defaults (a PIDray root given as data.foreground.images must not
# borrow the demo's annotation paths).
TAKEN_WHOLE = frozenset({"data"})


def load_run_params(
    path: str | Path | None, overrides: Iterable[str], defaults: Mapping[str, Any]
) -> dict[str, Any]:
    """What a CLI runs with: `path` (None: ./params.yaml if there is one, else nothing), each
    section of `defaults` (name -> config dataclass) filled in from its code defaults key by key
    (a missing section entirely; `data` only then, see TAKEN_WHOLE),
    then the `KEY=VALUE` overrides. So a run without a params file gets the shipped recipe (the
    dataclass defaults equal params.yaml: tests/segloc/test_defaults.py), and `--set` reaches
    every key; unknown keys in the file still fail when the config is built."""
    if path is None and not DEFAULT_PARAMS.is_file():
        params: dict[str, Any] = {}
    else:
        params = load_params(path or DEFAULT_PARAMS)
    for name, cls in defaults.items():
        section = params.get(name)
        if section is None:
            params[name] = to_dict(cls())
        elif isinstance(section, dict) and name not in TAKEN_WHOLE:  # else from_dict says so
            params[name] = _merge(to_dict(cls()), section)
    for item in overrides:
        apply_override(params, item)
    return params


def _merge(base: dict, top: Mapping) -> dict:
    """`top` over `base`, sub-sections merged key by key."""
    out = dict(base)
    for key, value in top.items():
        both = isinstance(value, Mapping) and isinstance(base.get(key), dict)
        out[key] = _merge(base[key], value) if both else value
    return out


def apply_override(params: dict[str, Any], item: str) -> None:
    """Set `a.b.c=value` in nested dicts; the key path must already exist (typos fail loudly)."""
    key, sep, raw = item.partition("=")
    if not sep or not key:
        raise UserError(f"--set {item!r}: expected KEY=VALUE, e.g. pretrain.lr=0.1")
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError as err:
        raise UserError(f"--set {key}: value {raw!r} is not valid YAML") from err
    node = params
    parts = key.split(".")
    for depth, part in enumerate(parts[:-1]):
        child = node.get(part) if isinstance(node, dict) else None
        if not isinstance(child, dict):
            raise UserError(f"--set {key}: no section {'.'.join(parts[: depth + 1])!r} in params")
        node = child
    if parts[-1] not in node:
        raise UserError(f"--set {key}: unknown key (known here: {', '.join(sorted(node))})")
    node[parts[-1]] = value


def from_dict(cls: type, data: Any, prefix: str) -> Any:
    """Build dataclass `cls` from `data`, checking keys and types; `prefix` names the section."""
    if not isinstance(data, Mapping):
        raise UserError(f"params {prefix}: expected a mapping, got {_describe(data)}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise UserError(
            f"params {prefix}.{unknown[0]}: unknown key (expected one of: {', '.join(sorted(fields))})"
        )
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, field in fields.items():
        key = f"{prefix}.{name}"
        if name in data:
            kwargs[name] = _convert(hints[name], data[name], key)
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise UserError(f"params {key}: missing (expected {_type_name(hints[name])})")
    return cls(**kwargs)


def to_dict(obj: Any) -> Any:
    """Plain-data form of a config (tuples become lists) for JSON/YAML outputs."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def _convert(tp: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, key)
    if origin in (Union, types.UnionType):
        return _convert_union(tp, value, key)
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise _type_error(key, tp, value)
        return value
    if origin is tuple:
        return _convert_tuple(tp, value, key)
    if origin is dict:
        return _convert_dict(tp, value, key)
    return _convert_scalar(tp, value, key)


def _convert_union(tp: Any, value: Any, key: str) -> Any:
    args = typing.get_args(tp)
    if value is None:
        if type(None) in args:
            return None
        raise _type_error(key, tp, value)
    for arg in args:
        if arg is type(None):
            continue
        try:
            return _convert(arg, value, key)
        except UserError:
            continue
    raise _type_error(key, tp, value)


def _convert_tuple(tp: Any, value: Any, key: str) -> tuple:
    args = typing.get_args(tp)
    if not isinstance(value, (list, tuple)):
        raise _type_error(key, tp, value)
    if len(args) == 2 and args[1] is Ellipsis:
        return tuple(_convert(args[0], v, f"{key}[{i}]") for i, v in enumerate(value))
    if len(value) != len(args):
        raise UserError(f"params {key}: expected {len(args)} values, got {len(value)}")
    return tuple(
        _convert(a, v, f"{key}[{i}]") for i, (a, v) in enumerate(zip(args, value, strict=True))
    )


def _convert_dict(tp: Any, value: Any, key: str) -> dict:
    kt, vt = typing.get_args(tp) or (str, Any)
    if not isinstance(value, Mapping):
        raise _type_error(key, tp, value)
    return {_convert(kt, k, key): _convert(vt, v, f"{key}.{k}") for k, v in value.items()}


def _convert_scalar(tp: Any, value: Any, key: str) -> Any:
    if tp is Any:
        return value
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if tp in (str, bool) and isinstance(value, tp):
        return value
    raise _type_error(key, tp, value)


def _type_error(key: str, tp: Any, value: Any) -> UserError:
    return UserError(f"params {key}: expected {_type_name(tp)}, got {_describe(value)}")


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is tuple:
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {_type_name(args[0])}"
        return f"a list of {len(args)} values ({', '.join(_type_name(a) for a in args)})"
    if tp is type(None):
        return "null"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return {float: "a number", int: "an integer", str: "a string", bool: "true/false"}.get(
        tp, getattr(tp, "__name__", str(tp))
    )


def _describe(value: Any) -> str:
    return f"{type(value).__name__} {value!r}" if value is not None else "null"
