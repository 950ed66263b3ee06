"""The packaged experiment configs (``mtl/configs/*.yaml``) and loading any config file.

:func:`load_config` merges in one documented order: field defaults < the file (and the files
its ``base:`` names, nearest last) < dotted overrides. Each file and the overrides are layers of
:func:`mtl.recipes.merge_layers`, so a recipe switch in any of them moves the fields that still
hold the previous recipe's values. Every key and value is checked (:mod:`mtl.schema`); the
resolved config is what :func:`save_config` writes next to a result.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from mtl.config import Config
from mtl.errors import ConfigError, shown
from mtl.files import write_text_atomic
from mtl.recipes import merge_layers, recipe_note
from mtl.schema import as_mapping, flatten, load
from mtl.yamlio import read_yaml


def packaged_configs() -> list[str]:
    """Names of the configs shipped in ``mtl/configs/``."""
    return sorted(p.name[:-5] for p in resources.files(__name__).iterdir() if p.name.endswith(".yaml"))


def find_config(name_or_path: str | Path) -> Path:
    """A config file by path, or by bare name of a packaged config (``mini_1shot``)."""
    p = Path(name_or_path)
    if p.is_file():
        return p
    name = p.name.removesuffix(".yaml")
    if str(p.parent) in ("", "."):
        packaged = resources.files(__name__) / f"{name}.yaml"
        if packaged.is_file():
            return Path(str(packaged))
    raise ConfigError(f"config {shown(str(name_or_path))} not found: give a YAML file path or one of "
                      f"{', '.join(packaged_configs())}")


def _file_layers(path: Path, seen: tuple[Path, ...] = ()) -> list[dict[str, Any]]:
    """The dotted layers of a file: its ``base:`` chain's first (the deepest first), then its own."""
    path = path.resolve()
    if path in seen:
        raise ConfigError(f"config {path} includes itself through 'base:'; remove the cycle")
    doc = read_yaml(path)
    base = doc.pop("base", None)
    own = flatten(doc, Config)
    if base is None:
        return [own]
    if not isinstance(base, str):
        raise ConfigError(f"'base' in {path} must be a config name or path, not {shown(base)}")
    base_path = (path.parent / base) if (path.parent / base).is_file() else find_config(base)
    return [*_file_layers(base_path, seen + (path,)), own]


def load_config(source: str | Path | Mapping[str, Any] | None = None,
                overrides: Mapping[str, Any] | Sequence[str] = ()) -> Config:
    """A validated, resolved config.

    ``source`` is a YAML path, the bare name of a packaged config, a mapping of sections (it may
    name a ``base``; it is a layer over that file's), or None for the defaults. ``overrides`` is a
    mapping or a list of ``"key=value"`` strings with dotted keys; values are parsed as YAML
    scalars (``0.01``, ``true``). Overrides are the last layer.
    """
    if source is None:
        layers: list[dict[str, Any]] = []
    elif isinstance(source, Mapping):
        tree = dict(source)
        base = tree.pop("base", None)
        layers = [*(_file_layers(find_config(base)) if base is not None else []), flatten(tree, Config)]
    else:
        layers = _file_layers(find_config(source))
    return load(Config, {}, merge_layers([*layers, as_mapping(overrides)]))


def config_text(cfg: Config) -> str:
    """The resolved config as YAML, headed by a comment on what its pretraining recipe supplied."""
    return f"# {recipe_note(cfg)}\n" + yaml.safe_dump(cfg.to_dict(), sort_keys=False)


def save_config(cfg: Config, path: str | Path) -> None:
    """Write the resolved config as YAML (atomically)."""
    write_text_atomic(path, config_text(cfg))
