"""Explicit registries: names map to factories; registering a name twice is an error."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from liif.errors import LiifError


class RegistryError(LiifError, KeyError):
    """An unknown or duplicate registry name."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0])


class Registry:
    """A named mapping from model names to factories ``f(**args) -> nn.Module``."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, Callable[..., Any]] = {}

    def register(self, name: str, factory: Callable[..., Any]) -> Callable[..., Any]:
        if name in self._items:
            raise RegistryError(f"{self.kind} {name!r} is already registered")
        self._items[name] = factory
        return factory

    def build(self, name: str, args: dict[str, Any] | None = None) -> Any:
        if name not in self._items:
            raise RegistryError(
                f"unknown {self.kind} {name!r}; known: {', '.join(sorted(self._items))}"
            )
        return self._items[name](**(args or {}))

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items
