"""What the task-queue end-to-end modules (``test_integration_*.py``) share: an example app run
as a user would run it (``opentelemetry-instrument <command>`` with nothing configured but
``WHEN_URL``), and how a test finds its workflows and its service at the hub.

Each module keeps what is its framework's own: the command, the broker, the stop signal, and
how it sends work.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypedDict

from when_coordinator.hub import ThreadedHub, WorkflowState
from when_coordinator.protocol import Phase

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
BIN = Path(sys.executable).parent
TIMEOUT = 60.0  # a wait, not a sleep: generous for a loaded machine starting worker pools


def redis_database(redis_url: str, number: int) -> str:
    """The URL of database ``number`` on the session's Redis server (``redis_url``), so that each
    module's broker starts from its own queues."""
    return redis_url.rsplit("/", 1)[0] + f"/{number}"


def instrumented_env(
    hub_url: str, service: str, drop: tuple[str, ...] = (), **extra: str
) -> dict[str, str]:
    """This process's environment without anything that would configure the child (``OTEL_*``,
    ``WHEN_*``, the framework's ``drop`` prefixes, ``PYTHONPATH``), then only ``WHEN_URL``, the
    service name and no exporters, unless ``extra`` says otherwise."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("OTEL_", "WHEN_", *drop)) and k != "PYTHONPATH"
    }
    env.update(
        {
            "WHEN_URL": hub_url,
            "OTEL_SERVICE_NAME": service,
            "OTEL_TRACES_EXPORTER": "none",
            "OTEL_LOGS_EXPORTER": "none",
            "OTEL_METRICS_EXPORTER": "none",
            **extra,
        }
    )
    return env


class OtlpTraces(TypedDict):
    """Typed, so that ``**otlp_traces(...)`` checks as keyword arguments."""

    OTEL_TRACES_EXPORTER: str
    OTEL_EXPORTER_OTLP_PROTOCOL: str
    OTEL_EXPORTER_OTLP_ENDPOINT: str


def otlp_traces(endpoint: str) -> OtlpTraces:
    """The settings that send the child's spans to the OTLP receiver at ``endpoint``."""
    return {
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
    }


@contextmanager
def instrumented(
    command: Sequence[str],
    *,
    cwd: Path,
    env: dict[str, str],
    log_path: Path,
    stop: signal.Signals = signal.SIGTERM,
    check_output: Callable[[str], None] = print,
) -> Iterator[subprocess.Popen[str]]:
    """``opentelemetry-instrument *command`` with its output in ``log_path``. On exit it is sent
    ``stop`` (the framework's warm shutdown), killed if still running after 30 seconds, and its
    output given to ``check_output`` (by default printed: pytest shows it when a test fails)."""
    log = log_path.open("w+")
    process = subprocess.Popen(
        [str(BIN / "opentelemetry-instrument"), *command],
        cwd=cwd,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        yield process
    finally:
        process.send_signal(stop)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.seek(0)
        output = log.read()
        log.close()
        check_output(output)


def services(hub: ThreadedHub, service: str) -> list[Any]:
    """Every instance of ``service`` the hub has seen, connected or not."""
    return [s for s in hub.services.values() if s.service_name == service]


def connected(hub: ThreadedHub, service: str) -> list[Any]:
    """The instances of ``service`` connected to the hub now."""
    return [s for s in services(hub, service) if s.connected]


def assert_each_logged_adding(hub: ThreadedHub, keys: Sequence[str]) -> None:
    """Waits until every workflow in ``keys`` has log records at the hub, then checks that the
    i-th logged the example's ``adding i and i``."""
    hub.wait_for(lambda h: all(h.logs_for(key) for key in keys), timeout=TIMEOUT)
    for i, key in enumerate(keys):
        messages = [r.entry.message for r in hub.logs_for(key)]
        assert f"adding {i} and {i}" in messages


@dataclass(frozen=True)
class Workflows:
    """The hub's workflows of one integration, whose ids are ``<prefix>-<task id>``."""

    prefix: str

    def workflow_of(self, task_id: str) -> str:
        return f"{self.prefix}-{task_id}"

    def settled(self, hub: ThreadedHub, task_id: str, phase: Phase) -> WorkflowState:
        """The task's workflow, once it is in ``phase`` (waits up to ``TIMEOUT``)."""
        key = self.workflow_of(task_id)
        hub.wait_for(
            lambda h: key in h.workflows and h.workflows[key].phase is phase, timeout=TIMEOUT
        )
        return hub.workflows[key]
