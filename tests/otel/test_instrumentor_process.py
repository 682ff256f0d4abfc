"""``WhenInstrumentor`` where process-wide state matters, each case in its own interpreter.

Global providers can be set once per process, process pools fork or spawn, and
``opentelemetry-instrument`` configures the SDK before any application code: so these run in
subprocesses (small scripts written to ``tmp_path``, or the real ``opentelemetry-instrument``
console script next to ``sys.executable``) against a real hub on loopback and, where OTLP is
involved, ``OtlpReceiver``.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections import Counter
from collections.abc import Mapping
from pathlib import Path

import pytest

from tests.otel.conftest import (
    APP,
    APP_MESSAGES,
    INSTRUMENT,
    logs_of,
    of_service,
    run,
    run_script,
    when_env,
    workflows_of,
)
from tests.support.otlp_receiver import OtlpReceiver
from when_coordinator.hub import ThreadedHub
from when_coordinator.protocol import Phase

TIMEOUT = 15.0
POOL_MAIN = """
import concurrent.futures
import json
import multiprocessing
import os
import sys

from when_coordinator import workflow
from when_coordinator.otel import WhenInstrumentor

import pool_jobs


def main():
    WhenInstrumentor().instrument()
    context = multiprocessing.get_context(sys.argv[1])
    with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        # The worker exists before the workflow starts: only the carrier can link them.
        worker = pool.submit(pool_jobs.warm).result(30)
        with workflow("pool-parent") as parent:
            child = pool.submit(pool_jobs.child, 7).result(30)
            (mapped,) = pool.map(pool_jobs.child, [8], timeout=30)
    print(json.dumps({
        "parent": parent.id, "child": child, "mapped": mapped, "worker": worker, "me": os.getpid()
    }))


if __name__ == "__main__":
    main()
"""

PROXY_MAIN = """
import json
import logging

from opentelemetry import _logs, trace

from when_coordinator.otel import WhenInstrumentor
from when_coordinator.otel.log_exporter import CoordinationLogExporter
from when_coordinator.otel.span_processor import CoordinationSpanProcessor

before = [type(trace.get_tracer_provider()).__name__, type(_logs.get_logger_provider()).__name__]
WhenInstrumentor().instrument()
tracer_provider = trace.get_tracer_provider()
logger_provider = _logs.get_logger_provider()
# The application configures logging after instrumentation, as most do at start-up.
logging.basicConfig(level=logging.INFO, format="BASIC %(name)s: %(message)s")

import jobs  # noqa: E402 - imported after instrument(): patched on import

jobs.job(2)
span_processors = tracer_provider._active_span_processor._span_processors
print(json.dumps({
    "before": before,
    "after": [type(tracer_provider).__name__, type(logger_provider).__name__],
    "span_processors": [type(p).__name__ for p in span_processors],
    "root_handlers": [type(h).__name__ for h in logging.getLogger().handlers],
}))
"""

CONFIGURED_MAIN = """
import json
import logging

from opentelemetry import _logs, trace
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import SimpleLogRecordProcessor
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from when_coordinator.otel import WhenInstrumentor

spans = InMemorySpanExporter()
tracer_provider = TracerProvider()
tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
trace.set_tracer_provider(tracer_provider)
records = InMemoryLogRecordExporter()
logger_provider = LoggerProvider()
logger_provider.add_log_record_processor(SimpleLogRecordProcessor(records))
_logs.set_logger_provider(logger_provider)
logging.getLogger().setLevel(logging.INFO)

WhenInstrumentor().instrument()

import jobs  # noqa: E402

jobs.job(3)
print(json.dumps({
    "same_tracer_provider": trace.get_tracer_provider() is tracer_provider,
    "same_logger_provider": _logs.get_logger_provider() is logger_provider,
    "span_processors": [
        type(p).__name__ for p in tracer_provider._active_span_processor._span_processors
    ],
    "spans": [s.name for s in spans.get_finished_spans()],
    "records": [r.log_record.body for r in records.get_finished_logs()],
}))
"""


EXPORTER_ALONE_MAIN = """
import logging

from opentelemetry import _logs

from when_coordinator.otel import get_coordinator

logging.getLogger().setLevel(logging.INFO)
logging.getLogger("alone").info("early")
_logs.get_logger_provider().force_flush()  # exported now: the exporter makes its coordinator
assert get_coordinator().flush(10), "early was not delivered"
print("CoordinationLogExporter delivered")
logging.getLogger("alone").info("late")  # left for the SDK's final export at exit
"""


# ---------------------------------------------------------------------- fixtures and helpers


# ---------------------------------------------------------------------- providers


def test_installs_sdk_providers_where_only_proxies_exist(hub: ThreadedHub, tmp_path: Path) -> None:
    service = "proxy-only"
    result, stderr = run_script(
        tmp_path, PROXY_MAIN, when_env(hub, service, WHEN_WORKFLOW_ENTRYPOINTS="jobs:job")
    )
    assert result["before"] == ["ProxyTracerProvider", "ProxyLoggerProvider"]
    assert result["after"] == ["TracerProvider", "LoggerProvider"]
    assert result["span_processors"] == ["CoordinationSpanProcessor"]
    # The instrumentor's logging handler (a LoggingHandler), what keeps Python's last resort,
    # and basicConfig()'s.
    (ours,) = [name for name in result["root_handlers"] if name.endswith("LoggingHandler")]
    assert sorted(result["root_handlers"]) == sorted([ours, "StreamHandler", "LastResortKeeper"])
    assert "BASIC jobs: job running with 2" in stderr, "logging.basicConfig() had no effect"

    hub.wait_for(
        lambda h: (
            any(w.phase is Phase.COMPLETED for w in workflows_of(h, service).values())
            and any(r.message == "job running with 2" for r in logs_of(h, service))
        ),
        timeout=TIMEOUT,
    )
    (workflow,) = workflows_of(hub, service).values()
    assert workflow.action_type == "job"
    (record,) = [r for r in logs_of(hub, service) if r.message == "job running with 2"]
    assert record.workflow_id == workflow.workflow_id


def test_attaches_to_global_sdk_providers_already_configured(
    hub: ThreadedHub, tmp_path: Path
) -> None:
    service = "preconfigured"
    result, _ = run_script(
        tmp_path, CONFIGURED_MAIN, when_env(hub, service, WHEN_WORKFLOW_ENTRYPOINTS="jobs:job")
    )
    assert result["same_tracer_provider"] is True
    assert result["same_logger_provider"] is True
    assert result["span_processors"] == ["SimpleSpanProcessor", "CoordinationSpanProcessor"]
    # The application's own exporters still get everything, the hub gets it too.
    assert result["spans"] == ["job"]
    assert result["records"] == ["job running with 3"]
    hub.wait_for(
        lambda h: (
            any(w.phase is Phase.COMPLETED for w in workflows_of(h, service).values())
            and any(r.message == "job running with 3" for r in logs_of(h, service))
        ),
        timeout=TIMEOUT,
    )
    (workflow,) = workflows_of(hub, service).values()
    (record,) = [r for r in logs_of(hub, service) if r.message == "job running with 3"]
    assert record.workflow_id == workflow.workflow_id


# ---------------------------------------------------------------------- process pools


@pytest.mark.parametrize(
    ("method", "propagators"),
    [
        ("fork", None),
        ("spawn", None),
        # The carrier is W3C whatever the process's propagators: with "tracecontext" alone the
        # workflow ids (baggage) were not carried, with "none" the worker's context broke.
        ("fork", "none"),
        ("spawn", "tracecontext"),
    ],
)
def test_process_pool_child_workflow_is_linked_to_its_parent(
    hub: ThreadedHub, tmp_path: Path, method: str, propagators: str | None
) -> None:
    service = f"pool-{method}-{propagators}"
    env = when_env(hub, service)
    if propagators is not None:
        env["OTEL_PROPAGATORS"] = propagators
    result, _ = run_script(tmp_path, POOL_MAIN, env, method)
    parent_id = result["parent"]
    child, mapped = result["child"], result["mapped"]
    assert result["worker"] != result["me"]
    for task in (child, mapped):  # submit() and map()
        assert task["pid"] == result["worker"], "the task ran in the worker made before the parent"
        assert task["parent"] == parent_id
        assert task["root"] == parent_id
    ids = (child["id"], mapped["id"])

    def linked(h: ThreadedHub) -> bool:
        workflows = h.workflows
        return all(
            key in workflows and workflows[key].phase is Phase.COMPLETED
            for key in (*ids, parent_id)
        )

    hub.wait_for(linked, timeout=TIMEOUT)
    workflows = hub.workflows
    for key in ids:
        assert workflows[key].parent_workflow_id == parent_id
        assert workflows[key].root_workflow_id == parent_id
        assert workflows[key].action_type == "pool-child"
    assert set(workflows[parent_id].children) == set(ids)
    assert workflows[parent_id].service_id in of_service(hub, service)
    if method == "fork":
        # The worker inherited the instrumentation: its logs reach the hub too, and it
        # reported as its own instance, not over the parent's service id.
        hub.wait_for(lambda h: any(r.workflow_id == child["id"] for r in h.logs), timeout=TIMEOUT)
        (record,) = [r for r in hub.logs if r.workflow_id == child["id"]]
        assert record.message == f"pool child 7 in {child['id']}"
        assert workflows[child["id"]].service_id != workflows[parent_id].service_id
        # Another instance of the same service, not another service.
        child_service = hub.services[workflows[child["id"]].service_id]
        assert child_service.service_name == service
        assert (
            child_service.instance_id != hub.services[workflows[parent_id].service_id].instance_id
        )
        assert not [a for a in hub.anomalies if "reused" in a.text]


# ---------------------------------------------------------------------- opentelemetry-instrument


def run_instrumented(env: Mapping[str, str]) -> subprocess.CompletedProcess[str]:
    """The zero-code example (no import of when_coordinator) under ``opentelemetry-instrument``."""
    assert INSTRUMENT.exists(), f"{INSTRUMENT} missing: install the dev extras"
    return run([str(INSTRUMENT), sys.executable, str(APP)], env, APP.parent)


def test_hub_only_with_the_otlp_exporters_off(hub: ThreadedHub) -> None:
    """Topology 2 of collector-config/README.md: every ``OTEL_*_EXPORTER`` is ``none``; the
    SDK providers exist without exporters and the instrumentor feeds the hub from them."""
    service = "hub-only"
    run_instrumented(
        {
            "OTEL_SERVICE_NAME": service,
            "OTEL_TRACES_EXPORTER": "none",
            "OTEL_LOGS_EXPORTER": "none",
            "OTEL_METRICS_EXPORTER": "none",
            "WHEN_URL": hub.url,
            "WHEN_WORKFLOW_ENTRYPOINTS": "etl_jobs:nightly_etl",
        }
    )
    hub.wait_for(
        lambda h: (
            {r.message for r in logs_of(h, service)} >= APP_MESSAGES
            and any(w.phase is Phase.COMPLETED for w in workflows_of(h, service).values())
        ),
        timeout=TIMEOUT,
    )
    (workflow,) = workflows_of(hub, service).values()
    assert workflow.action_type == "nightly_etl"
    assert workflow.service_id in {
        s.service_id for s in hub.services.values() if s.service_name == service
    }
    assert len(hub.logs_for(workflow.workflow_id)) == len(APP_MESSAGES) - 1


@pytest.mark.parametrize("exporters", ["otlp,when", "when"])
def test_when_logs_exporter_entry_point_delivers_each_record_once(
    hub: ThreadedHub, receiver: OtlpReceiver, exporters: str
) -> None:
    service = f"logs-exporter-{exporters.replace(',', '-')}"
    run_instrumented(
        {
            "OTEL_SERVICE_NAME": service,
            "OTEL_TRACES_EXPORTER": "none",
            "OTEL_METRICS_EXPORTER": "none",
            "OTEL_LOGS_EXPORTER": exporters,
            "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
            "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url,
            "WHEN_URL": hub.url,
            "WHEN_WORKFLOW_ENTRYPOINTS": "etl_jobs:nightly_etl",
        }
    )
    hub.wait_for(
        lambda h: (
            {r.message for r in logs_of(h, service)} >= APP_MESSAGES
            and any(w.phase is Phase.COMPLETED for w in workflows_of(h, service).values())
        ),
        timeout=TIMEOUT,
    )
    # Each record once: the instrumentor saw "when" in OTEL_LOGS_EXPORTER and attached no
    # second exporter.
    assert Counter(r.message for r in logs_of(hub, service)) == Counter(
        dict.fromkeys(APP_MESSAGES, 1)
    )
    (workflow,) = workflows_of(hub, service).values()
    assert {r.message for r in hub.logs_for(workflow.workflow_id)} == APP_MESSAGES - {
        "nightly ETL loaded 300 rows"
    }
    otlp = [r.body for r in receiver.log_records if r.resource.get("service.name") == service]
    if "otlp" in exporters:
        assert Counter(otlp) == Counter(dict.fromkeys(APP_MESSAGES, 1))
    else:
        assert otlp == []


def test_when_logs_exporter_works_without_the_instrumentor(
    hub: ThreadedHub, tmp_path: Path
) -> None:
    """The entry point alone (the instrumentor disabled, the SDK's logging handler on) delivers
    what it exports while the process runs and what only the SDK's final export at exit
    carries."""
    service = "logs-exporter-alone"
    script = tmp_path / "alone.py"
    script.write_text(textwrap.dedent(EXPORTER_ALONE_MAIN), encoding="utf-8")
    env = {
        "OTEL_SERVICE_NAME": service,
        "OTEL_TRACES_EXPORTER": "none",
        "OTEL_METRICS_EXPORTER": "none",
        "OTEL_LOGS_EXPORTER": "when",
        "OTEL_PYTHON_LOGGING_AUTO_INSTRUMENTATION_ENABLED": "true",
        "OTEL_PYTHON_DISABLED_INSTRUMENTATIONS": "when",
        "WHEN_URL": hub.url,
    }
    result = run([str(INSTRUMENT), sys.executable, str(script)], env, tmp_path)
    assert result.stdout.strip().splitlines()[-1] == "CoordinationLogExporter delivered"
    hub.wait_for(lambda h: any(r.message == "early" for r in logs_of(h, service)), timeout=TIMEOUT)
    assert [r.message for r in logs_of(hub, service)].count("early") == 1
    assert workflows_of(hub, service) == {}, "the instrumentor was disabled: no workflows"
    # The process has exited: the SDK's final export at exit reached the hub too, because
    # the exporter keeps its coordinator open until the exporter shuts down.
    hub.wait_for(lambda h: any(r.message == "late" for r in logs_of(h, service)), timeout=5)
    assert [r.message for r in logs_of(hub, service)].count("late") == 1
