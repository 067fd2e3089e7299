"""Name -> class registries, so a recipe can pick a loss, signal or student builder by name."""

from __future__ import annotations

from typing import Callable, Generic, TypeVar

from stillroom.core.errors import RecipeError

T = TypeVar("T")


class Registry(Generic[T]):
    """A named collection; `@REG.register("name")` adds to it, `REG.get("name")` looks up with a helpful error."""

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def add(item: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._items[name] = item
            return item

        return add

    def get(self, name: str, where: str | None = None) -> T:
        if name not in self._items:
            raise RecipeError(f"unknown {self.kind} {name!r}; allowed values: {', '.join(sorted(self._items))}", where=where)
        return self._items[name]

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: str) -> bool:
        return name in self._items
