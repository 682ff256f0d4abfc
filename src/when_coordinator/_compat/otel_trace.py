"""The trace side of the OpenTelemetry compat names (the logs side, heavier to import, is
``otel.py``): what the SDK offers no public accessor for.

Checked by ``tests/otel/test_compat.py``, against the lowest declared releases by
``scripts/test-otel-lowest``.
"""

from __future__ import annotations

from typing import Any

from opentelemetry.sdk.trace import SpanLimits

__all__ = ["span_limits_of"]


def span_limits_of(span: Any) -> SpanLimits | None:
    """The limits an SDK span was made with (its provider's, which may differ from the
    environment's); None for other spans."""
    limits = getattr(span, "_limits", None)
    return limits if isinstance(limits, SpanLimits) else None
