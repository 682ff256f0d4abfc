"""Carrying workflow context into other processes, where no OpenTelemetry Context goes.

Within a process the running workflow is in the OpenTelemetry Context, which asyncio tasks
and, under ``opentelemetry-instrumentation-threading``, threads and thread pools carry.
Processes get a W3C carrier (``traceparent`` and ``baggage``, which holds the workflow ids):
``carrier()`` in the parent, ``attached()`` in the child. ``CarriedCall`` packs both into one
picklable callable for process pools.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import propagate
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

__all__ = ["CarriedCall", "attached", "carrier"]

# The workflow ids travel in W3C baggage whatever propagators the process is configured with:
# with "tracecontext" alone the link to the parent workflow was lost, and with "none"
# extraction gave no context at all (attaching it broke every context lookup in the block).
_W3C = CompositePropagator([TraceContextTextMapPropagator(), W3CBaggagePropagator()])


def carrier() -> dict[str, str]:
    """The current trace and workflow context as W3C headers (a plain, picklable dict), plus
    whatever the propagators the process is configured with add."""
    headers: dict[str, str] = {}
    propagate.inject(headers)
    _W3C.inject(headers)
    return headers


@contextlib.contextmanager
def attached(headers: Mapping[str, str]) -> Iterator[None]:
    """Run a block in the context a ``carrier()`` described: a workflow started inside it is
    the child of the workflow that made the carrier."""
    carried = dict(headers)
    context = propagate.extract(carried, context=otel_context.Context())
    context = _W3C.extract(carried, context=context)
    token = otel_context.attach(context)
    try:
        yield
    finally:
        otel_context.detach(token)


class CarriedCall:
    """``fn(*args, **kwargs)`` in another process, inside the caller's workflow context.

    Picklable when ``fn`` is (a module-level function), so it works with
    ``ProcessPoolExecutor`` under both fork and spawn.
    """

    def __init__(self, fn: Callable[..., Any], headers: Mapping[str, str]) -> None:
        self.fn = fn
        self.headers = dict(headers)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        with attached(self.headers):
            return self.fn(*args, **kwargs)
