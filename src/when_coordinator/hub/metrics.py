"""The hub's metrics in the Prometheus text exposition format (version 0.0.4), for ``GET
/metrics``.

Everything is read from the hub's state when scraped, except the command latencies, which
``CommandLatency`` buckets as commands complete: a scrape costs the hub one pass over its
services and workflows, and its message path nothing beyond the counters it keeps anyway.
Families and their meaning are listed in docs/telemetry.md.
"""

from __future__ import annotations

import bisect
import email.utils
import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

from websockets.datastructures import Headers
from websockets.http11 import Response

from ..protocol import MessageType, Phase

if TYPE_CHECKING:
    from .view import HubView

__all__ = ["CONTENT_TYPE", "FAMILIES", "CommandLatency", "figures", "metrics_response", "render"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

FAMILIES: Mapping[str, tuple[str, str]] = {
    "when_hub_services": ("gauge", "Services the hub knows, by whether they are connected."),
    "when_hub_connections_open": ("gauge", "Open coordination connections."),
    "when_hub_workflows": ("gauge", "Workflows the hub holds, by phase."),
    "when_hub_messages_applied": (
        "counter",
        "Messages from services applied to the hub's state, by type.",
    ),
    "when_hub_anomalies": (
        "counter",
        "Protocol anomalies recorded (duplicates, illegal moves...).",
    ),
    "when_hub_evictions": (
        "counter",
        "Records forgotten to stay within bounds, by kind (workflow, log, workflow_log).",
    ),
    "when_hub_store_lag_seconds": (
        "gauge",
        "Age of the oldest change not yet written to the store (0 when all are written).",
    ),
    "when_hub_store_errors": ("counter", "Store writes that failed."),
    "when_hub_command_duration_seconds": (
        "histogram",
        "Operator commands: pause, resume and cancel until written to the service's "
        "connection (they are never acknowledged), status until the service answered.",
    ),
}
"""Every family ``render`` writes: name -> (type, help). docs/telemetry.md lists the same."""

_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
COMMANDS = ("pause", "resume", "cancel", "status")


class CommandLatency:
    """Cumulative histograms of command durations, by command and outcome."""

    def __init__(self, buckets: Sequence[float] = _BUCKETS) -> None:
        self.buckets = tuple(buckets)
        self._counts: dict[tuple[str, str], list[int]] = {}
        self._sums: dict[tuple[str, str], float] = {}

    def observe(self, command: str, seconds: float, outcome: str = "ok") -> None:
        key = (command, outcome)
        counts = self._counts.get(key)
        if counts is None:
            counts = self._counts[key] = [0] * (len(self.buckets) + 1)
        counts[bisect.bisect_left(self.buckets, seconds)] += 1
        self._sums[key] = self._sums.get(key, 0.0) + seconds

    def samples(self) -> Iterable[str]:
        name = "when_hub_command_duration_seconds"
        for (command, outcome), counts in sorted(self._counts.items()):
            labels = f'command="{_escape(command)}",outcome="{_escape(outcome)}"'
            running = 0
            for bound, count in zip((*self.buckets, math.inf), counts, strict=True):
                running += count
                yield f'{name}_bucket{{{labels},le="{_number(bound)}"}} {running}'
            yield f"{name}_sum{{{labels}}} {_number(self._sums[command, outcome])}"
            yield f"{name}_count{{{labels}}} {running}"

    def summary(self) -> dict[str, dict[str, dict[str, float]]]:
        """By command and outcome: ``count``, ``sum_seconds``, and ``p50_seconds`` and
        ``p99_seconds`` estimated from the buckets (their upper bounds, Prometheus' way)."""
        result: dict[str, dict[str, dict[str, float]]] = {}
        for (command, outcome), counts in sorted(self._counts.items()):
            total = sum(counts)
            result.setdefault(command, {})[outcome] = {
                "count": total,
                "sum_seconds": self._sums[command, outcome],
                "p50_seconds": self._quantile(counts, total, 0.5),
                "p99_seconds": self._quantile(counts, total, 0.99),
            }
        return result

    def _quantile(self, counts: list[int], total: int, q: float) -> float:
        rank, running = q * total, 0
        for bound, count in zip((*self.buckets, math.inf), counts, strict=True):
            running += count
            if running >= rank:
                return bound if bound != math.inf else self.buckets[-1]
        return self.buckets[-1]


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    if value == math.inf:
        return "+Inf"
    if isinstance(value, int) or float(value).is_integer():
        return str(int(value))
    return repr(float(value))


def _family(name: str, samples: Iterable[str]) -> list[str]:
    kind, text = FAMILIES[name]
    exposed = f"{name}_total" if kind == "counter" else name
    return [f"# HELP {exposed} {text}", f"# TYPE {exposed} {kind}", *samples]


def _sample(name: str, value: float, labels: Mapping[str, str] | None = None) -> str:
    if not labels:
        return f"{name} {_number(value)}"
    text = ",".join(f'{key}="{_escape(val)}"' for key, val in labels.items())
    return f"{name}{{{text}}} {_number(value)}"


def figures(hub: HubView, now: float) -> dict[str, Any]:
    """The hub's figures at ``now`` (``time.monotonic()``) as JSON-ready data: what ``render``
    exposes to Prometheus, and what the operator API serves (``GET /v1/metrics``, op
    ``metrics``) to the dashboard, so both always show the same numbers."""
    state = hub.state
    connected = sum(1 for service in state.services.values() if service.connected)
    phases: Counter[Phase] = Counter(workflow.phase for workflow in state.workflows.values())
    applied = state.messages_applied
    store = hub.store_status(now)
    return {
        "services": {"connected": connected, "disconnected": len(state.services) - connected},
        "connections_open": sum(c.is_open for c in state.connections.values()),
        "workflows": {phase.value: phases[phase] for phase in Phase},
        "messages_applied": {
            kind: applied[kind]
            for kind in (str(kind) for kind in MessageType)
            if applied[kind] or kind in _ALWAYS_SHOWN
        },
        "anomalies": state.anomaly_count,
        "evictions": {
            "workflow": state.workflows_evicted,
            "log": state.logs.evicted,
            "workflow_log": sum(buffer.evicted for buffer in state.workflow_logs.values()),
        },
        "store": None if store is None else {"lag_seconds": store[0], "errors": store[1]},
        "commands": hub.command_latency.summary(),
    }


def render(hub: HubView, now: float) -> str:
    """The exposition of ``figures(hub, now)``."""
    data = figures(hub, now)
    lines: list[str] = []
    lines += _family(
        "when_hub_services",
        [_sample("when_hub_services", n, {"state": k}) for k, n in data["services"].items()],
    )
    lines += _family(
        "when_hub_connections_open",
        [_sample("when_hub_connections_open", data["connections_open"])],
    )
    lines += _family(
        "when_hub_workflows",
        [_sample("when_hub_workflows", n, {"phase": k}) for k, n in data["workflows"].items()],
    )
    lines += _family(
        "when_hub_messages_applied",
        [
            _sample("when_hub_messages_applied_total", n, {"type": k})
            for k, n in data["messages_applied"].items()
        ],
    )
    lines += _family("when_hub_anomalies", [_sample("when_hub_anomalies_total", data["anomalies"])])
    lines += _family(
        "when_hub_evictions",
        [_sample("when_hub_evictions_total", n, {"kind": k}) for k, n in data["evictions"].items()],
    )
    store = data["store"]
    if store is not None:
        lines += _family(
            "when_hub_store_lag_seconds",
            [_sample("when_hub_store_lag_seconds", store["lag_seconds"])],
        )
        lines += _family(
            "when_hub_store_errors", [_sample("when_hub_store_errors_total", store["errors"])]
        )
    lines += _family("when_hub_command_duration_seconds", hub.command_latency.samples())
    return "\n".join(lines) + "\n"


_ALWAYS_SHOWN = frozenset(
    str(kind)
    for kind in (
        MessageType.WORKFLOW_CREATED,
        MessageType.PHASE_CHANGED,
        MessageType.PROGRESS,
        MessageType.LOG_BATCH,
    )
)
"""Message types shown at 0 before the first one: a series that exists from the start makes
rates right from the first scrape."""


def metrics_response(hub: HubView, method: str, now: float) -> Response:
    """The ``GET /metrics`` answer (authentication is the caller's)."""
    if method not in ("GET", "HEAD"):
        body, status, content_type = b"use GET for /metrics\n", 405, "text/plain; charset=utf-8"
    else:
        body, status, content_type = render(hub, now).encode(), 200, CONTENT_TYPE
    headers = Headers(
        [
            ("Date", email.utils.formatdate(usegmt=True)),
            ("Connection", "close"),
            ("Content-Type", content_type),
            ("Content-Length", str(len(body))),
            ("Cache-Control", "no-store"),
        ]
    )
    return Response(status, HTTPStatus(status).phrase, headers, body)
