"""``WhenInstrumentor`` beside other telemetry, in real processes: an application under
``opentelemetry-instrument`` whose OTLP exporters face a closed port exits in time, and
``instrument()`` attaches to whatever provider is installed (logfire's proxies) or says once
what still works, never raising into the application.

Each case runs in its own interpreter, against a real hub on loopback; the exit times are
measured against the same run with the instrumentor disabled.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import pytest

from tests.otel.conftest import (
    APP,
    APP_MESSAGES,
    INSTRUMENT,
    clean_env,
    logs_of,
    run,
    run_script,
    when_env,
    workflows_of,
)
from tests.support.faults import free_port
from when_coordinator.hub import ThreadedHub
from when_coordinator.protocol import Phase

WAIT = 15.0
CLOSE_TIMEOUT = 5.0
"""``WHEN_CLOSE_TIMEOUT`` in these runs (the default)."""
SLACK = 3.0
"""Seconds of start-up and scheduling noise allowed between two runs of the same program on a
loaded machine (the package's exit handlers themselves take ``CLOSE_TIMEOUT`` at most; the
code before the fix took about 21 s with the hub unreachable, and forever with the OTLP
exporters failing)."""
OTLP_TIMEOUT = "2"
"""``OTEL_EXPORTER_OTLP_TIMEOUT`` (seconds): how long an OTLP exporter retries one batch before
giving up. Shortened from 10 s to keep the runs quick. With the instrumentor the OTLP logs
exporter also holds the application's log records (co-export) and spends up to this on them at
the SDK's exit, which the run without it does not: the SDK's time, not the package's, and kept
under ``CLOSE_TIMEOUT`` here so the bound measures what the package adds."""


def timed_app(env: Mapping[str, str], limit: float) -> tuple[float, str]:
    """Run the zero-code example under ``opentelemetry-instrument``: (seconds, stderr)."""
    assert INSTRUMENT.exists(), f"{INSTRUMENT} missing: install the dev extras"
    started = time.monotonic()
    try:
        result = subprocess.run(
            [str(INSTRUMENT), sys.executable, str(APP)],
            env=clean_env(env),
            cwd=APP.parent,
            capture_output=True,
            text=True,
            timeout=limit,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        tail = (exc.stderr or b"")[-2000:]
        pytest.fail(f"the application had not exited after {limit:.0f} s:\n{tail!r}")
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    return elapsed, result.stderr


def exporters_env(
    service: str, when_url: str, otlp: bool, *, disabled: bool = False, logs: str = "otlp"
) -> dict[str, str]:
    env = {
        "OTEL_SERVICE_NAME": service,
        "OTEL_METRICS_EXPORTER": "none",
        "WHEN_URL": when_url,
        "WHEN_WORKFLOW_ENTRYPOINTS": "etl_jobs:nightly_etl",
        "WHEN_CLOSE_TIMEOUT": str(CLOSE_TIMEOUT),
        "WHEN_RECONNECT_INITIAL_DELAY": "0.05",
    }
    if otlp:  # the real OTLP HTTP exporters, pointed at a loopback port nobody listens on
        env.update(
            {
                "OTEL_TRACES_EXPORTER": "otlp",
                "OTEL_LOGS_EXPORTER": logs,
                "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
                "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{free_port()}",
                "OTEL_EXPORTER_OTLP_TIMEOUT": OTLP_TIMEOUT,
            }
        )
    else:
        env.update({"OTEL_TRACES_EXPORTER": "none", "OTEL_LOGS_EXPORTER": "none"})
    if disabled:
        env["OTEL_PYTHON_DISABLED_INSTRUMENTATIONS"] = "when"
    return env


# ---------------------------------------------------------------------- exit


@pytest.mark.parametrize("logs", ["otlp", "otlp,when"])
def test_an_app_whose_collector_is_not_listening_exits_in_time_and_reports_to_the_hub(
    hub: ThreadedHub, logs: str
) -> None:
    """The OTLP exporters fail every batch and log each failure; the instrumentor's exit path
    flushes only its own pipeline, and those failure records never enter the logs pipeline
    (they fed the OTLP exporter its own failures, and its flush never ended). With ``when``
    in ``OTEL_LOGS_EXPORTER`` the SDK's exporter delivers at the SDK's exit, after the OTLP
    exporter gave up: the coordinator waits for it, within its exit budget."""
    service = f"otlp-closed-{logs.replace(',', '-')}"
    off = exporters_env(f"{service}-off", hub.url, True, disabled=True, logs="otlp")
    baseline, _ = timed_app(off, 120)
    limit = baseline + CLOSE_TIMEOUT + SLACK
    elapsed, stderr = timed_app(exporters_env(service, hub.url, True, logs=logs), limit + 30)
    assert "Failed to export" in stderr, "the OTLP exporters did not fail: nothing was tested"
    assert elapsed <= limit, f"{elapsed:.1f} s with the instrumentor, {baseline:.1f} s without"

    # The process has exited: the workflow and its logs had reached the hub, and nothing the
    # SDK's exporters logged about themselves came along.
    hub.wait_for(
        lambda h: (
            {r.message for r in logs_of(h, service)} >= APP_MESSAGES
            and any(w.phase is Phase.COMPLETED for w in workflows_of(h, service).values())
        ),
        timeout=WAIT,
    )
    (workflow,) = workflows_of(hub, service).values()
    assert workflow.action_type == "nightly_etl"
    assert sorted(r.message for r in logs_of(hub, service)) == sorted(APP_MESSAGES)
    assert workflows_of(hub, f"{service}-off") == {}


def test_an_instrumented_app_exits_within_close_timeout_when_the_hub_is_unreachable() -> None:
    """Every exit-time flush of the coordinator (the instrumentor's, the coordinator's own, the
    exporter's final one, the last release) shares one ``close_timeout``."""
    url = f"ws://127.0.0.1:{free_port()}/v1/coordination"
    baseline, _ = timed_app(exporters_env("unreachable-off", url, False, disabled=True), 120)
    limit = baseline + CLOSE_TIMEOUT + SLACK
    elapsed, stderr = timed_app(exporters_env("unreachable", url, False), limit + 30)
    assert "cannot connect to the hub" in stderr
    assert elapsed <= limit, f"{elapsed:.1f} s with the instrumentor, {baseline:.1f} s without"


# ---------------------------------------------------------------------- other providers

LOGFIRE_MAIN = """
import io
import json
import logging

import logfire
from opentelemetry import _logs, trace

from when_coordinator.otel import WhenInstrumentor

console = io.StringIO()
logfire.configure(
    send_to_logfire=False,
    service_name="beside-logfire",
    console=logfire.ConsoleOptions(output=console, colors="never", include_timestamps=False),
)
logging.getLogger().setLevel(logging.INFO)
WhenInstrumentor().instrument()

import jobs  # noqa: E402 - imported after instrument(): patched on import

jobs.job(4)
logfire.force_flush()
print(json.dumps({
    "providers": [
        type(trace.get_tracer_provider()).__module__, type(_logs.get_logger_provider()).__module__
    ],
    "console": console.getvalue(),
}))
"""

NOOP_MAIN = """
import json
import logging

from opentelemetry import _logs, trace

from when_coordinator.otel import WhenInstrumentor

trace.set_tracer_provider(trace.NoOpTracerProvider())
_logs.set_logger_provider(_logs.NoOpLoggerProvider())
logging.getLogger().setLevel(logging.INFO)
WhenInstrumentor().instrument()

import jobs  # noqa: E402

jobs.job(5)
print(json.dumps({"handlers": [type(h).__name__ for h in logging.getLogger().handlers]}))
"""


def test_instrument_beside_logfire_sends_spans_and_logs_to_the_hub(
    hub: ThreadedHub, tmp_path: Path
) -> None:
    """logfire installs proxies (unhashable dataclasses) wrapping SDK providers: the processor
    and exporter are attached through them, and logfire's console still gets the spans."""
    service = "beside-logfire"
    result, stderr = run_script(
        tmp_path, LOGFIRE_MAIN, when_env(hub, service, WHEN_WORKFLOW_ENTRYPOINTS="jobs:job")
    )
    assert all(module.startswith("logfire.") for module in result["providers"]), result
    assert "cannot attach" not in stderr, stderr
    assert "could not instrument" not in stderr, stderr
    # logfire's console got the workflow span, and the record through the logs pipeline.
    console = [line.strip() for line in result["console"].splitlines()]
    assert console == ["job", "job running with 4"], result["console"]

    hub.wait_for(
        lambda h: (
            any(w.phase is Phase.COMPLETED for w in workflows_of(h, service).values())
            and any(r.message == "job running with 4" for r in logs_of(h, service))
        ),
        timeout=WAIT,
    )
    (workflow,) = workflows_of(hub, service).values()
    assert workflow.action_type == "job"
    (record,) = [r for r in logs_of(hub, service) if r.message == "job running with 4"]
    assert record.workflow_id == workflow.workflow_id
    # Through the OpenTelemetry logs pipeline (the SDK's code attributes), not a fallback.
    assert record.entry.fields == {"code.function.name": "job"}, record.entry


def test_a_provider_it_cannot_attach_to_gets_one_warning_and_logging_still_flows(
    hub: ThreadedHub, tmp_path: Path
) -> None:
    service = "noop-providers"
    result, stderr = run_script(
        tmp_path, NOOP_MAIN, when_env(hub, service, WHEN_WORKFLOW_ENTRYPOINTS="jobs:job")
    )
    assert stderr.count("cannot attach its span processor to the tracer provider") == 1, stderr
    assert stderr.count("cannot attach its log exporter to the logger provider") == 1, stderr
    assert "workflows still reach the hub" in stderr
    assert "Python logging records still reach the hub" in stderr
    # A CoordinatorLogHandler (the instrumentor's root handler), and what keeps Python's last
    # resort.
    assert result["handlers"] == ["LastResortKeeper", "CoordinatorRootHandler"]
    hub.wait_for(
        lambda h: (
            any(w.phase is Phase.COMPLETED for w in workflows_of(h, service).values())
            and any(r.message == "job running with 5" for r in logs_of(h, service))
        ),
        timeout=WAIT,
    )
    (workflow,) = workflows_of(hub, service).values()
    (record,) = [r for r in logs_of(hub, service) if r.message == "job running with 5"]
    assert record.workflow_id == workflow.workflow_id


def test_warnings_of_an_app_without_logging_configuration_still_reach_stderr(
    hub: ThreadedHub, tmp_path: Path
) -> None:
    """Python prints a warning no handler takes (``logging.lastResort``); the instrumentor's
    handler on the root logger must not take that away (it did: the client's "cannot connect
    to the hub" vanished whenever it came before the application's ``basicConfig``), nor
    print a record twice once the application configured logging."""
    script = tmp_path / "plain.py"
    script.write_text(
        "import logging\n"
        "logging.getLogger('app').warning('before any configuration')\n"
        "logging.getLogger('app').info('an info record is not a warning')\n"
        "logging.basicConfig(format='CONFIGURED %(message)s')\n"
        "logging.getLogger('app').warning('after basicConfig')\n"
    )
    env = exporters_env("last-resort", hub.url, False)
    result = run([str(INSTRUMENT), sys.executable, str(script)], env, tmp_path)
    lines = result.stderr.splitlines()
    assert lines.count("before any configuration") == 1, result.stderr
    assert lines.count("CONFIGURED after basicConfig") == 1, result.stderr
    assert "after basicConfig" not in lines, result.stderr
    assert "an info record is not a warning" not in result.stderr
