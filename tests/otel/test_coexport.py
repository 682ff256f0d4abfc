"""Co-export: one run of an unmodified service reaches the hub and an OTLP backend alike.

``examples/zero_code/app.py`` (it never imports ``when_coordinator``) runs under the real
``opentelemetry-instrument`` in a subprocess, with the OTLP exporters pointed at
``OtlpReceiver`` (standing in for a Collector) and ``WHEN_URL`` at a real reference hub. The
workflow the hub shows must be the span the receiver got (same ``when.workflow.id``), the hub's
log entries must carry that span's trace id and span ids the receiver got, and both sides must
hold the same log messages, each once.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from collections.abc import Mapping

import pytest

from tests.otel.conftest import APP, INSTRUMENT
from tests.support.otlp_receiver import (
    OtlpReceiver,
    ReceivedLog,
    ReceivedMetric,
    ReceivedSpan,
    attributes,
)
from when_coordinator.hub import StoredLog, ThreadedHub, WorkflowState
from when_coordinator.protocol import Phase

TIMEOUT = 15.0

WORKFLOW_MESSAGES = {
    "nightly ETL started",
    "extracted 3 batches",
    "loaded batch 0",
    "loaded batch 1",
    "loaded batch 2",
    "nightly ETL done",
}
ALL_MESSAGES = {*WORKFLOW_MESSAGES, "nightly ETL loaded 300 rows"}
OVERRIDE_WARNINGS = (
    "Overriding of current TracerProvider is not allowed",
    "Overriding of current LoggerProvider is not allowed",
    "Overriding of current MeterProvider is not allowed",
    "Overriding of current",
    "not allowed",
    "Attempting to instrument while already instrumented",
    "Failed to auto initialize",
    "Traceback",
)


def run_app(env: Mapping[str, str]) -> subprocess.CompletedProcess[str]:
    """The zero-code example under ``opentelemetry-instrument``, with only ``env`` configuring
    OpenTelemetry and coordination (inherited ``OTEL_*`` and ``WHEN_*`` are dropped)."""
    assert INSTRUMENT.exists(), f"{INSTRUMENT} missing: install the dev extras"
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "WHEN_"))}
    clean.pop("PYTHONPATH", None)
    clean.update(env)
    result = subprocess.run(
        [str(INSTRUMENT), sys.executable, str(APP)],
        env=clean,
        cwd=APP.parent,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, f"app failed ({result.returncode}):\n{result.stderr}"
    return result


def service_workflows(hub: ThreadedHub, service_name: str) -> list[WorkflowState]:
    services = {s.service_id for s in hub.services.values() if s.service_name == service_name}
    return [w for w in hub.workflows.values() if w.service_id in services]


def service_logs(hub: ThreadedHub, service_name: str) -> list[StoredLog]:
    services = {s.service_id for s in hub.services.values() if s.service_name == service_name}
    return [record for record in hub.logs if record.service_id in services]


def spans_of(receiver: OtlpReceiver, service_name: str) -> list[ReceivedSpan]:
    return [s for s in receiver.spans if s.resource.get("service.name") == service_name]


def logs_of(receiver: OtlpReceiver, service_name: str) -> list[ReceivedLog]:
    """The application's records (the package's own, if any, and OpenTelemetry's about
    itself, are not the app's)."""
    return [
        record
        for record in receiver.log_records
        if record.resource.get("service.name") == service_name
        and not record.scope.startswith(("when_coordinator", "opentelemetry."))
    ]


def wait_until_settled(
    hub: ThreadedHub, receiver: OtlpReceiver, service: str
) -> tuple[WorkflowState, ReceivedSpan]:
    """The one completed workflow at the hub, and its span at the receiver."""
    hub.wait_for(
        lambda h: (
            any(
                w.phase is Phase.COMPLETED and w.action_type == "nightly_etl"
                for w in service_workflows(h, service)
            )
            and {r.message for r in service_logs(h, service)} >= ALL_MESSAGES
        ),
        timeout=TIMEOUT,
    )
    receiver.wait_for(
        lambda r: (
            any("when.workflow.id" in s.attributes for s in spans_of(r, service))
            and {record.body for record in logs_of(r, service)} >= ALL_MESSAGES
        ),
        timeout=TIMEOUT,
    )
    workflows = service_workflows(hub, service)
    assert len(workflows) == 1, [w.workflow_id for w in workflows]
    workflow_spans = [s for s in spans_of(receiver, service) if "when.workflow.id" in s.attributes]
    assert len(workflow_spans) == 1, [s.name for s in workflow_spans]
    return workflows[0], workflow_spans[0]


def test_same_workflow_trace_and_logs_at_the_hub_and_the_otlp_receiver(
    hub: ThreadedHub, receiver: OtlpReceiver
) -> None:
    service = "coexport-etl"
    result = run_app(
        {
            "OTEL_SERVICE_NAME": service,
            "OTEL_TRACES_EXPORTER": "otlp",
            "OTEL_LOGS_EXPORTER": "otlp",
            "OTEL_METRICS_EXPORTER": "none",
            "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
            "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url,
            "WHEN_URL": hub.url,
            "WHEN_WORKFLOW_ENTRYPOINTS": "etl_jobs:nightly_etl",
        }
    )
    # The app's own logging.basicConfig() still took effect under instrumentation.
    assert "INFO etl: nightly ETL started" in result.stderr, result.stderr

    workflow, span = wait_until_settled(hub, receiver, service)

    # The hub's workflow is the span's workflow, with the same lifecycle.
    assert span.attributes["when.workflow.id"] == workflow.workflow_id
    assert span.name == "nightly_etl"
    assert span.attributes["when.workflow.phase"] == "completed"
    span_phases = [
        {a.key: a.value.string_value for a in event.attributes}["when.phase.to"]
        for event in span.span.events
        if event.name == "when.phase_changed"
    ]
    hub_phases = [change.to_phase.value for change in workflow.history]
    assert span_phases[-3:] == ["execution", "completing", "completed"]
    assert hub_phases[-3:] == ["execution", "completing", "completed"]

    # The whole run is one trace: the thread-pool batches are children of the workflow span.
    spans = spans_of(receiver, service)
    by_name = {s.name: s for s in spans}
    assert {"extract", "load-batch-0", "load-batch-1", "load-batch-2"} <= set(by_name)
    for name in ("extract", "load-batch-0", "load-batch-1", "load-batch-2"):
        assert by_name[name].trace_id == span.trace_id, name
        assert by_name[name].parent_span_id == span.span_id, name
    span_ids = {s.span_id for s in spans}

    # The hub's log entries of the workflow carry the span's trace and known span ids.
    workflow_logs = hub.logs_for(workflow.workflow_id)
    assert {r.message for r in workflow_logs} == WORKFLOW_MESSAGES
    for record in workflow_logs:
        assert record.entry.trace_id == span.trace_id, record.entry
        assert record.entry.span_id in span_ids, record.entry
    batch_logs = {r.message: r.entry.span_id for r in workflow_logs}
    for number in range(3):
        assert batch_logs[f"loaded batch {number}"] == by_name[f"load-batch-{number}"].span_id

    # Both sides hold the same log records, each once, with the same ids.
    hub_logs = service_logs(hub, service)
    otlp_logs = logs_of(receiver, service)
    assert Counter(r.message for r in hub_logs) == Counter(dict.fromkeys(ALL_MESSAGES, 1))
    assert Counter(r.body for r in otlp_logs) == Counter(dict.fromkeys(ALL_MESSAGES, 1))
    otlp_ids = {r.body: (r.trace_id, r.span_id) for r in otlp_logs}
    for record in hub_logs:
        trace_id, span_id = otlp_ids[record.message]
        if record.entry.trace_id:
            assert (record.entry.trace_id, record.entry.span_id) == (trace_id, span_id)
        else:  # logged outside any span: no ids on either side
            assert int(trace_id or "0", 16) == 0, record.message


@pytest.mark.parametrize("sdk_handler", [False, True], ids=["logging-instrumentation", "sdk"])
def test_distro_defaults_no_override_warnings_and_nothing_duplicated(
    hub: ThreadedHub, receiver: OtlpReceiver, sdk_handler: bool
) -> None:
    """The standard distro configuration (OTLP for traces, metrics and logs, and the logging
    instrumentation's handler, or the SDK's deprecated one as older set-ups have it): the
    instrumentor only adds to the providers it built, and no second logging handler."""
    service = f"coexport-distro-{'sdk' if sdk_handler else 'contrib'}"
    env = {
        "OTEL_SERVICE_NAME": service,
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url,
        "OTEL_EXPORTER_OTLP_COMPRESSION": "gzip",
        "WHEN_URL": hub.url,
        "WHEN_WORKFLOW_ENTRYPOINTS": "etl_jobs:nightly_etl",
    }
    if sdk_handler:
        env["OTEL_PYTHON_LOGGING_AUTO_INSTRUMENTATION_ENABLED"] = "true"
    result = run_app(env)
    for warning in OVERRIDE_WARNINGS:
        assert warning not in result.stderr, result.stderr
    # A bridge logging handler is on the root logger here; basicConfig() still works.
    assert "INFO etl: nightly ETL started" in result.stderr, result.stderr

    workflow, span = wait_until_settled(hub, receiver, service)
    assert span.attributes["when.workflow.id"] == workflow.workflow_id
    # The distro's defaults were in force (nothing named an exporter): OTLP, gzip-compressed.
    assert receiver.errors == []
    requests = [r for r in receiver.requests if service in r.services]
    assert {r.path for r in requests} >= {"/v1/traces", "/v1/logs"}
    assert {r.encoding for r in requests} == {"gzip"}

    span_ids = Counter(s.span_id for s in spans_of(receiver, service))
    assert span_ids, "no spans received"
    assert max(span_ids.values()) == 1, span_ids.most_common(3)
    otlp_messages = Counter(r.body for r in logs_of(receiver, service))
    hub_messages = Counter(r.message for r in service_logs(hub, service))
    assert otlp_messages == Counter(dict.fromkeys(ALL_MESSAGES, 1))
    assert hub_messages == Counter(dict.fromkeys(ALL_MESSAGES, 1))
    created = [
        m
        for m in hub.received
        if m.message.type == "workflow_created" and m.message.workflow_id == workflow.workflow_id
    ]
    assert len(created) == 1


def test_collector_only_no_hub_workflows_still_become_spans(receiver: OtlpReceiver) -> None:
    """Topology 1 of collector-config/README.md: no ``WHEN_URL``, nothing connects, and the
    workflow is still a span carrying its id and its phases."""
    service = "collector-only"
    result = run_app(
        {
            "OTEL_SERVICE_NAME": service,
            "OTEL_TRACES_EXPORTER": "otlp",
            "OTEL_LOGS_EXPORTER": "otlp",
            "OTEL_METRICS_EXPORTER": "none",
            "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
            "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url,
            "WHEN_WORKFLOW_ENTRYPOINTS": "etl_jobs:nightly_etl",
        }
    )
    for warning in OVERRIDE_WARNINGS:
        assert warning not in result.stderr, result.stderr
    receiver.wait_for(
        lambda r: (
            any("when.workflow.id" in s.attributes for s in spans_of(r, service))
            and {record.body for record in logs_of(r, service)} >= ALL_MESSAGES
        ),
        timeout=TIMEOUT,
    )
    (span,) = [s for s in spans_of(receiver, service) if "when.workflow.id" in s.attributes]
    assert span.name == "nightly_etl"
    assert span.attributes["when.workflow.phase"] == "completed"
    assert Counter(r.body for r in logs_of(receiver, service)) == Counter(
        dict.fromkeys(ALL_MESSAGES, 1)
    )


def metrics_of(receiver: OtlpReceiver, service_name: str) -> dict[str, ReceivedMetric]:
    """The package's metrics of one service, by name (the last export of each)."""
    return {
        m.name: m
        for m in receiver.metrics
        if m.resource.get("service.name") == service_name and m.scope == "when_coordinator"
    }


def test_metrics_co_export_beside_spans_and_logs(hub: ThreadedHub, receiver: OtlpReceiver) -> None:
    """``OTEL_METRICS_EXPORTER=otlp`` and no code change: the package's metrics reach the
    Collector with the same resource as the run's spans and logs."""
    service = "coexport-metrics"
    run_app(
        {
            "OTEL_SERVICE_NAME": service,
            "OTEL_TRACES_EXPORTER": "otlp",
            "OTEL_LOGS_EXPORTER": "otlp",
            "OTEL_METRICS_EXPORTER": "otlp",
            "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
            "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url,
            "WHEN_URL": hub.url,
            "WHEN_WORKFLOW_ENTRYPOINTS": "etl_jobs:nightly_etl",
        }
    )
    workflow, span = wait_until_settled(hub, receiver, service)
    # The provider exports at exit, once the coordinator has closed: all of it is in.
    receiver.wait_for(lambda r: "when.workflow.duration" in metrics_of(r, service), TIMEOUT)
    found = metrics_of(receiver, service)
    assert found.keys() >= {
        "when.workflow.duration",
        "when.workflow.active",
        "when.workflow.transitions",
        "when.client.outbox.size",
        "when.client.sent.messages",
        "when.client.connection.attempts",
        "when.client.connection.duration",
    }
    duration = found["when.workflow.duration"]
    assert (duration.kind, duration.unit) == ("histogram", "s")
    (point,) = duration.points
    assert attributes(point.attributes) == {
        "when.workflow.name": "nightly_etl",
        "when.workflow.result": "completed",
    }
    assert point.count == 1
    assert span.attributes["when.workflow.id"] == workflow.workflow_id
    assert {
        attributes(p.attributes)["when.workflow.phase"]: p.as_int
        for p in found["when.workflow.active"].points
    } == dict.fromkeys((p.value for p in Phase if not p.is_terminal), 0)
    attempts = found["when.client.connection.attempts"].points
    assert sum(p.as_int for p in attempts) == 1
    assert attributes(attempts[0].attributes)["server.port"] == hub.port
    # The resource is the one of the spans: the three signals describe one service run.
    assert duration.resource == span.resource


def test_no_metrics_with_the_metrics_exporter_none(
    hub: ThreadedHub, receiver: OtlpReceiver
) -> None:
    service = "coexport-no-metrics"
    run_app(
        {
            "OTEL_SERVICE_NAME": service,
            "OTEL_TRACES_EXPORTER": "otlp",
            "OTEL_LOGS_EXPORTER": "none",
            "OTEL_METRICS_EXPORTER": "none",
            "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
            "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url,
            "WHEN_URL": hub.url,
            "WHEN_WORKFLOW_ENTRYPOINTS": "etl_jobs:nightly_etl",
        }
    )
    receiver.wait_for(
        lambda r: any("when.workflow.id" in s.attributes for s in spans_of(r, service)),
        timeout=TIMEOUT,
    )
    assert not [r for r in receiver.requests if r.path == "/v1/metrics" and service in r.services]
