"""Typed trees of frozen dataclasses, loaded strictly from YAML mappings and dotted overrides.

Shared by the experiment config (:mod:`mtl.config`) and the sweep spec (:mod:`mtl.tune.spec`):
a nested mapping is flattened to dotted keys, every key is checked against the dataclass
fields (unknown keys fail with close matches), and every value against the field's type.
"""

from __future__ import annotations

import difflib
import json
import types
import typing
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

import yaml

from mtl.errors import ConfigError


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML mapping; malformed YAML or a non-mapping top level is a ConfigError."""
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e.strerror}; check the path") from None
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"malformed YAML in {path}{where}: {problem}; fix the syntax") from None
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise ConfigError(f"{path} must hold a mapping of sections, not a {type(doc).__name__}")
    return doc


def parse_override(text: str) -> tuple[str, Any]:
    """``"meta.inner_lr=0.02"`` -> ``("meta.inner_lr", 0.02)``."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {text!r} is not of the form key=value, e.g. meta.inner_lr=0.02")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def check_key(key: str, root: type, what: str = "config") -> type:
    """The declared type of a dotted key; an unknown key raises with close matches."""
    types_ = field_types(root)
    if key in types_:
        return types_[key]
    if key in section_names(root):
        example = next(k for k in types_ if k.startswith(key + "."))
        raise ConfigError(f"{key!r} is a {what} section; set its fields one by one, e.g. {example}=...")
    close = difflib.get_close_matches(key, list(types_), n=3, cutoff=0.6)
    prefix = key.split(".")[0]
    if not close and prefix in {f.name for f in fields(root)}:
        close = [k for k in types_ if k.startswith(prefix + ".")][:6]
    hint = f"; did you mean {' or '.join(close)}?" if close else f"; valid keys: {', '.join(sorted(types_)[:8])}, ..."
    raise ConfigError(f"unknown {what} key {key!r}{hint}")


def as_mapping(overrides: Mapping[str, Any] | Sequence[str]) -> dict[str, Any]:
    if isinstance(overrides, Mapping):
        return dict(overrides)
    out: dict[str, Any] = {}
    for item in overrides:
        k, v = parse_override(item)
        out[k] = v
    return out


def deep_merge(base: dict[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in top.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = deep_merge(dict(out[k]), v)
        else:
            out[k] = v
    return out


def flatten(tree: Mapping[str, Any], root: type, prefix: str = "") -> dict[str, Any]:
    """Nested mapping -> dotted keys (unknown keys are caught later by check_key)."""
    flat: dict[str, Any] = {}
    sections = section_names(root)
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if key in sections:
            if not isinstance(v, Mapping):
                raise ConfigError(f"section {key!r} must be a mapping of fields, not {v!r}")
            flat.update(flatten(v, root, key + "."))
        else:
            flat[key] = v
    return flat


def apply(tree: dict[str, Any], flat: Mapping[str, Any], root: type, what: str = "config") -> dict[str, Any]:
    out = json.loads(json.dumps(tree))  # deep copy of plain data
    for key, value in flat.items():
        typ = check_key(key, root, what)
        node = out
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = coerce(key, typ, value)
    return out


def coerce(key: str, typ: Any, value: Any) -> Any:
    """Check a value against a field type; ints are accepted where floats are."""
    origin = typing.get_origin(typ)
    args = typing.get_args(typ)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in (a for a in args if a is not type(None)):
            try:
                return coerce(key, a, value)
            except ConfigError as e:
                errors.append(e)
        raise errors[0]
    if origin is Literal:
        if value in args and not isinstance(value, bool):
            return value
        choices = ", ".join(repr(a) for a in args)
        raise ConfigError(f"{key} must be one of {choices}, not {value!r}")
    if typ is bool:
        if isinstance(value, bool):
            return value
    elif typ is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif typ is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif typ is str:
        if isinstance(value, str):
            return value
    else:
        raise TypeError(f"unsupported config field type {typ!r} for {key}")
    name = getattr(typ, "__name__", str(typ))
    raise ConfigError(f"{key} must be {_article(name)} {name}, not {value!r} ({type(value).__name__})")


def _article(name: str) -> str:
    return "an" if name[0] in "aeiou" else "a"


def field_types(cls: type, prefix: str = "") -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    out: dict[str, Any] = {}
    for f in fields(cls):
        t = hints[f.name]
        if is_dataclass(t):
            out.update(field_types(t, f"{prefix}{f.name}."))
        else:
            out[f"{prefix}{f.name}"] = t
    return out


def section_names(cls: type, prefix: str = "") -> set[str]:
    hints = typing.get_type_hints(cls)
    out: set[str] = set()
    for f in fields(cls):
        if is_dataclass(hints[f.name]):
            out.add(prefix + f.name)
            out |= section_names(hints[f.name], f"{prefix}{f.name}.")
    return out


def build(cls: type, d: Mapping[str, Any]) -> Any:
    hints = typing.get_type_hints(cls)
    kw = {f.name: build(hints[f.name], d[f.name]) if is_dataclass(hints[f.name]) else d[f.name]
          for f in fields(cls)}
    return cls(**kw)




def dotted(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested plain mapping as one level of dotted keys: ``{"a": {"b": 1}} -> {"a.b": 1}``."""
    out: dict[str, Any] = {}
    for k, v in tree.items():
        if isinstance(v, Mapping):
            out.update(dotted(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def to_dict(obj: Any) -> dict[str, Any]:
    """Plain nested dict of a dataclass tree."""
    import dataclasses

    return dataclasses.asdict(obj)


def from_flat(root: type, flat: Mapping[str, Any], what: str = "config") -> Any:
    """Defaults of ``root`` with the dotted ``flat`` values applied, built and type-checked."""
    return build(root, apply(to_dict(root()), flat, root, what))
