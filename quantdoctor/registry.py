"""The one registry pattern of the code base: a name -> object table filled by a decorator."""

from __future__ import annotations

from typing import Callable, Generic, Iterator, TypeVar

from quantdoctor.errors import UnknownNameError

T = TypeVar("T")


class Registry(Generic[T]):
    """A named table of objects (schemes, preprocess presets, metrics, ...).

    Usage::

        PRESETS: Registry[Callable] = Registry("preprocess preset")

        @PRESETS.register("scale01")
        def scale01(x): ...
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def decorator(obj: T) -> T:
            self.add(name, obj)
            return obj

        return decorator

    def add(self, name: str, obj: T) -> None:
        if name in self._items:
            raise ValueError(f"{self.kind} '{name}' is registered twice")
        self._items[name] = obj

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            raise UnknownNameError(
                f"unknown {self.kind} '{name}'; choose one of: {', '.join(self.names())}"
            ) from None

    def names(self) -> list[str]:
        return list(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def items(self) -> list[tuple[str, T]]:
        return list(self._items.items())
