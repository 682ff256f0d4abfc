"""click end to end: the example tool run under ``opentelemetry-instrument`` against the real
hub. Off by default; with ``WHEN_CLICK_COMMANDS=1`` each leaf command run is a workflow named
after its command path; server commands are never workflows."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.integrations import BIN, EXAMPLES, TIMEOUT, instrumented_env, otlp_traces
from tests.support.otlp_receiver import OtlpReceiver
from when_coordinator import Coordinator
from when_coordinator.hub import ThreadedHub, WorkflowState
from when_coordinator.otel import set_coordinator
from when_coordinator.protocol import Phase

click = pytest.importorskip("click")

APP_DIR = EXAMPLES / "click_app"
SERVICE = "click-tests"


def run_cli(
    hub: ThreadedHub, receiver: OtlpReceiver, *args: str, **env: str
) -> subprocess.CompletedProcess[str]:
    clean = instrumented_env(hub.url, SERVICE, **otlp_traces(receiver.url))
    clean.update(env)
    return subprocess.run(
        [str(BIN / "opentelemetry-instrument"), sys.executable, "cli.py", *args],
        cwd=APP_DIR,
        env=clean,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def click_workflows(hub: ThreadedHub) -> list[WorkflowState]:
    return [w for k, w in hub.workflows.items() if k.startswith("click-")]


def test_commands_are_workflows_when_opted_in(hub: ThreadedHub, receiver: OtlpReceiver) -> None:
    off = run_cli(hub, receiver, "sync", "--items", "1")
    assert off.returncode == 0, off.stderr
    on = run_cli(hub, receiver, "sync", "--items", "2", WHEN_CLICK_COMMANDS="1")
    assert on.returncode == 0, on.stderr
    failed = run_cli(hub, receiver, "fail", "boom", WHEN_CLICK_COMMANDS="1")
    assert failed.returncode == 1
    skipped = run_cli(hub, receiver, "serve", WHEN_CLICK_COMMANDS="1", WHEN_TASKS_EXCLUDE="* serve")
    assert skipped.returncode == 0, skipped.stderr

    hub.wait_for(lambda h: len(click_workflows(h)) >= 2, timeout=TIMEOUT)
    hub.wait_for(lambda h: all(w.phase.is_terminal for w in click_workflows(h)), timeout=TIMEOUT)
    by_name = {w.action_type: w for w in click_workflows(hub)}
    assert sorted(by_name) == ["cli.py fail", "cli.py sync"]  # not the group, not serve
    sync = by_name["cli.py sync"]
    assert sync.phase is Phase.COMPLETED
    assert sync.workflow_id == f"click-{sync.action_id}"
    hub.wait_for(lambda h: len(h.logs_for(sync.workflow_id)) >= 2, timeout=TIMEOUT)
    messages = [r.entry.message for r in hub.logs_for(sync.workflow_id)]
    assert messages[:2] == ["synced item 0", "synced item 1"]
    fail = by_name["cli.py fail"]
    assert fail.phase is Phase.FAILED
    assert [(e.error, e.recoverable) for e in fail.errors] == [("ValueError: boom", False)]

    # One trace per run: with opentelemetry-instrumentation-click active, the workflow span is
    # an INTERNAL child of its command span; without it, a root.
    def workflow_span(r: OtlpReceiver) -> Any:
        key = sync.workflow_id
        return next((s for s in r.spans if s.attributes.get("when.workflow.id") == key), None)

    receiver.wait_for(lambda r: workflow_span(r) is not None, timeout=TIMEOUT)
    span = workflow_span(receiver)
    assert span.span.kind == span.span.SPAN_KIND_INTERNAL
    if importlib.util.find_spec("opentelemetry.instrumentation.click") is None:
        assert not span.parent_span_id
    else:
        parent = next(s for s in receiver.spans if s.span_id == span.parent_span_id)
        assert parent.name == "sync"
        assert parent.span.kind == parent.span.SPAN_KIND_INTERNAL


@pytest.fixture
def instrumented(otel_coordinator: Coordinator, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    from when_coordinator.otel.integrations.click import WhenClickInstrumentor  # noqa: PLC0415

    monkeypatch.setenv("WHEN_CLICK_COMMANDS", "1")
    previous = set_coordinator(otel_coordinator)
    instrumentor = WhenClickInstrumentor()
    instrumentor.instrument()
    try:
        yield instrumentor
    finally:
        instrumentor.uninstrument()
        set_coordinator(previous)


def test_server_commands_are_never_workflows(instrumented: Any, otel_hub: ThreadedHub) -> None:
    def run_command() -> None:
        """Stands for ``flask run``: same module and name as Flask's."""

    run_command.__module__ = "flask.cli"
    server = click.Command("run", callback=run_command)
    tool = click.Command("tool", callback=lambda: None)
    server.main([], prog_name="flask", standalone_mode=False)
    tool.main([], prog_name="tool", standalone_mode=False)
    otel_hub.wait_for(
        lambda h: any(
            w.action_type == "tool" and w.phase is Phase.COMPLETED for w in click_workflows(h)
        ),
        timeout=TIMEOUT,
    )
    assert [w.action_type for w in click_workflows(otel_hub)] == ["tool"]


def test_the_task_queue_workers_are_server_commands() -> None:
    from celery.bin.beat import beat  # noqa: PLC0415
    from celery.bin.worker import worker  # noqa: PLC0415
    from rq.cli.cli import main as rq_main  # noqa: PLC0415

    from when_coordinator.otel.integrations.click import is_server  # noqa: PLC0415

    assert is_server(worker)
    assert is_server(beat)
    assert is_server(rq_main.commands["worker"])
    assert is_server(rq_main.commands["worker-pool"])
    assert not is_server(rq_main.commands["info"])
