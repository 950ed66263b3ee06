"""Name -> builder registries (backbones today); unknown names fail with the list of choices."""

from __future__ import annotations

from typing import Any, Callable, Generic, TypeVar

from mtl.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._builders: dict[str, Callable[..., T]] = {}

    def register(self, name: str | None = None) -> Callable[[Callable[..., T]], Callable[..., T]]:
        def deco(fn: Callable[..., T]) -> Callable[..., T]:
            key = name or fn.__name__
            if key in self._builders:
                raise ValueError(f"{self.kind} {key!r} registered twice")
            self._builders[key] = fn
            return fn

        return deco

    def create(self, name: str, **kwargs: Any) -> T:
        if name not in self._builders:
            raise ConfigError(f"unknown {self.kind} {name!r}; choose one of {', '.join(self.names())}")
        return self._builders[name](**kwargs)

    def names(self) -> list[str]:
        return sorted(self._builders)

    def __contains__(self, name: str) -> bool:
        return name in self._builders
