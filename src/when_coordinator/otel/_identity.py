"""A map keyed by the identity of OpenTelemetry providers."""

from __future__ import annotations

import weakref
from typing import Any, Generic, TypeVar

__all__ = ["ByIdentity"]

_T = TypeVar("_T")


class ByIdentity(Generic[_T]):
    """What was attached to each provider, keyed by the provider's identity.

    Providers need not be hashable (logfire's proxies are dataclasses, whose ``__eq__`` drops
    ``__hash__``) nor weakly referable; an entry goes when its provider is collected, where the
    provider allows a weak reference (providers otherwise live as long as the process).
    """

    def __init__(self) -> None:
        self._items: dict[int, tuple[Any, _T]] = {}

    def get(self, provider: Any) -> _T | None:
        entry = self._items.get(id(provider))
        if entry is None:
            return None
        held, value = entry
        if isinstance(held, weakref.ref):
            held = held()
        return value if held is provider else None

    def set(self, provider: Any, value: _T) -> None:
        key = id(provider)

        def forget(ref: Any) -> None:
            entry = self._items.get(key)
            if entry is not None and entry[0] is ref:
                del self._items[key]

        held: Any
        try:
            held = weakref.ref(provider, forget)
        except TypeError:
            held = provider
        self._items[key] = (held, value)
