"""Name -> entry registries for every named choice of the config (timm's ``register_model`` shape).

Each registry is declared here, with the module that fills it (``home``): the config validates a
name at load time (:func:`mtl.schema.choice`) and the home module is imported then, once. An
unknown name fails with the close matches and the list of choices.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from mtl.errors import ConfigError, shown

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str, home: str) -> None:
        self.kind = kind
        self.home = home
        self._entries: dict[str, T] = {}

    def register(self, name: str | None = None) -> Callable[[T], T]:
        """Decorator (or call on a value): ``@BACKBONES.register()`` registers under the function's name."""

        def deco(entry: T) -> T:
            key = name or entry.__name__
            if key in self._entries:
                raise ValueError(f"{self.kind} {key!r} registered twice")
            self._entries[key] = entry
            return entry

        return deco

    def _filled(self) -> dict[str, T]:
        if not self._entries:
            importlib.import_module(self.home)
        return self._entries

    def check(self, name: str) -> None:
        """An unknown name raises a ConfigError with close matches and every choice."""
        if name in self._filled():
            return
        close = difflib.get_close_matches(str(name), self.names(), n=2, cutoff=0.5) if len(str(name)) < 100 else []
        hint = f"; did you mean {' or '.join(close)}?" if close else ""
        raise ConfigError(f"unknown {self.kind} {shown(name)}{hint} (choose one of {', '.join(self.names())})")

    def get(self, name: str) -> T:
        self.check(name)
        return self._entries[name]

    def create(self, name: str, **kwargs: Any) -> Any:
        return self.get(name)(**kwargs)  # type: ignore[operator]

    def names(self) -> list[str]:
        return sorted(self._filled())

    def __contains__(self, name: str) -> bool:
        return name in self._filled()


BACKBONES: Registry[Callable[..., Any]] = Registry("backbone", "mtl.models.backbones")
DATASETS: Registry[Any] = Registry("dataset", "mtl.data.datasets")
NORMALIZATIONS: Registry[tuple] = Registry("normalization", "mtl.data.transforms")
HEAD_INITS: Registry[Callable[..., Any]] = Registry("head init", "mtl.models.head")
RECIPES: Registry[dict] = Registry("pretraining recipe", "mtl.config")
