"""Across processes: a workflow in another service links to its parent through W3C baggage.

The parent injects its context with the global propagators (trace context and baggage), a
real child process extracts it and runs a workflow against the same hub, and the hub shows the
child under the parent, in the parent's tree and trace.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from typing import Any

from opentelemetry import baggage, propagate
from opentelemetry.sdk.trace import TracerProvider

from tests.conftest import OTEL_TIMEOUT
from when_coordinator import Coordinator, workflow
from when_coordinator.hub import ThreadedHub, WorkflowState
from when_coordinator.otel import attributes as attr

CHILD = textwrap.dedent(
    """
    import json, os
    from opentelemetry import context, propagate
    from opentelemetry.sdk.trace import TracerProvider
    from when_coordinator import Config, Coordinator, workflow

    carrier = json.loads(os.environ["WHEN_TEST_CARRIER"])
    coordinator = Coordinator(
        Config.from_env(service_name="child-service", reconnect_initial_delay=0.05)
    )
    coordinator.connect()
    assert coordinator.wait_registered(10), "child: no registration"
    token = context.attach(propagate.extract(carrier))
    try:
        with workflow("child-job", coordinator=coordinator, tracer_provider=TracerProvider()) as wf:
            wf.progress(100, "done")
            span = wf.span.get_span_context()
            print(json.dumps({
                "id": wf.id,
                "parent_id": wf.parent_id,
                "root_id": wf.root_id,
                "trace_id": format(span.trace_id, "032x"),
            }))
    finally:
        context.detach(token)
    coordinator.close()
    """
)


def run_child(hub: ThreadedHub, carrier: dict[str, str]) -> dict[str, Any]:
    env = {**os.environ, "WHEN_URL": hub.url, "WHEN_TEST_CARRIER": json.dumps(carrier)}
    done = subprocess.run(
        [sys.executable, "-c", CHILD],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def test_a_workflow_in_another_process_links_to_its_parent_through_baggage(
    otel_hub: ThreadedHub, otel_coordinator: Coordinator, tracer_provider: TracerProvider
) -> None:
    options: dict[str, Any] = {"coordinator": otel_coordinator, "tracer_provider": tracer_provider}
    with workflow("grandparent", **options) as grandparent, workflow("parent", **options) as parent:
        carrier: dict[str, str] = {}
        propagate.inject(carrier)
        assert baggage.get_baggage(attr.BAGGAGE_WORKFLOW_ID) == parent.id
        child = run_child(otel_hub, carrier)
        parent_trace = format(parent.span.get_span_context().trace_id, "032x")

    assert "baggage" in carrier
    assert "traceparent" in carrier
    assert child["parent_id"] == parent.id
    assert child["root_id"] == grandparent.id
    assert child["trace_id"] == parent_trace

    def reported(h: ThreadedHub) -> WorkflowState | None:
        state = h.workflows[child["id"]]
        return state if state.phase.value == "completed" else None

    state = otel_hub.wait_for(reported, OTEL_TIMEOUT)
    assert state is not None
    assert state.parent_workflow_id == parent.id
    assert state.root_workflow_id == grandparent.id
    assert state.progress == 100
    services = otel_hub.services
    assert services[state.service_id].service_name == "child-service"
    assert state.service_id != otel_coordinator.service_id
    # The hub's tree joins the two services.
    assert child["id"] in otel_hub.workflows[parent.id].children


def test_without_baggage_a_process_starts_a_new_tree(otel_hub: ThreadedHub) -> None:
    child = run_child(otel_hub, {})
    assert child["parent_id"] == ""
    assert child["root_id"] == child["id"]
