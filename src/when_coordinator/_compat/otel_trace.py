"""The trace side of the OpenTelemetry compat names (the logs side, heavier to import, is
``otel.py``): what the SDK offers no public accessor for.

Checked by ``tests/otel/test_compat.py``, against the lowest declared releases by
``scripts/test-otel-lowest``.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Any

from opentelemetry.sdk.trace import Event, SpanLimits
from opentelemetry.sdk.trace import Span as SdkSpan

__all__ = ["add_text_event", "span_limits_of"]


def span_limits_of(span: Any) -> SpanLimits | None:
    """The limits an SDK span was made with (its provider's, which may differ from the
    environment's); None for other spans."""
    limits = getattr(span, "_limits", None)
    return limits if isinstance(limits, SpanLimits) else None


_SDK_ADD_EVENT = SdkSpan.add_event
_plain: dict[type, bool] = {}
"""Span types whose ``add_event`` is the SDK's own (not overridden by a subclass)."""


def add_text_event(span: Any, name: str, attributes: dict[str, str]) -> None:
    """``span.add_event(name, attributes)`` for attributes whose values are all strings; the
    dict is the event's from then on (the caller builds it for the call and lets it go).

    The SDK's ``add_event`` cleans every value of every event (type checks, a lock and a
    ``BoundedAttributes`` each): a fifth of a task's workflow on the task's own thread (five
    phase events a task; figure [10]). Strings need no cleaning, only the span's limits:
    within them, an SDK span gets the event through ``_add_event``, which keeps its own event
    limit and its warning once the span has ended, with the attributes read-only as the SDK
    makes them. Any other span, or attributes the limits would cut, take ``add_event``.
    """
    kind = type(span)
    plain = _plain.get(kind)
    if plain is None:
        plain = _plain[kind] = (
            issubclass(kind, SdkSpan)
            and getattr(kind, "add_event", None) is _SDK_ADD_EVENT
            and callable(getattr(kind, "_add_event", None))
        )
    limits = getattr(span, "_limits", None) if plain else None
    if isinstance(limits, SpanLimits) and _within(limits, attributes):
        span._add_event(Event(name, MappingProxyType(attributes)))
    else:
        span.add_event(name, attributes)


def _within(limits: SpanLimits, attributes: dict[str, str]) -> bool:
    count, length = limits.max_event_attributes, limits.max_attribute_length
    if count is not None and len(attributes) > count:
        return False
    return length is None or all(len(value) <= length for value in attributes.values())
