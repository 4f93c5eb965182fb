"""A small name -> factory registry, the extension point for feedback decoders and exit policies."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

__all__ = ["Registry"]

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to factories so users can add components without touching library code.

    Args:
        kind: what the registry holds, used in error messages (e.g. ``"exit policy"``).

    Examples:
        >>> shapes = Registry("shape")
        >>> @shapes.register("square")
        ... def square(side):
        ...     return side * side
        >>> shapes.build("square", 3)
        9
        >>> "square" in shapes
        True
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._factories: dict[str, Callable[..., T]] = {}

    def register(self, name: str, *, overwrite: bool = False) -> Callable[[Callable[..., T]], Callable[..., T]]:
        """Decorator that registers ``factory`` under ``name``.

        Raises:
            ValueError: if ``name`` is taken and ``overwrite`` is False.
        """

        def decorator(factory: Callable[..., T]) -> Callable[..., T]:
            if name in self._factories and not overwrite:
                raise ValueError(f"{self.kind} {name!r} is already registered; pass overwrite=True to replace it")
            self._factories[name] = factory
            return factory

        return decorator

    def get(self, name: str) -> Callable[..., T]:
        """Return the factory registered under ``name``.

        Raises:
            KeyError: naming the unknown entry and listing the known ones.
        """
        try:
            return self._factories[name]
        except KeyError:
            known = ", ".join(sorted(self._factories)) or "none"
            raise KeyError(f"unknown {self.kind} {name!r}; registered: {known}") from None

    def build(self, name: str, *args, **kwargs) -> T:
        """Call the factory registered under ``name`` with the given arguments."""
        return self.get(name)(*args, **kwargs)

    def names(self) -> list[str]:
        """Registered names, sorted."""
        return sorted(self._factories)

    def __contains__(self, name: object) -> bool:
        return name in self._factories

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.names()})"
