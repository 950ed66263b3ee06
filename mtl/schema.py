"""Declared settings: frozen pydantic sections loaded strictly from YAML mappings and dotted overrides.

The experiment config (:mod:`mtl.config`), the sweep spec's settings (:mod:`mtl.tune.spec`) and
the benchmark's settings (:mod:`mtl.bench`) are trees of :class:`Section` models. A field states
its type, its range (:func:`at_least`, :func:`positive`, :func:`in_range`) and its choices (a
``Literal`` or a :class:`~mtl.registry.Registry` through :func:`choice`) beside its name. Loading
(:func:`load`) flattens the input to dotted keys, rejects unknown keys with close matches, and
turns pydantic's first validation error into one line that names the key, the value and the fix:
that line is the error contract of every entry point (exit status 2, nothing written). Floats
must be finite everywhere. Files are read by :mod:`mtl.yamlio` (UTF-8, a mapping, no repeated key).
"""

from __future__ import annotations

import difflib
import typing
from collections.abc import Mapping, Sequence
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, ValidationError
from pydantic_core import PydanticCustomError

from mtl.errors import ConfigError, shown
from mtl.yamlio import parse_value


class Section(BaseModel):
    """A frozen group of settings: unknown keys are errors, values are not coerced across types,
    floats are finite."""

    # allow_inf_nan=False: no setting takes inf or nan (YAML's .inf, --set x=inf, a 1e999 overflow)
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True, allow_inf_nan=False)

    def get(self, key: str) -> Any:
        """Value of a dotted key, e.g. ``cfg.get("meta.inner_lr")``."""
        node: Any = self
        for part in key.split("."):
            node = getattr(node, part)
        return node

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump()



def _float_text(v: Any) -> Any:
    """YAML 1.1 reads ``1e-3`` (no dot) as a string: accept numeric strings for float fields."""
    if isinstance(v, str):
        try:
            return float(v)
        except ValueError:
            return v
    return v


def _whole_float(v: Any) -> Any:
    """Integral floats (``4.0``, what a quantised search distribution draws) for int fields."""
    return int(v) if isinstance(v, float) and v.is_integer() else v


Float = Annotated[float, BeforeValidator(_float_text)]
Int = Annotated[int, BeforeValidator(_whole_float)]


def _rule(ok: typing.Callable[[Any], bool], text: str) -> AfterValidator:
    def check(v: Any) -> Any:
        if v is not None and not ok(v):
            raise PydanticCustomError("rule", text)
        return v

    return AfterValidator(check)


def satisfies(typ: Any, ok: typing.Callable[[Any], bool], text: str) -> Any:
    """A field of type ``typ`` whose values must pass ``ok``; ``text`` says what they must be."""
    return Annotated[typ, _rule(ok, text)]


def at_least(n: int, why: str = "") -> Any:
    """An int field that must be >= n."""
    return Annotated[Int, _rule(lambda v: v >= n, f"must be at least {n}{why}")]


def int_in(lo: int, hi: int, why: str = "") -> Any:
    """An int field in [lo, hi]."""
    return Annotated[Int, _rule(lambda v: lo <= v <= hi, f"must be in [{lo}, {hi}]{why}")]


def positive(why: str = "") -> Any:
    """A float field that must be > 0."""
    return Annotated[Float, _rule(lambda v: v > 0, f"must be positive{why}")]


def in_range(lo: float, hi: float | None, bounds: str = "[]", why: str = "") -> Any:
    """A float field in an interval; ``bounds`` is "[]", "[)", "(]" or "()" (hi None: no upper bound)."""

    def ok(v: float) -> bool:
        low = v >= lo if bounds[0] == "[" else v > lo
        high = hi is None or (v <= hi if bounds[1] == "]" else v < hi)
        return low and high

    text = f"must be >= {lo:g}" if hi is None else f"must be in {bounds[0]}{lo:g}, {hi:g}{bounds[1]}"
    return Annotated[Float, _rule(ok, text + why)]


def choice(registry: Any) -> Any:
    """A str field naming an entry of ``registry``: an unknown name fails with close matches."""

    def wrap(v: str) -> str:
        try:
            registry.check(v)
            return v
        except ConfigError as e:
            raise PydanticCustomError("choice", str(e)) from None

    return Annotated[str, AfterValidator(wrap)]


def fail(message: str) -> PydanticCustomError:
    """A whole-config error from a model validator (consistency between fields); raise it."""
    return PydanticCustomError("config", message)


def pretraining_field(default: Any = None, **kw: Any) -> Any:
    """A field default that also marks the field as changing what pretraining produces."""
    from pydantic import Field

    return Field(default, json_schema_extra={"pretraining": True}, **kw)



def _sections(root: type[Section]) -> dict[str, type[Section]]:
    return {name: f.annotation for name, f in root.model_fields.items()
            if isinstance(f.annotation, type) and issubclass(f.annotation, Section)}


def fields(root: type[Section], prefix: str = "") -> dict[str, tuple[type[Section], str]]:
    """Every dotted leaf key of ``root`` -> (the section class holding it, its field name)."""
    out: dict[str, tuple[type[Section], str]] = {}
    subs = _sections(root)
    for name in root.model_fields:
        if name in subs:
            out.update(fields(subs[name], f"{prefix}{name}."))
        else:
            out[f"{prefix}{name}"] = (root, name)
    return out


def section_names(root: type[Section], prefix: str = "") -> set[str]:
    out: set[str] = set()
    for name, sub in _sections(root).items():
        out |= {prefix + name, *section_names(sub, f"{prefix}{name}.")}
    return out


def marked(root: type[Section], flag: str) -> list[str]:
    """Dotted keys whose field carries ``flag`` (see :func:`pretraining_field`) or whose section class
    sets the class attribute ``flag`` to True (every field of it counts)."""
    out = []
    for key, (cls, name) in fields(root).items():
        extra = cls.model_fields[name].json_schema_extra
        if getattr(cls, flag, False) is True or (isinstance(extra, dict) and extra.get(flag)):
            out.append(key)
    return out


def check_key(key: str, root: type[Section], what: str = "config") -> None:
    """An unknown dotted key raises with close matches."""
    keys = fields(root)
    if key in keys:
        return
    if key in section_names(root):
        example = next(k for k in keys if k.startswith(key + "."))
        raise ConfigError(f"{shown(key)} is a {what} section; set its fields one by one, e.g. {example}=...")
    close = difflib.get_close_matches(key, list(keys), n=3, cutoff=0.6)
    prefix = key.split(".")[0]
    if not close and prefix in root.model_fields:
        close = [k for k in keys if k.startswith(prefix + ".")][:6]
    hint = f"; did you mean {' or '.join(close)}?" if close else f"; valid keys: {', '.join(sorted(keys)[:8])}, ..."
    raise ConfigError(f"unknown {what} key {shown(key)}{hint}")


def flatten(tree: Mapping[str, Any], root: type[Section], prefix: str = "") -> dict[str, Any]:
    """Nested mapping -> dotted keys; a section given a non-mapping is an error."""
    flat: dict[str, Any] = {}
    sections = section_names(root)
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if key in sections:
            if not isinstance(v, Mapping):
                raise ConfigError(f"section {shown(key)} must be a mapping of fields, not {shown(v)}")
            flat.update(flatten(v, root, key + "."))
        else:
            flat[key] = v
    return flat


def dotted(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested plain mapping as one level of dotted keys: ``{"a": {"b": 1}} -> {"a.b": 1}``."""
    out: dict[str, Any] = {}
    for k, v in tree.items():
        if isinstance(v, Mapping):
            out.update(dotted(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def changed(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[str]:
    """The dotted keys (sorted) whose values differ between two nested mappings, or that only one holds."""
    da, db = dotted(a), dotted(b)
    return sorted(k for k in da.keys() | db.keys() if da.get(k, _MISSING) != db.get(k, _MISSING))


_MISSING = object()


def nest(flat: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in flat.items():
        node = out
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return out


def load(root: type[Section], tree: Mapping[str, Any] = {}, overrides: Mapping[str, Any] = {},
         what: str = "config") -> Any:
    """Defaults < ``tree`` (nested) < ``overrides`` (dotted), checked key by key, then validated."""
    flat = flatten(tree, root)
    flat.update(overrides)
    for key in flat:
        check_key(key, root, what)
    return validate(root, nest(flat), what)


def validate(root: type[Section], tree: Mapping[str, Any], what: str = "config") -> Any:
    try:
        return root.model_validate(tree)
    except ValidationError as e:
        raise ConfigError(message(e.errors()[0], what)) from None


_TYPES = {"int": "an int", "float": "a float", "bool": "a bool", "string": "a str"}


def message(err: Mapping[str, Any], what: str = "config") -> str:
    """One line for pydantic's error ``err``: the dotted key, the value (at most
    :data:`~mtl.errors.SHOWN` characters of it), what it must be."""
    key = ".".join(str(p) for p in err["loc"])
    key = key if len(key) <= 200 else shown(key)
    value, kind = shown(err.get("input")), err["type"]
    if kind == "config":
        return err["msg"]
    if kind == "rule":
        return f"{key} = {value} {err['msg']}"
    if kind == "choice":
        return f"{key}: {err['msg']}"
    if kind == "finite_number":
        return f"{key} = {value} must be a finite number"
    if kind == "literal_error":
        expected = str(err.get("ctx", {}).get("expected", "")).replace(" or ", ", ")
        return f"{key} must be one of {expected}, not {value}"
    base = kind.split("_")[0]
    if base in _TYPES:
        return f"{key} must be {_TYPES[base]}, not {value} ({type(err.get('input')).__name__})"
    if kind == "extra_forbidden":
        return f"unknown {what} key {shown(key)}"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return f"section {shown(key)} must be a mapping of fields, not {value}"
    return f"{key}: {err['msg']}"[:400]



def parse_override(text: str) -> tuple[str, Any]:
    """``"meta.inner_lr=0.02"`` -> ``("meta.inner_lr", 0.02)``; values are YAML scalars."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {shown(text)} is not of the form key=value, e.g. meta.inner_lr=0.02")
    name = key.strip() if len(key.strip()) <= 200 else key.strip()[:200] + "..."
    value = parse_value(raw, f"--set {name}") if raw.strip() else None
    return key.strip(), value


def as_mapping(overrides: Mapping[str, Any] | Sequence[str]) -> dict[str, Any]:
    if isinstance(overrides, Mapping):
        return dict(overrides)
    return dict(parse_override(item) for item in overrides)
