"""Registry: a name -> object table that validates look-ups (PEFT-style; a user string is never ``eval``-ed).

The bottom of the package: it imports nothing from hf_knife. The built-in entries register themselves when their
modules are imported (``hf_knife/__init__.py`` imports them), so every look-up sees them:

- :data:`PENALTY_REGISTRY`: penalty classes (:mod:`hf_knife.penalties`), each declaring what it needs
  (``needs_sensitive``, ``metric_names``, ``supports_target``, ``check_config``);
- :data:`REPRESENTATION_REGISTRY`: pooling rules ``(hidden, attention_mask) -> [B, d]``
  (:mod:`hf_knife.representation`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

__all__ = ["PENALTY_REGISTRY", "REPRESENTATION_REGISTRY", "Registry"]

T = TypeVar("T")


class Registry(Generic[T]):
    """Names -> objects; ``register`` refuses to overwrite, ``get``/``check`` list the valid names on a miss."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: ``@REGISTRY.register("name")``; refuses to overwrite an existing name."""

        def decorator(obj: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._entries[name] = obj
            return obj

        return decorator

    def names(self) -> tuple[str, ...]:
        return tuple(self._entries)

    def check(self, name: str) -> str:
        """Return ``name`` if registered, else raise a ValueError listing the valid names."""
        if name not in self._entries:
            raise ValueError(f"unknown {self.kind} {name!r}; expected one of {', '.join(map(repr, self._entries))}")
        return name

    def get(self, name: str) -> T:
        return self._entries[self.check(name)]

    def values(self) -> tuple[T, ...]:
        return tuple(self._entries.values())

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)


PENALTY_REGISTRY: Registry[type] = Registry("penalty")
REPRESENTATION_REGISTRY: Registry[Callable] = Registry("representation")
