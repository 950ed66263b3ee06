"""Strict YAML reading for every file a user hands us (configs, sweep specs, a run's config.yaml).

A file must be UTF-8 text (a binary or Latin-1 file is refused naming what it is), must not be
empty, must hold a mapping at its top level, and no mapping in it may repeat a key (plain
``yaml.safe_load`` keeps the last value silently, so a typo'd copy of a section would win
unseen). Every problem is a :class:`~mtl.errors.ConfigError` of one line naming the file, the
line where known, and the fix.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from yaml.constructor import ConstructorError

from mtl.errors import ConfigError

_MERGE = "tag:yaml.org,2002:merge"


class DuplicateKeyError(ConstructorError):
    def __init__(self, key: Any, line: int, first: int) -> None:
        super().__init__(problem=f"duplicate key {key!r}")
        self.key, self.line, self.first = key, line, first


class UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a mapping repeating one of its keys (merge keys ``<<``
    keep their meaning: the mapping's own keys override merged ones)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == _MERGE:
                    continue
                key = self.construct_object(key_node, deep=True)
                line = key_node.start_mark.line + 1
                try:
                    if key in seen:
                        raise DuplicateKeyError(key, line, seen[key])
                except TypeError:
                    continue  # an unhashable key: SafeLoader reports it
                seen[key] = line
        return super().construct_mapping(node, deep=deep)


def loads(text: str, where: str = "<text>") -> Any:
    """Parse one YAML document strictly (duplicate keys refused); errors name ``where``."""
    try:
        return yaml.load(text, Loader=UniqueKeyLoader)
    except DuplicateKeyError as e:
        raise ConfigError(f"duplicate key {e.key!r} in {where} at line {e.line} (first at line {e.first}); "
                          "keep one of them") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"malformed YAML in {where}{at}: {problem}; fix the syntax") from None


def _text(path: Path) -> str:
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e.strerror}; check the path") from None
    if b"\0" in raw:
        raise ConfigError(f"{path} is a binary file, not YAML text; give the path of a .yaml file")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise ConfigError(f"{path} is not UTF-8 text (byte 0x{raw[e.start]:02x} at line {line}); "
                          "save it as UTF-8") from None


def read_yaml(path: str | Path, what: str = "config", example: str = "meta: {way: 5}") -> dict[str, Any]:
    """The mapping a YAML file holds; ``what`` names the file's role and ``example`` a minimal
    content in the messages for an empty or a non-mapping file."""
    path = Path(path)
    doc = loads(_text(path), str(path))
    if doc is None:
        raise ConfigError(f"{what} file {path} is empty; write at least one section in it, e.g. {example}")
    if not isinstance(doc, dict):
        raise ConfigError(f"{what} file {path} must hold a mapping of sections, not a {type(doc).__name__}; "
                          f"write it as key: value lines, e.g. {example}")
    return doc
