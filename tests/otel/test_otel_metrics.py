"""The package's OpenTelemetry metrics, read with the SDK's ``InMemoryMetricReader``: workflow
runs (duration, active, transitions) and the client's own health (outbox, sent and dropped
messages, connection attempts and durations, ping round trips), provoked against a real hub."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    HistogramDataPoint,
    InMemoryMetricReader,
    Metric,
    NumberDataPoint,
    Sum,
)
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from tests.conftest import OTEL_TIMEOUT
from when_coordinator import Config, Coordinator, Phase, WorkflowCancelled, workflow
from when_coordinator.hub import Hub, ThreadedHub
from when_coordinator.otel import WhenInstrumentor
from when_coordinator.otel import attributes as attr
from when_coordinator.otel import metrics as when_metrics
from when_coordinator.phase_manager import PhaseState


class Boom(Exception):
    pass


@pytest.fixture
def reader() -> Iterator[InMemoryMetricReader]:
    """An SDK meter provider reading into memory, given to the package for this test."""
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    assert when_metrics.enable_metrics(provider)
    yield reader
    when_metrics._reset()
    provider.shutdown()


def collect(reader: InMemoryMetricReader) -> dict[str, Metric]:
    data = reader.get_metrics_data()
    found: dict[str, Metric] = {}
    if data is None:
        return found
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            if scope.scope.name == "when_coordinator":
                found.update({metric.name: metric for metric in scope.metrics})
    return found


def points(metric: Metric) -> list[Any]:
    return list(metric.data.data_points)


def attrs(point: Any) -> dict[str, Any]:
    return dict(point.attributes or {})


def value(metric: Metric, **attributes: Any) -> float:
    """The sum of the number points whose attributes include ``attributes`` (None: absent)."""
    total = 0.0
    for point in points(metric):
        assert isinstance(point, NumberDataPoint)
        if all(attrs(point).get(k) == v for k, v in attributes.items()):
            total += point.value
    return total


def durations(metric: Metric, name: str) -> list[HistogramDataPoint]:
    found = []
    for point in points(metric):
        assert isinstance(point, HistogramDataPoint)
        if attrs(point).get(attr.WORKFLOW_NAME) == name:
            found.append(point)
    return found


def server_of(hub: ThreadedHub) -> dict[str, Any]:
    return {"server.address": "127.0.0.1", "server.port": hub.port}


# ---------------------------------------------------------------------- workflows


def test_a_run_records_its_duration_transitions_and_active_count(
    reader: InMemoryMetricReader,
    otel_coordinator: Coordinator,
    tracer_provider: TracerProvider,
) -> None:
    entered = threading.Event()
    release = threading.Event()

    def run() -> None:
        with workflow("metrics-ok", coordinator=otel_coordinator, tracer_provider=tracer_provider):
            entered.set()
            release.wait(OTEL_TIMEOUT)

    worker = threading.Thread(target=run)
    worker.start()
    try:
        assert entered.wait(OTEL_TIMEOUT)
        active = collect(reader)[attr.METRIC_WORKFLOW_ACTIVE]
        assert active.unit == "{workflow}"
        assert value(active, **{attr.PHASE: "execution"}) == 1
    finally:
        release.set()
        worker.join(OTEL_TIMEOUT)

    metrics = collect(reader)
    active = metrics[attr.METRIC_WORKFLOW_ACTIVE]
    assert value(active) == 0, "the active count returns to zero"
    assert {attrs(p)[attr.PHASE] for p in points(active)} == {
        phase.value for phase in Phase if not phase.is_terminal
    }

    duration = metrics[attr.METRIC_WORKFLOW_DURATION]
    assert duration.unit == "s"
    (point,) = durations(duration, "metrics-ok")
    assert point.count == 1
    assert 0 <= point.sum < OTEL_TIMEOUT
    assert attrs(point) == {
        attr.WORKFLOW_NAME: "metrics-ok",
        attr.WORKFLOW_RESULT: "completed",
    }

    transitions = metrics[attr.METRIC_WORKFLOW_TRANSITIONS]
    assert transitions.unit == "{transition}"
    assert isinstance(transitions.data, Sum)
    assert transitions.data.is_monotonic
    for source, target in [
        ("pending", "pre-flight"),
        ("pre-flight", "planning"),
        ("planning", "execution"),
        ("execution", "completing"),
        ("completing", "completed"),
    ]:
        assert value(transitions, **{attr.PHASE_FROM: source, attr.PHASE_TO: target}) >= 1
    for point in points(transitions):
        assert set(attrs(point)) == {attr.PHASE_FROM, attr.PHASE_TO}


def test_failures_carry_error_type_on_the_metric_and_the_span(
    reader: InMemoryMetricReader,
    otel_coordinator: Coordinator,
    tracer_provider: TracerProvider,
    span_exporter: InMemorySpanExporter,
) -> None:
    with (
        pytest.raises(Boom),
        workflow("metrics-fail", coordinator=otel_coordinator, tracer_provider=tracer_provider),
    ):
        raise Boom("disk full")
    with workflow(
        "metrics-fail", coordinator=otel_coordinator, tracer_provider=tracer_provider
    ) as wf:
        wf.transition(Phase.FAILED, "gave up")  # failed, without an exception

    duration = collect(reader)[attr.METRIC_WORKFLOW_DURATION]
    by_type = {
        attrs(point).get(attr.ERROR_TYPE): point for point in durations(duration, "metrics-fail")
    }
    assert set(by_type) == {f"{__name__}.Boom", "_OTHER"}
    for point in by_type.values():
        assert attrs(point)[attr.WORKFLOW_RESULT] == "failed"
        assert point.count == 1

    raised, explicit = span_exporter.get_finished_spans()
    assert raised.status.status_code is StatusCode.ERROR
    assert raised.attributes is not None
    assert raised.attributes[attr.ERROR_TYPE] == f"{__name__}.Boom"
    assert raised.attributes[attr.STATUS_DESCRIPTION] == "Boom: disk full"
    assert explicit.status.status_code is StatusCode.ERROR
    assert explicit.attributes is not None
    assert explicit.attributes[attr.ERROR_TYPE] == "_OTHER"
    assert explicit.attributes[attr.STATUS_DESCRIPTION] == "gave up"


def test_cancellation_is_a_result_not_an_error(
    reader: InMemoryMetricReader,
    otel_coordinator: Coordinator,
    tracer_provider: TracerProvider,
) -> None:
    with workflow(
        "metrics-cancel", coordinator=otel_coordinator, tracer_provider=tracer_provider
    ) as wf:
        otel_coordinator.phases.cancel(wf.id, "operator")
        wf.safe_point()
    (point,) = durations(collect(reader)[attr.METRIC_WORKFLOW_DURATION], "metrics-cancel")
    assert attrs(point) == {
        attr.WORKFLOW_NAME: "metrics-cancel",
        attr.WORKFLOW_RESULT: "cancelled",
    }


def test_spans_adopted_by_the_processor_are_measured_too(
    reader: InMemoryMetricReader, otel_coordinator: Coordinator
) -> None:
    from when_coordinator.otel import CoordinationSpanProcessor  # noqa: PLC0415

    provider = TracerProvider()
    provider.add_span_processor(CoordinationSpanProcessor(otel_coordinator))
    tracer = provider.get_tracer("raw")
    with tracer.start_as_current_span("raw-job", attributes={attr.WORKFLOW_ID: "wf-raw-metrics"}):
        pass
    (point,) = durations(collect(reader)[attr.METRIC_WORKFLOW_DURATION], "raw-job")
    assert attrs(point)[attr.WORKFLOW_RESULT] == "completed"
    provider.shutdown()


@pytest.mark.parametrize(
    ("ending", "result"),
    [("complete", "success"), ("fail", "failure"), ("cancel", "cancellation")],
)
def test_cicd_pipeline_attributes_are_opt_in(
    otel_coordinator: Coordinator,
    tracer_provider: TracerProvider,
    span_exporter: InMemorySpanExporter,
    ending: str,
    result: str,
) -> None:
    with workflow("plain", coordinator=otel_coordinator, tracer_provider=tracer_provider):
        pass
    with (
        pytest.raises(Boom) if ending == "fail" else _nothing(),
        workflow(
            "pipeline",
            coordinator=otel_coordinator,
            tracer_provider=tracer_provider,
            cicd_attributes=True,
        ) as wf,
    ):
        if ending == "fail":
            raise Boom("x")
        if ending == "cancel":
            raise WorkflowCancelled(wf.id, "stop")
    plain, pipeline = span_exporter.get_finished_spans()
    assert not any(key.startswith("cicd.") for key in plain.attributes or {})
    assert pipeline.attributes is not None
    assert pipeline.attributes[attr.CICD_PIPELINE_NAME] == "pipeline"
    assert pipeline.attributes[attr.CICD_PIPELINE_RUN_ID] == wf.id
    assert pipeline.attributes[attr.CICD_PIPELINE_RESULT] == result


def test_cicd_attributes_from_the_environment(
    otel_connect: Callable[..., Coordinator],
    tracer_provider: TracerProvider,
    span_exporter: InMemorySpanExporter,
) -> None:
    from_env = Config.from_env({"WHEN_CICD_ATTRIBUTES": "true"})
    coordinator = otel_connect(cicd_attributes=from_env.cicd_attributes)
    with workflow("from-env", coordinator=coordinator, tracer_provider=tracer_provider):
        pass
    (span,) = span_exporter.get_finished_spans()
    assert span.attributes is not None
    assert span.attributes[attr.CICD_PIPELINE_RESULT] == "success"


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


# ---------------------------------------------------------------------- switches


def test_off_when_the_global_provider_is_not_an_sdk_one(
    otel_coordinator: Coordinator, tracer_provider: TracerProvider
) -> None:
    when_metrics._reset()
    try:
        when_metrics.observe(otel_coordinator)  # the API's proxy provider: decides "off"
        assert when_metrics.recorder is None
        with workflow("unmeasured", coordinator=otel_coordinator, tracer_provider=tracer_provider):
            pass
    finally:
        when_metrics._reset()


@pytest.mark.parametrize(
    ("env", "explicit", "enabled"),
    [
        ({"OTEL_METRICS_EXPORTER": "none"}, False, False),
        ({"OTEL_METRICS_EXPORTER": "none"}, True, True),
        ({"OTEL_SDK_DISABLED": "true"}, False, False),
        ({"WHEN_METRICS_ENABLED": "false"}, True, False),
        ({"OTEL_METRICS_EXPORTER": "otlp"}, False, True),
    ],
)
def test_environment_switches(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], explicit: bool, enabled: bool
) -> None:
    for name, raw in env.items():
        monkeypatch.setenv(name, raw)
    provider = MeterProvider(metric_readers=[InMemoryMetricReader()])
    try:
        assert when_metrics.enable_metrics(provider if explicit else None) is enabled
        assert when_metrics.metrics_enabled() is enabled
    finally:
        when_metrics._reset()
        provider.shutdown()


def test_the_instrumentor_takes_a_meter_provider(otel_hub: ThreadedHub) -> None:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    coordinator = Coordinator(Config(when_url=otel_hub.url, service_name="instrumented"))
    coordinator.connect()
    instrumentor = WhenInstrumentor()
    tracer_provider = TracerProvider()
    try:
        instrumentor.instrument(
            coordinator=coordinator,
            tracer_provider=tracer_provider,
            meter_provider=provider,
            config=Config(when_url=otel_hub.url, logs_enabled=False),
        )
        assert coordinator.wait_registered(OTEL_TIMEOUT)
        metrics = collect(reader)
        attempts = metrics[attr.METRIC_CLIENT_CONNECTION_ATTEMPTS]
        assert value(attempts, **server_of(otel_hub)) == 1
    finally:
        instrumentor.uninstrument()
        assert when_metrics.recorder is None
        when_metrics._reset()
        coordinator.close()
        tracer_provider.shutdown()
        provider.shutdown()


# ---------------------------------------------------------------------- the client


def test_client_instruments_follow_a_disconnect_drops_and_a_reconnect(
    reader: InMemoryMetricReader,
) -> None:
    first = ThreadedHub(Hub(port=0)).start()
    port = first.port
    server = server_of(first)
    refused = {**server, attr.ERROR_TYPE: "ConnectionRefusedError"}
    coordinator = Coordinator(
        Config(
            when_url=first.url,
            service_name="metrics-client",
            outbox_max_messages=20,
            reconnect_initial_delay=0.05,
            reconnect_max_delay=0.1,
            ping_interval=0.05,
        )
    )
    up, down, pongs = threading.Event(), threading.Event(), threading.Event()
    coordinator.on_connected(up.set)
    coordinator.on_disconnected(down.set)
    coordinator.on_pong(lambda latency: pongs.set())
    when_metrics.observe(coordinator)
    coordinator.connect()
    second: ThreadedHub | None = None
    try:
        assert coordinator.wait_registered(OTEL_TIMEOUT)
        assert pongs.wait(OTEL_TIMEOUT), "no ping was answered"
        coordinator.log_info("one")
        assert coordinator.flush(OTEL_TIMEOUT)
        metrics = collect(reader)
        assert value(metrics[attr.METRIC_CLIENT_CONNECTION_ATTEMPTS], **server) == 1
        assert value(metrics[attr.METRIC_CLIENT_OUTBOX_CAPACITY], **server) == 20
        assert metrics[attr.METRIC_CLIENT_OUTBOX_CAPACITY].unit == "{message}"
        assert metrics[attr.METRIC_CLIENT_OUTBOX_MEMORY_LIMIT].unit == "By"
        assert value(metrics[attr.METRIC_CLIENT_OUTBOX_SIZE], **server) == 0
        sent = metrics[attr.METRIC_CLIENT_SENT_MESSAGES]
        assert sent.unit == "{message}"
        assert value(sent, **server) >= 1
        ping = metrics[attr.METRIC_CLIENT_PING_DURATION]
        assert ping.unit == "s"
        assert sum(p.count for p in points(ping)) >= 1

        # The hub goes away: the connection's duration is recorded, attempts fail, and 50
        # logs into an outbox of 20 shed the oldest 30.
        up.clear()
        first.close()
        assert down.wait(OTEL_TIMEOUT)
        for i in range(50):
            coordinator.log_info(f"while away {i}")
        assert eventually(lambda: coordinator.stats().connect_errors), "no failed attempt"
        metrics = collect(reader)
        connection = metrics[attr.METRIC_CLIENT_CONNECTION_DURATION]
        assert connection.unit == "s"
        assert sum(p.count for p in points(connection)) == 1
        assert value(metrics[attr.METRIC_CLIENT_CONNECTION_ATTEMPTS], **refused) >= 1
        assert value(metrics[attr.METRIC_CLIENT_OUTBOX_SIZE], **server) == 20
        assert value(metrics[attr.METRIC_CLIENT_OUTBOX_MEMORY_USAGE], **server) > 0
        sent = metrics[attr.METRIC_CLIENT_SENT_MESSAGES]
        assert value(sent, **server, **{attr.ERROR_TYPE: "outbox full"}) == 30

        # The hub is back on the same port: a reconnect, and what was held is delivered.
        second = ThreadedHub(Hub(port=port)).start()
        assert up.wait(OTEL_TIMEOUT)
        assert coordinator.flush(OTEL_TIMEOUT)
        metrics = collect(reader)
        attempts = metrics[attr.METRIC_CLIENT_CONNECTION_ATTEMPTS]
        assert value(attempts, **server, **{attr.ERROR_TYPE: None}) == 2, "two that succeeded"
        assert value(metrics[attr.METRIC_CLIENT_OUTBOX_SIZE], **server) == 0
        assert value(metrics[attr.METRIC_CLIENT_SENT_MESSAGES], **server) >= 1 + 30 + 20
    finally:
        coordinator.close()
        first.close()
        if second is not None:
            second.close()


def eventually(condition: Callable[[], object], timeout: float = OTEL_TIMEOUT) -> bool:
    """Poll a counter of the client's thread (it has no event for it), within ``timeout``."""
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while not condition():
        if time.monotonic() > deadline:
            return False
        pause.wait(0.01)
    return True


def test_the_instrumentor_leaves_metrics_the_application_enabled(
    reader: InMemoryMetricReader, otel_hub: ThreadedHub
) -> None:
    mine = when_metrics.recorder
    coordinator = Coordinator(Config(when_url=otel_hub.url, service_name="instrumented"))
    instrumentor = WhenInstrumentor()
    tracer_provider = TracerProvider()
    try:
        instrumentor.instrument(
            coordinator=coordinator,
            tracer_provider=tracer_provider,
            config=Config(when_url=otel_hub.url, logs_enabled=False),
        )
        assert when_metrics.recorder is mine  # the global provider is no SDK one here
    finally:
        instrumentor.uninstrument()
        coordinator.close()
        tracer_provider.shutdown()
    assert when_metrics.recorder is mine


def test_durations_wait_for_a_collection_and_a_full_queue_records_at_once(
    reader: InMemoryMetricReader,
    otel_coordinator: Coordinator,
    tracer_provider: TracerProvider,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    recorder = when_metrics.recorder
    assert recorder is not None
    with workflow("queued", coordinator=otel_coordinator, tracer_provider=tracer_provider):
        pass
    assert len(recorder._finished) == 1, "queued, not recorded on the application's thread"
    (point,) = durations(collect(reader)[attr.METRIC_WORKFLOW_DURATION], "queued")
    assert point.count == 1
    assert not recorder._finished

    monkeypatch.setattr(when_metrics, "_FINISHED_QUEUE", 0)  # nobody collects: it is full
    with workflow("direct", coordinator=otel_coordinator, tracer_provider=tracer_provider):
        pass
    assert not recorder._finished
    (point,) = durations(collect(reader)[attr.METRIC_WORKFLOW_DURATION], "direct")
    assert point.count == 1


def test_a_forked_child_records_without_the_parents_locks_or_queue(
    reader: InMemoryMetricReader,
    otel_coordinator: Coordinator,
    tracer_provider: TracerProvider,
) -> None:
    from tests.support.faults import fork_run  # noqa: PLC0415

    recorder = when_metrics.recorder
    assert recorder is not None
    with workflow("parent-run", coordinator=otel_coordinator, tracer_provider=tracer_provider):
        pass
    assert len(recorder._finished) == 1

    def child() -> dict[str, int]:
        queued = len(recorder._finished)
        state = PhaseState("wf-child", Phase.COMPLETED, Phase.COMPLETING, started_at=1.0)
        recorder.transition(state, "child-run", "")  # needs the lock the parent holds
        return {"queued_at_fork": queued, "queued_now": len(recorder._finished)}

    with recorder._lock:  # held by the parent at the moment of the fork
        code, result, _ = fork_run(child, timeout=OTEL_TIMEOUT)
    assert code == 0, result
    assert result == {"queued_at_fork": 0, "queued_now": 1}
    (point,) = durations(collect(reader)[attr.METRIC_WORKFLOW_DURATION], "parent-run")
    assert point.count == 1  # the parent still records its own run
