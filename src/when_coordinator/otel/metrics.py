"""OpenTelemetry metrics: workflows, and the client's own health.

Names, units and attributes follow the semantic conventions' rules (docs/telemetry.md lists
them; the names are in ``attributes.py``). What they cost is kept off the application's hot
path:

- ``when.workflow.transitions`` and ``when.workflow.active`` are observable: a transition adds
  one to a counter of ours (a dictionary increment under a lock), and the active workflows are
  counted from the phase managers when a reader collects, which is when the cost belongs;
- ``when.workflow.duration`` is recorded once per finished workflow, and not on the
  application's thread: the run's figures wait in a bounded queue that the next collection
  records first (a histogram record costs the SDK several microseconds, a queue append a
  fraction of one). Only when the queue is full, with no reader collecting, does the
  application's thread record directly. The price: no exemplars link the histogram to the
  workflow's trace (the span has ``when.workflow.id``);
- the client's instruments read the counters the ``Coordinator`` keeps anyway (``stats()``),
  and its connection and ping durations are recorded on its own thread.

Metrics go through the global meter provider when it is an SDK one at the first workflow (or
when ``WhenInstrumentor`` instruments, with its ``meter_provider`` keyword as contrib
instrumentations take it), or through the provider given to ``enable_metrics()``. They are
off, and cost nothing, with ``WHEN_METRICS_ENABLED=false``, and for the global provider also
with ``OTEL_METRICS_EXPORTER=none`` or ``OTEL_SDK_DISABLED=true``.
"""

from __future__ import annotations

import os
import threading
import time
import weakref
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping
from typing import Any
from urllib.parse import urlsplit

from opentelemetry import metrics as otel_metrics
from opentelemetry.metrics import CallbackOptions, Meter, MeterProvider, Observation

from .._version import __version__
from ..client import Coordinator, CoordinatorStats
from ..client._util import qualified_name
from ..phase_manager import PhaseState
from ..protocol import Phase
from . import attributes as attr

__all__ = [
    "OTHER_ERROR",
    "WorkflowMetrics",
    "disable_metrics",
    "enable_from_global",
    "enable_metrics",
    "error_type",
    "metrics_enabled",
    "observe",
]

OTHER_ERROR = "_OTHER"
"""``error.type`` when no more precise type is known (the semantic conventions' fallback)."""

_WORKFLOW_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 600, 1800, 3600, 7200, 21600)
_PING_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
_CONNECTION_BUCKETS = (1, 5, 10, 30, 60, 300, 600, 1800, 3600, 7200, 21600, 43200, 86400)
_FINISHED_QUEUE = 16_384
"""Finished runs waiting for a collection; beyond, the application's thread records."""
_LIVE_PHASES = tuple(phase for phase in Phase if not phase.is_terminal)

_ENV_SWITCH = "WHEN_METRICS_ENABLED"


def error_type(exc: BaseException) -> str:
    """The ``error.type`` of an exception: its fully qualified class name."""
    return qualified_name(exc)


def _held(coordinator: Coordinator) -> int:
    stats = coordinator.stats()
    return stats.queued + stats.inflight


def _env_allows(*, global_provider: bool) -> bool:
    """Whether the environment lets metrics be recorded; see the module docstring."""
    switch = os.environ.get(_ENV_SWITCH, "").strip().lower()
    if switch in ("0", "false", "no", "off"):
        return False
    if not global_provider:
        return True
    if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporters = [e.strip() for e in os.environ.get("OTEL_METRICS_EXPORTER", "").split(",")]
    return not (exporters and all(e in ("", "none") for e in exporters) and any(exporters))


_Key = tuple[str, int, str]
"""(server.address, server.port, error.type or "")."""


def _server(coordinator: Coordinator) -> tuple[str, int]:
    """The hub a coordinator talks to, as ``server.address`` and ``server.port``."""
    url = coordinator.config.when_url.split(",")[0].strip()
    if not url:
        return "", 0
    try:
        parts = urlsplit(url)
        port = parts.port or (443 if parts.scheme == "wss" else 80)
    except ValueError:
        return "", 0
    return parts.hostname or "", port


def _attributes(address: str, port: int, error: str = "") -> dict[str, str | int]:
    attributes: dict[str, str | int] = {}
    if address:
        attributes[attr.SERVER_ADDRESS] = address
        attributes[attr.SERVER_PORT] = port
    if error:
        attributes[attr.ERROR_TYPE] = error
    return attributes


class _Cumulative:
    """Counts summed over coordinators, which stay counted after one is garbage collected.

    Observable counters must never go down; a coordinator that disappears takes its counters
    with it, so its last observed values are kept.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._retired: Counter[_Key] = Counter()
        self._last: dict[int, Counter[_Key]] = {}

    def update(self, coordinator: Coordinator, counts: Counter[_Key]) -> None:
        key = id(coordinator)
        with self._lock:
            if key not in self._last:
                weakref.finalize(coordinator, self._retire, key)
            self._last[key] = counts

    def _retire(self, key: int) -> None:
        with self._lock:
            self._retired.update(self._last.pop(key, Counter()))

    def total(self) -> Counter[_Key]:
        with self._lock:
            total = Counter(self._retired)
            for counts in self._last.values():
                total.update(counts)
        return total


class WorkflowMetrics:
    """The instruments on one meter, and the counts behind the observable ones."""

    def __init__(self, meter: Meter) -> None:
        self.active = True
        """Off once replaced or disabled: the observable callbacks then report nothing."""
        self._lock = threading.Lock()
        self._transitions: Counter[tuple[str, str]] = Counter()
        self._finished: deque[tuple[float, str, str, str]] = deque()
        self._sent = _Cumulative()
        self._attempts = _Cumulative()
        self._connected_at: weakref.WeakKeyDictionary[Coordinator, float] = (
            weakref.WeakKeyDictionary()
        )
        self.duration = meter.create_histogram(
            attr.METRIC_WORKFLOW_DURATION,
            unit="s",
            description="Duration of workflow runs, from registration to their final phase.",
            explicit_bucket_boundaries_advisory=_WORKFLOW_BUCKETS,
        )
        meter.create_observable_up_down_counter(
            attr.METRIC_WORKFLOW_ACTIVE,
            [self._observe_active],
            unit="{workflow}",
            description="Workflows not in a final phase, by phase.",
        )
        meter.create_observable_counter(
            attr.METRIC_WORKFLOW_TRANSITIONS,
            [self._observe_transitions],
            unit="{transition}",
            description="Phase transitions of workflows, by the phases they went from and to.",
        )
        for name, unit, description, read in (
            (
                attr.METRIC_CLIENT_OUTBOX_SIZE,
                "{message}",
                "Messages the client holds: queued, or sent and not yet acknowledged.",
                _held,
            ),
            (
                attr.METRIC_CLIENT_OUTBOX_CAPACITY,
                "{message}",
                "The most messages the outbox holds before it sheds (outbox_max_messages).",
                lambda c: c.config.outbox_max_messages,
            ),
            (
                attr.METRIC_CLIENT_OUTBOX_MEMORY_USAGE,
                "By",
                "Estimated bytes the outbox holds.",
                lambda c: c.stats().queued_bytes,
            ),
            (
                attr.METRIC_CLIENT_OUTBOX_MEMORY_LIMIT,
                "By",
                "The most bytes the outbox holds before it sheds (outbox_max_bytes).",
                lambda c: c.config.outbox_max_bytes,
            ),
        ):
            meter.create_observable_up_down_counter(
                name, [self._gauge_callback(read)], unit=unit, description=description
            )
        meter.create_observable_counter(
            attr.METRIC_CLIENT_SENT_MESSAGES,
            [self._observe_sent],
            unit="{message}",
            description="Messages the client delivered to the hub, and (with error.type, the "
            "reason) the ones it dropped.",
        )
        meter.create_observable_counter(
            attr.METRIC_CLIENT_CONNECTION_ATTEMPTS,
            [self._observe_attempts],
            unit="{attempt}",
            description="Connection attempts to the hub; failed ones carry error.type.",
        )
        self.connection_duration = meter.create_histogram(
            attr.METRIC_CLIENT_CONNECTION_DURATION,
            unit="s",
            description="How long connections to the hub lasted, recorded when one ends.",
            explicit_bucket_boundaries_advisory=_CONNECTION_BUCKETS,
        )
        self.ping_duration = meter.create_histogram(
            attr.METRIC_CLIENT_PING_DURATION,
            unit="s",
            description="Round trip of a WebSocket ping to the hub and its pong.",
            explicit_bucket_boundaries_advisory=_PING_BUCKETS,
        )

    # ------------------------------------------------------------------ workflows (hot path)

    def transition(self, state: PhaseState, name: str, failure: str) -> None:
        """One transition; called under the phase manager's lock, so it only counts, and
        queues the duration of a workflow that ended (see the module docstring)."""
        phase = state.phase
        previous = state.previous_phase
        # ``_value_``: the plain string, whose hash is C; an Enum member's is Python code.
        key = (previous._value_ if previous is not None else "", phase._value_)
        with self._lock:
            self._transitions[key] += 1
        if phase.is_terminal:
            run = (max(0.0, state.updated_at - state.started_at), name, key[1], failure)
            if len(self._finished) < _FINISHED_QUEUE:
                self._finished.append(run)
            else:
                self._record(run)

    def _record(self, run: tuple[float, str, str, str]) -> None:
        seconds, name, result, failure = run
        attributes = {attr.WORKFLOW_NAME: name, attr.WORKFLOW_RESULT: result}
        if result == Phase.FAILED.value:
            attributes[attr.ERROR_TYPE] = failure or OTHER_ERROR
        self.duration.record(seconds, attributes)

    def _drain(self) -> None:
        """Record the queued durations; at collection, before the SDK reads its storages."""
        finished = self._finished
        while finished:
            try:
                run = finished.popleft()
            except IndexError:  # another collection took the last one
                return
            self._record(run)

    # ------------------------------------------------------------------ observations

    def _observe_transitions(self, options: CallbackOptions) -> Iterable[Observation]:
        if not self.active:
            return []
        with self._lock:
            counts = list(self._transitions.items())
        return [
            Observation(count, {attr.PHASE_FROM: previous, attr.PHASE_TO: phase})
            for (previous, phase), count in counts
        ]

    def _observe_active(self, options: CallbackOptions) -> Iterable[Observation]:
        # Every collection calls this (the SDK reads synchronous instruments after all the
        # callbacks): the moment to record the queued durations.
        self._drain()
        if not self.active:
            return []
        counts: Counter[Phase] = Counter()
        seen: set[int] = set()
        for coordinator in _coordinators_now():
            phases = coordinator.phases
            if id(phases) in seen:  # several coordinators may share a phase manager
                continue
            seen.add(id(phases))
            counts.update(state.phase for state in phases.get_active_workflows())
        # Every live phase, zeros included: a phase that empties reads 0, not "no data".
        return [Observation(counts[phase], {attr.PHASE: phase.value}) for phase in _LIVE_PHASES]

    def _gauge_callback(
        self, read: Callable[[Coordinator], int]
    ) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def observe(options: CallbackOptions) -> Iterable[Observation]:
            if not self.active:
                return []
            values: Counter[tuple[str, int]] = Counter()
            for coordinator in _coordinators_now():
                values[_server(coordinator)] += read(coordinator)
            return [Observation(value, _attributes(*server)) for server, value in values.items()]

        return observe

    def _observe_sent(self, options: CallbackOptions) -> Iterable[Observation]:
        """Delivered (no ``error.type``) and dropped by reason."""
        return self._observe_outcomes(
            self._sent, lambda stats: (stats.delivered, stats.drop_reasons)
        )

    def _observe_attempts(self, options: CallbackOptions) -> Iterable[Observation]:
        """Successful connections (no ``error.type``) and failures by exception class."""
        return self._observe_outcomes(
            self._attempts, lambda stats: (stats.connects, stats.connect_errors)
        )

    def _observe_outcomes(
        self,
        ledger: _Cumulative,
        outcomes: Callable[[CoordinatorStats], tuple[int, Mapping[str, int]]],
    ) -> Iterable[Observation]:
        """A counter of successes and failures by ``error.type``, summed over every
        coordinator (kept monotonic by ``ledger`` when a coordinator goes away)."""
        if not self.active:
            return []
        for coordinator in _coordinators_now():
            ok, failures = outcomes(coordinator.stats())
            address, port = _server(coordinator)
            counts: Counter[_Key] = Counter(
                {(address, port, error): n for error, n in failures.items()}
            )
            counts[address, port, ""] = ok
            ledger.update(coordinator, counts)
        return [Observation(n, _attributes(*key)) for key, n in ledger.total().items()]

    # ------------------------------------------------------------------ the client's thread

    def connected(self, coordinator: Coordinator) -> None:
        self._connected_at[coordinator] = time.monotonic()

    def disconnected(self, coordinator: Coordinator) -> None:
        started = self._connected_at.pop(coordinator, None)
        if started is not None:
            duration = time.monotonic() - started
            self.connection_duration.record(duration, _attributes(*_server(coordinator)))

    def pong(self, coordinator: Coordinator, latency: float) -> None:
        self.ping_duration.record(latency, _attributes(*_server(coordinator)))

    def _after_fork(self) -> None:
        """In a forked child: locks a parent thread held would stay held, and the runs still
        queued are the parent's to record."""
        self._lock = threading.Lock()
        self._sent._lock = threading.Lock()
        self._attempts._lock = threading.Lock()
        self._finished.clear()


# ---------------------------------------------------------------------- the process's state

recorder: WorkflowMetrics | None = None
"""The instruments in use, or None when metrics are off (the hot path reads only this)."""

_lock = threading.Lock()
_configured = False
_provider: Any = None
_coordinators: weakref.WeakSet[Coordinator] = weakref.WeakSet()
_subscribed: weakref.WeakSet[Coordinator] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    global _lock  # noqa: PLW0603
    _lock = threading.Lock()
    current = recorder
    if current is not None:
        current._after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _coordinators_now() -> list[Coordinator]:
    with _lock:
        return list(_coordinators)


def metrics_enabled() -> bool:
    return recorder is not None


def enable_metrics(meter_provider: MeterProvider | None = None) -> bool:
    """Record the package's metrics through ``meter_provider`` (default: the global one).

    Returns False when the environment switches metrics off (see the module docstring).
    Calling it again with another provider moves the metrics there.
    """
    global recorder, _configured, _provider  # noqa: PLW0603 - the process-wide switch
    with _lock:
        _configured = True
        if not _env_allows(global_provider=meter_provider is None):
            _disable_locked()
            return False
        if recorder is not None and _provider is meter_provider:
            return True
        if recorder is not None:
            recorder.active = False
        meter = (
            meter_provider.get_meter("when_coordinator", __version__)
            if meter_provider is not None
            else otel_metrics.get_meter("when_coordinator", __version__)
        )
        recorder = WorkflowMetrics(meter)
        _provider = meter_provider
        coordinators = list(_coordinators)
    for coordinator in coordinators:
        _subscribe(coordinator)
    return True


def enable_from_global() -> bool:
    """``enable_metrics()`` if the global meter provider is an SDK one (as
    ``opentelemetry-instrument`` sets it), else decide "off": the API's proxy provider would
    make every record a call that leads nowhere. A provider set later needs
    ``enable_metrics()``. Metrics already going to a provider given explicitly stay there."""
    if _provider is not None and recorder is not None:
        return True
    if hasattr(otel_metrics.get_meter_provider(), "force_flush"):
        return enable_metrics()
    disable_metrics()
    return False


def disable_metrics() -> None:
    """Stop recording; the hot path is back to one ``None`` check."""
    global _configured  # noqa: PLW0603
    with _lock:
        _configured = True
        _disable_locked()


def _disable_locked() -> None:
    global recorder, _provider  # noqa: PLW0603
    if recorder is not None:
        recorder.active = False
    recorder = None
    _provider = None


def _reset() -> None:
    """Back to "not configured" (tests): the next coordinator decides again."""
    global _configured  # noqa: PLW0603
    disable_metrics()
    with _lock:
        _configured = False


def observe(coordinator: Coordinator) -> None:
    """Include ``coordinator`` in the client instruments (and its workflows in the workflow
    ones). The first one also switches metrics on when nobody decided yet and the global
    meter provider is an SDK one."""
    with _lock:
        _coordinators.add(coordinator)
        decide = not _configured
    if decide:
        enable_from_global()
    if recorder is not None:
        _subscribe(coordinator)


def _subscribe(coordinator: Coordinator) -> None:
    """Connection and ping durations come from the coordinator's own callbacks."""
    with _lock:
        if coordinator in _subscribed:
            return
        _subscribed.add(coordinator)
    ref = weakref.ref(coordinator)

    def connected() -> None:
        current, owner = recorder, ref()
        if current is not None and owner is not None:
            current.connected(owner)

    def disconnected() -> None:
        current, owner = recorder, ref()
        if current is not None and owner is not None:
            current.disconnected(owner)

    def pong(latency: float) -> None:
        current, owner = recorder, ref()
        if current is not None and owner is not None:
            current.pong(owner, latency)

    coordinator.on_connected(connected)
    coordinator.on_disconnected(disconnected)
    coordinator.on_pong(pong)
    if coordinator.is_connected and recorder is not None:
        recorder.connected(coordinator)  # already up: its duration counts from now
