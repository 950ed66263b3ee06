"""Strict YAML reading for every file a user hands us (configs, sweep specs, a run's config.yaml).

A file must be UTF-8 text (a binary or Latin-1 file is refused naming what it is), must not be
empty, must hold a mapping at its top level, and no mapping in it may repeat a key (plain
``yaml.safe_load`` keeps the last value silently, so a typo'd copy of a section would win
unseen). Aliases (``*name``) are refused where the parser meets them, before anything is built:
nested aliases make a few hundred bytes expand to gigabytes (a "billion laughs"), and no setting
needs one. Nesting deeper than :data:`MAX_DEPTH` is refused too (a deeper document would
exhaust Python's stack). Every problem is a :class:`~mtl.errors.ConfigError` of one line naming
the file, the line where known, and the fix. ``--set`` values go through the same loader
(:func:`parse_value`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from yaml.composer import ComposerError
from yaml.constructor import ConstructorError

from mtl.errors import SHOWN, ConfigError, shown

_MERGE = "tag:yaml.org,2002:merge"
# nesting levels a document may have: configs and specs use five at most; thousands overflow Python's stack
MAX_DEPTH = 100


class DuplicateKeyError(ConstructorError):
    def __init__(self, key: Any, line: int, first: int) -> None:
        super().__init__(problem=f"duplicate key {shown(key)}")
        self.key, self.line, self.first = key, line, first


class RefusedYAML(ComposerError):
    """An alias, or nesting beyond :data:`MAX_DEPTH`: refused while composing, before any value
    is built. ``problem`` says what and why, ``fix`` what to write instead."""

    def __init__(self, problem: str, fix: str, mark: yaml.Mark) -> None:
        super().__init__(problem=problem, problem_mark=mark)
        self.fix = fix


class UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a mapping repeating one of its keys, any alias, and nesting
    deeper than :data:`MAX_DEPTH` (merge keys ``<<`` keep their meaning with an inline mapping;
    ``<<: *name`` is an alias)."""

    _depth = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        if self.check_event(yaml.AliasEvent):  # refused at the event: nothing is expanded
            event = self.peek_event()
            anchor = event.anchor if len(event.anchor) <= 40 else event.anchor[:40] + "..."
            raise RefusedYAML(f"YAML alias *{anchor} is refused (nested aliases let a few "
                              "bytes expand to gigabytes)", "write the value out in full", event.start_mark)
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise RefusedYAML(f"YAML nested more than {MAX_DEPTH} levels deep",
                                  "configs and specs need five at most; remove the extra nesting",
                                  self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

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
    """Parse one YAML document strictly (duplicate keys, aliases, deep nesting refused); errors name ``where``."""
    try:
        return yaml.load(text, Loader=UniqueKeyLoader)
    except DuplicateKeyError as e:
        raise ConfigError(f"duplicate key {shown(e.key)} in {where} at line {e.line} (first at line {e.first}); "
                          "keep one of them") from None
    except RefusedYAML as e:
        raise ConfigError(f"{e.problem} in {where} at line {e.problem_mark.line + 1}; {e.fix}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = (getattr(e, "problem", None) or str(e).splitlines()[0])[:SHOWN]
        raise ConfigError(f"malformed YAML in {where}{at}: {problem}; fix the syntax") from None


def parse_value(raw: str, where: str) -> Any:
    """A ``--set`` value: YAML read as by :func:`loads` (an alias, deep nesting or a repeated key is
    a ConfigError naming ``where``); text that is not valid YAML stays the text itself."""
    try:
        return yaml.load(raw, Loader=UniqueKeyLoader)
    except DuplicateKeyError as e:
        raise ConfigError(f"{where} repeats the key {shown(e.key)}; keep one of them") from None
    except RefusedYAML as e:
        raise ConfigError(f"{e.problem} in {where}; {e.fix} (quote it if you meant the text)") from None
    except yaml.YAMLError:
        return raw


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
