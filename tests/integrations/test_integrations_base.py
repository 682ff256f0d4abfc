"""What every task-queue integration shares: the task filter, entry points in the contrib
manner (skipped without their framework, disabled by name), no framework imported with the
package, and a filtered task run in-process (Celery eager mode) against the real hub."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import weakref
from collections.abc import Iterator
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import OTEL_TIMEOUT
from tests.support.collector import collector_off
from when_coordinator import Config, Coordinator, current_workflow
from when_coordinator.hub import ThreadedHub
from when_coordinator.otel import set_coordinator
from when_coordinator.otel.integrations.relay import Relay
from when_coordinator.otel.integrations.tasks import TaskFilter, TaskRun, task_workflow_id
from when_coordinator.protocol import Phase

INSTRUMENT = Path(sys.executable).with_name("opentelemetry-instrument")

PROBE = """
import json
from when_coordinator.otel.integrations.celery import WhenCeleryInstrumentor
from when_coordinator.otel.integrations.rq import WhenRQInstrumentor
from when_coordinator.otel.integrations.dramatiq import WhenDramatiqInstrumentor
from when_coordinator.otel.integrations.apscheduler import WhenAPSchedulerInstrumentor
from when_coordinator.otel.integrations.huey import WhenHueyInstrumentor
from when_coordinator.otel.integrations.click import WhenClickInstrumentor

print(json.dumps({
    "celery": WhenCeleryInstrumentor().is_instrumented_by_opentelemetry,
    "rq": WhenRQInstrumentor().is_instrumented_by_opentelemetry,
    "dramatiq": WhenDramatiqInstrumentor().is_instrumented_by_opentelemetry,
    "apscheduler": WhenAPSchedulerInstrumentor().is_instrumented_by_opentelemetry,
    "huey": WhenHueyInstrumentor().is_instrumented_by_opentelemetry,
    "click": WhenClickInstrumentor().is_instrumented_by_opentelemetry,
}))
"""


def test_task_filter_includes_and_excludes_by_pattern() -> None:
    everything = TaskFilter.from_env({})
    assert everything("app.tasks.add")
    assert everything("celery.backend_cleanup")
    chosen = TaskFilter.from_env(
        {"WHEN_TASKS_INCLUDE": "app.*, billing.invoice", "WHEN_TASKS_EXCLUDE": "*.heartbeat"}
    )
    assert chosen("app.tasks.add")
    assert chosen("billing.invoice")
    assert not chosen("billing.refund")
    assert not chosen("app.heartbeat")  # exclude wins over include
    assert not chosen("App.tasks.add")  # case-sensitive
    assert task_workflow_id("celery", "5f0c") == "celery-5f0c"


FRAMEWORKS = {
    "celery": "WhenCeleryInstrumentor",
    "rq": "WhenRQInstrumentor",
    "dramatiq": "WhenDramatiqInstrumentor",
    "apscheduler": "WhenAPSchedulerInstrumentor",
    "huey": "WhenHueyInstrumentor",
    "click": "WhenClickInstrumentor",
}
ALL_ON = dict.fromkeys(FRAMEWORKS, True)


def test_entry_points_name_each_framework() -> None:
    found = {e.name: e for e in entry_points(group="opentelemetry_instrumentor")}
    for framework, cls in FRAMEWORKS.items():
        name = f"when_{framework}"
        assert found[name].value.endswith(f"integrations.{framework}:{cls}")
        (dependency,) = found[name].load()().instrumentation_dependencies()
        assert dependency.startswith(framework + " ")


def run_probe(tmp_path: Path, env: dict[str, str]) -> tuple[dict[str, bool], str]:
    script = tmp_path / "probe.py"
    script.write_text(textwrap.dedent(PROBE), encoding="utf-8")
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "WHEN_"))}
    clean.pop("PYTHONPATH", None)
    clean.update({"OTEL_TRACES_EXPORTER": "none", "OTEL_LOGS_EXPORTER": "none"})
    clean.update({"OTEL_METRICS_EXPORTER": "none", **env})
    done = subprocess.run(
        [str(INSTRUMENT), sys.executable, str(script)],
        env=clean,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1]), done.stderr


def test_instrumented_by_default_and_disabled_by_name(tmp_path: Path) -> None:
    assert run_probe(tmp_path, {})[0] == ALL_ON
    disabled = {"OTEL_PYTHON_DISABLED_INSTRUMENTATIONS": "when_celery,when_huey"}
    assert run_probe(tmp_path, disabled)[0] == {**ALL_ON, "celery": False, "huey": False}


def test_skipped_cleanly_without_the_framework(tmp_path: Path) -> None:
    # Frameworks that cannot be imported, first on the path: as if they were not installed.
    missing = tmp_path / "missing"
    for framework in ("celery", "dramatiq", "apscheduler", "huey"):
        (missing / framework).mkdir(parents=True)
        (missing / framework / "__init__.py").write_text(
            f'raise ModuleNotFoundError("No module named {framework!r}", name={framework!r})\n',
            encoding="utf-8",
        )
    result, stderr = run_probe(tmp_path, {"PYTHONPATH": str(missing)})
    assert result == {
        **ALL_ON,
        "celery": False,
        "dramatiq": False,
        "apscheduler": False,
        "huey": False,
    }
    assert "Traceback" not in stderr, stderr


def test_importing_the_package_imports_no_framework() -> None:
    code = (
        "import sys, when_coordinator, when_coordinator.otel;"
        "import when_coordinator.otel.integrations.celery, when_coordinator.otel.integrations.rq;"
        "import when_coordinator.otel.integrations.dramatiq;"
        "import when_coordinator.otel.integrations.apscheduler;"
        "import when_coordinator.otel.integrations.huey;"
        "import when_coordinator.otel.integrations.click;"
        "print(sorted({'celery', 'rq', 'redis', 'kombu', 'dramatiq', 'dramatiq_abort',"
        " 'apscheduler', 'huey', 'click'} & set(sys.modules)))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.strip() == "[]"


@pytest.fixture
def eager_celery(otel_coordinator: Coordinator, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    celery = pytest.importorskip("celery")
    from when_coordinator.otel.integrations.celery import WhenCeleryInstrumentor  # noqa: PLC0415

    monkeypatch.setenv("WHEN_TASKS_EXCLUDE", "t.skipped")
    previous = set_coordinator(otel_coordinator)
    instrumentor = WhenCeleryInstrumentor()
    instrumentor.instrument()
    app = celery.Celery("t", broker="memory://", backend="cache+memory://")
    app.conf.task_always_eager = True
    try:
        yield app
    finally:
        instrumentor.uninstrument()
        set_coordinator(previous)


def test_excluded_tasks_are_not_workflows(eager_celery: Any, otel_hub: ThreadedHub) -> None:
    app = eager_celery

    @app.task(name="t.kept")  # type: ignore[untyped-decorator]
    def kept() -> int:
        return 1

    @app.task(name="t.skipped")  # type: ignore[untyped-decorator]
    def skipped() -> int:
        return 2

    skipped_id = skipped.apply().id
    kept_id = kept.apply().id
    key = task_workflow_id("celery", kept_id)
    otel_hub.wait_for(
        lambda h: key in h.workflows and h.workflows[key].phase is Phase.COMPLETED, timeout=10
    )
    assert otel_hub.workflows[key].action_type == "t.kept"
    assert task_workflow_id("celery", skipped_id) not in otel_hub.workflows


def test_a_retried_task_continues_its_workflow_in_another_process(
    otel_coordinator: Coordinator, otel_hub: ThreadedHub
) -> None:
    """Attempt 1 in one pool process, attempt 2 in another, both through the worker's relay:
    one workflow at the hub, paused between the attempts, without anomalies."""
    relay = Relay(otel_coordinator)
    relay.start()
    config = Config(
        when_url=relay.url,
        auth_token=relay.token,
        service_name="pool-process",
        reconnect_initial_delay=0.05,
        reconnect_max_delay=0.5,
    )
    first, second = Coordinator(config), Coordinator(config)
    key = task_workflow_id("test", "t-1")
    previous = set_coordinator(first)
    try:
        for process in (first, second):
            process.connect()
            assert process.wait_registered(10)
        run = TaskRun("test", "jobs.flaky", "t-1")
        run.start()
        assert run.workflow is not None
        assert current_workflow() is run.workflow
        run.retrying(ConnectionError("attempt 1 failed"))
        assert current_workflow() is None
        otel_hub.wait_for(lambda h: h.workflows[key].phase is Phase.PAUSED, timeout=10)

        set_coordinator(second)
        again = TaskRun("test", "jobs.flaky", "t-1", attempt=1)
        again.start()
        again.finish()
        otel_hub.wait_for(lambda h: h.workflows[key].phase is Phase.COMPLETED, timeout=10)
    finally:
        set_coordinator(previous)
        for process in (first, second):
            process.close(timeout=5)
        relay.close()
    workflow = otel_hub.workflows[key]
    assert workflow.service_id == otel_coordinator.service_id  # the worker's, throughout
    assert [(e.error, e.recoverable) for e in workflow.errors] == [
        ("ConnectionError: attempt 1 failed", True)
    ]
    assert [c.reason for c in workflow.history][3:7] == [
        "retrying after attempt 1: ConnectionError: attempt 1 failed",
        "retrying after attempt 1: ConnectionError: attempt 1 failed",
        "attempt 2",
        "attempt 2",
    ]
    assert workflow.checkpoint_id == f"{key}-attempt-1"
    assert workflow.anomaly_count == 0, workflow.anomalies
    assert first.phases.get_all_workflows() == {}  # forgotten where it no longer runs


def test_a_task_is_the_child_of_the_workflow_its_baggage_names(
    otel_coordinator: Coordinator, otel_hub: ThreadedHub
) -> None:
    """The parent comes from the message's ``baggage`` header; a message with only a
    ``traceparent`` (most tasks) leaves the workflow to inherit from the current context."""
    sent = {
        "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        "baggage": "when.workflow.id=wf-sender,when.workflow.root_id=wf-root",
    }
    previous = set_coordinator(otel_coordinator)
    try:
        child = TaskRun("test", "jobs.child", "t-child", headers=sent)
        child.start()
        orphan = TaskRun(
            "test", "jobs.orphan", "t-orphan", headers={"traceparent": sent["traceparent"]}
        )
        orphan.start()
        assert orphan.workflow is not None
        assert child.workflow is not None
        orphan.finish()
        child.finish()
    finally:
        set_coordinator(previous)
    child_key, orphan_key = (
        task_workflow_id("test", "t-child"),
        task_workflow_id("test", "t-orphan"),
    )
    otel_hub.wait_for(lambda h: child_key in h.workflows and orphan_key in h.workflows, timeout=10)
    assert otel_hub.workflows[child_key].parent_workflow_id == "wf-sender"
    assert otel_hub.workflows[child_key].root_workflow_id == "wf-root"
    # Started while the child task's workflow was current: that one is its parent.
    assert otel_hub.workflows[orphan_key].parent_workflow_id == child_key


@pytest.mark.parametrize("end", ["finish", "fail", "retrying", "abandon"])
def test_a_task_run_leaves_nothing_to_the_garbage_collector(
    end: str, otel_coordinator: Coordinator
) -> None:
    """Each way a task's attempt ends frees its workflow run, span and events by reference
    counting: in a busy pool process a cycle per task meant collections on the task's
    thread, and survivors promoted into the older generations."""
    freed = threading.Event()
    previous = set_coordinator(otel_coordinator)
    try:
        with collector_off():
            run = TaskRun("test", "jobs.freed", f"t-{end}")
            run.start()
            assert run.workflow is not None
            weakref.finalize(run.workflow, freed.set)
            if end == "finish":
                run.finish()
            elif end == "fail":
                run.finish(KeyError("boom"))
            elif end == "retrying":
                run.retrying("try again")
            else:
                run.abandon()
            del run
            assert freed.wait(OTEL_TIMEOUT)
    finally:
        set_coordinator(previous)
