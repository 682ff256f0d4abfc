"""Reliability across process boundaries: ``os.fork()`` and ``multiprocessing`` (fork and spawn)
children next to a busy parent, and short-lived processes that exit without ``close()``."""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.support.faults import fork_run, forked_workflow, free_port, soak, spawned_workflow
from tests.support.scripted_server import RawServer, fast_config
from when_coordinator import Coordinator
from when_coordinator.hub import Hub, ThreadedHub
from when_coordinator.otel.tracking import set_coordinator

needs_fork = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")


def settle(hub: ThreadedHub, coordinator: Coordinator, marker: str) -> None:
    """Deliver everything and wait until the hub applied it (frames apply in order)."""
    coordinator.send_progress(marker, "act", 100.0, message=marker)
    assert coordinator.flush(15)
    hub.wait_for(lambda h: marker in h.hub.workflows, 15)


def parent_connection(hub: ThreadedHub, coordinator: Coordinator) -> str:
    return hub.services[coordinator.service_id].connection_id


def assert_parent_connection_carries_only_the_parent(
    hub: ThreadedHub, coordinator: Coordinator, connection_id: str
) -> None:
    """Every message the hub took on the parent's connection is one the parent delivered."""
    stats = coordinator.stats()
    connection = hub.connections[connection_id]
    assert stats.connects == 1
    assert connection.is_open
    assert connection.invalid_frames == 0  # no bytes of another process interleaved
    # register (which bypasses the outbox) and then exactly what the parent delivered
    assert connection.messages == stats.delivered + 1
    assert stats.delivered == stats.sent - stats.dropped


@needs_fork
@pytest.mark.filterwarnings("ignore:.*fork.*:DeprecationWarning")
@pytest.mark.parametrize("round_", soak(10))
def test_forked_children_of_a_busy_parent_neither_deadlock_nor_use_its_connection(
    round_: int,
) -> None:
    # The parent floods on purpose (to keep its locks busy while children fork): the hub's
    # flood protection, which would throttle or close the parent, is not under test here.
    with ThreadedHub(Hub(port=0, rate_limit=1e9, rate_burst=10**9, flood_close_after=None)) as hub:
        coordinator = Coordinator(fast_config(hub.url, service_name="parent"))
        coordinator.connect()
        assert coordinator.wait_registered(10)
        connection_id = parent_connection(hub, coordinator)
        phases = coordinator.phases
        stop = threading.Event()

        def busy() -> None:  # keeps the outbox, phase and logging locks changing hands
            for i in range(1_000_000):
                if stop.is_set():
                    return
                wf = f"wf-parent-{i % 20}"
                if i < 20:
                    phases.register_workflow(wf)
                    phases.transition_to(wf, "pre-flight")
                coordinator.send_progress(wf, "act", float(i % 100))
                coordinator.log_info(f"parent line {i}")

        producer = threading.Thread(target=busy)
        producer.start()

        def quiet() -> dict[str, Any]:
            sent = [coordinator.send_progress("wf-child-quiet", "act", 1.0) for _ in range(20)]
            phases.register_workflow(f"wf-child-{os.getpid()}")
            phases.transition_to(f"wf-child-{os.getpid()}", "pre-flight")
            stats = coordinator.stats()
            coordinator.close(0.5)
            return {"sent": sent, "reasons": dict(stats.drop_reasons)}

        def own() -> dict[str, Any]:
            coordinator.connect()
            registered = coordinator.wait_registered(10)
            wf = f"wf-child-{os.getpid()}"
            phases.register_workflow(wf)
            for phase in ("pre-flight", "planning", "execution"):
                phases.transition_to(wf, phase)
            phases.complete(wf)
            flushed = coordinator.flush(10)
            coordinator.close(2.0)
            return {"registered": registered, "flushed": flushed, "wf": wf}

        reports = []
        try:
            for n in range(8):
                code, report, took = fork_run(quiet if n % 2 == 0 else own, timeout=20)
                assert code == 0, report
                assert took < 15, f"child {n} took {took:.1f} s"
                reports.append(report)
        finally:
            stop.set()
            producer.join(30)
        settle(hub, coordinator, "wf-parent-marker")

        for report in reports[0::2]:
            assert report["sent"] == [False] * 20
            assert set(report["reasons"]) == {"not sending: forked child"}
        children = [report["wf"] for report in reports[1::2]]
        assert all(report["registered"] and report["flushed"] for report in reports[1::2])
        hub.wait_for(lambda h: all(wf in h.hub.workflows for wf in children), 10)
        workflows, connections, services = hub.workflows, hub.connections, hub.services
        parent_instance = services[coordinator.service_id].instance_id
        for wf in children:
            state = workflows[wf]
            assert state.phase.value == "completed"
            assert state.connection_id != connection_id
            child_service = services[connections[state.connection_id].service_id]
            assert child_service.instance_id.startswith(f"{parent_instance}-fork-")
        assert not any(wf.startswith("wf-child-") for wf in workflows if wf not in children)
        assert_parent_connection_carries_only_the_parent(hub, coordinator, connection_id)
        coordinator.close(2.0)


@needs_fork
@pytest.mark.filterwarnings("ignore:.*fork.*:DeprecationWarning")
def test_a_forked_child_that_connects_never_takes_over_the_parents_workflows() -> None:
    """The child's registration replays only what the child started; what it inherited stays
    the parent's, so after the child exits the parent's workflows are still steered there
    (before: the replay moved them to the child, then ``503 ... is not connected``)."""
    with ThreadedHub(Hub(port=0)) as hub:
        coordinator = Coordinator(fast_config(hub.url, service_name="parent"))
        coordinator.connect()
        assert coordinator.wait_registered(10)
        phases = coordinator.phases
        parents = [f"wf-parent-{i}" for i in range(3)]
        for wf in parents:
            phases.register_workflow(wf)
            for phase in ("pre-flight", "planning", "execution"):
                phases.transition_to(wf, phase)
        settle(hub, coordinator, "wf-parent-marker")
        connection_id = parent_connection(hub, coordinator)
        assert all(hub.workflows[wf].connection_id == connection_id for wf in parents)

        def child() -> dict[str, Any]:
            coordinator.connect()
            registered = coordinator.wait_registered(10)
            own = f"wf-child-{os.getpid()}"
            phases.register_workflow(own)
            for phase in ("pre-flight", "planning", "execution"):
                phases.transition_to(own, phase)
            # The parent's workflow, carried on in the child, is not reported from here.
            reported = coordinator.send_progress(parents[0], "act", 50.0)
            phases.transition_to(parents[1], "completing")
            flushed = coordinator.flush(10)
            stats = coordinator.stats()
            coordinator.close(2.0)
            return {
                "registered": registered,
                "flushed": flushed,
                "own": own,
                "reported": reported,
                "reasons": dict(stats.drop_reasons),
                "service_id": coordinator.service_id,
            }

        code, report, _took = fork_run(child, timeout=20)
        assert code == 0, report
        assert report["registered"]
        assert report["flushed"]
        own = report["own"]
        hub.wait_for(lambda h: own in h.workflows, 10)
        child_connection = hub.workflows[own].connection_id
        assert child_connection != connection_id
        hub.wait_for(lambda h: not h.connections[child_connection].is_open, 10)

        workflows = hub.workflows
        for wf in parents:
            assert workflows[wf].connection_id == connection_id
            assert workflows[wf].phase.value == "execution"
        # Still steerable: a pause reaches the parent, which moves the workflow on.
        commands: list[str] = []
        coordinator.on_command(lambda event: commands.append(event.workflow_id))
        for wf in parents:
            hub.pause(wf, "operator")
        hub.wait_for(lambda h: all(h.workflows[wf].phase.value == "pausing" for wf in parents), 10)
        assert all(phases.get_phase(wf).value == "pausing" for wf in parents)
        assert sorted(commands) == parents
        # In the child, what it said about the parent's workflows was dropped and counted.
        assert report["reported"] is False
        assert report["reasons"] == {"not sending: the parent process's workflow": 2}
        assert coordinator.flush(10)
        assert_parent_connection_carries_only_the_parent(hub, coordinator, connection_id)
        coordinator.close(2.0)


@pytest.mark.parametrize("method", ["fork", "spawn"])
@pytest.mark.filterwarnings("ignore:.*fork.*:DeprecationWarning")
@pytest.mark.parametrize("round_", soak(5))
def test_multiprocessing_children_get_their_own_connection_or_stay_quiet(
    method: str, monkeypatch: pytest.MonkeyPatch, round_: int
) -> None:
    if method not in multiprocessing.get_all_start_methods():
        pytest.skip(f"no {method} start method here")
    context: Any = multiprocessing.get_context(method)
    with ThreadedHub(Hub(port=0)) as hub:
        monkeypatch.setenv("WHEN_URL", hub.url)  # what a spawned child builds its own from
        monkeypatch.setenv("WHEN_SERVICE_NAME", f"{method}-children")
        coordinator = Coordinator(fast_config(hub.url, service_name="parent"))
        coordinator.connect()
        assert coordinator.wait_registered(10)
        connection_id = parent_connection(hub, coordinator)
        previous = set_coordinator(coordinator)  # the default a fork child inherits
        results: Any = context.Queue()
        children: list[Any] = []
        try:
            coordinator.send_progress("wf-parent", "act", 10.0)
            if method == "spawn":
                children = [
                    context.Process(target=spawned_workflow, args=(n, results)) for n in range(2)
                ]
            else:
                children = [
                    context.Process(target=forked_workflow, args=(n, n % 2 == 1, results))
                    for n in range(4)
                ]
            for child in children:
                child.start()
            reports = [results.get(timeout=60) for _ in children]
            for child in children:
                child.join(30)
                assert child.exitcode == 0, f"{method} child exit code {child.exitcode}"
        finally:
            set_coordinator(previous)
            for child in children:
                if child.is_alive():
                    child.kill()
        coordinator.send_progress("wf-parent", "act", 20.0)
        settle(hub, coordinator, "wf-parent-marker")

        if method == "spawn":
            expected = [f"wf-spawn-{n}" for n in range(2)]
        else:
            quiet = [r for r in reports if r["flushed"] is None]
            assert len(quiet) == 2
            for report in quiet:
                assert set(report["dropped"]) == {"not sending: forked child"}, report
            expected = [f"wf-fork-{r['number']}" for r in reports if r["flushed"] is not None]
            assert all(r["flushed"] for r in reports if r["flushed"] is not None)
        hub.wait_for(lambda h: all(wf in h.hub.workflows for wf in expected), 15)
        workflows, connections, services = hub.workflows, hub.connections, hub.services
        child_connections = set()
        for wf in expected:
            state = workflows[wf]
            assert state.phase.value == "completed"
            assert state.progress == 50
            assert state.connection_id != connection_id
            child_connections.add(state.connection_id)
            instance = services[connections[state.connection_id].service_id].instance_id
            assert instance != services[coordinator.service_id].instance_id
        assert len(child_connections) == len(expected)  # one connection per child
        # Quiet fork children reached nothing.
        assert not [wf for wf in workflows if wf.startswith("wf-fork-") and wf not in expected]
        assert_parent_connection_carries_only_the_parent(hub, coordinator, connection_id)
        coordinator.close(2.0)


# ---------------------------------------------------------------------- short-lived processes


EXIT_SCRIPT = textwrap.dedent(
    """
    import logging, sys, time
    from when_coordinator import Config, Coordinator, CoordinatorLogHandler, LogForwarder

    url, close_timeout, count = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
    coordinator = Coordinator(
        Config(when_url=url, service_name="short-lived", close_timeout=close_timeout,
               reconnect_initial_delay=0.05, reconnect_max_delay=0.2, open_timeout=30.0)
    )
    coordinator.connect()
    direct = logging.getLogger("app.direct")
    direct.addHandler(CoordinatorLogHandler(coordinator))
    batched = logging.getLogger("app.batched")
    # A buffer larger than what is logged and a long timer: only the exit handler sends it.
    batched.addHandler(CoordinatorLogHandler(LogForwarder(coordinator, 10_000, 60.0)))
    for logger in (direct, batched):
        logger.setLevel(logging.INFO)
        logger.propagate = False
    for i in range(count):
        direct.info("direct %d", i)
        batched.warning("batched %d", i)
    print(f"done {time.monotonic()}", flush=True)
    # No close(), no flush(): the exit handlers deliver, within close_timeout.
    """
)


def run_short_lived(tmp_path: Path, url: str, close_timeout: float, count: int) -> float:
    """Run the script; seconds from its last line of code to its exit."""
    script = tmp_path / "short_lived.py"
    script.write_text(EXIT_SCRIPT)
    process = subprocess.Popen(
        [sys.executable, str(script), url, str(close_timeout), str(count)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        out, err = process.communicate(timeout=60)
    finally:
        process.kill()
    exited = time.monotonic()  # the same clock as the child's on Linux (CLOCK_MONOTONIC)
    assert process.returncode == 0, err
    assert "Traceback" not in err, err
    done = [line for line in out.splitlines() if line.startswith("done ")]
    assert done, out
    return exited - float(done[0].split()[1])


def test_a_short_lived_process_delivers_every_log_record_before_it_exits(tmp_path: Path) -> None:
    count = 300
    with ThreadedHub(Hub(port=0)) as hub:
        exit_time = run_short_lived(tmp_path, hub.url, 5.0, count)
        # The process is gone: what it delivered was delivered before it exited.
        messages = [record.message for record in hub.logs]
    expected = {f"direct {i}" for i in range(count)} | {f"batched {i}" for i in range(count)}
    assert sorted(messages) == sorted(expected), f"{len(set(messages))} of {len(expected)}"
    assert exit_time < 5.0, f"the exit handlers took {exit_time:.2f} s"


@pytest.mark.parametrize("hub_state", ["refusing", "black-hole"])
def test_a_short_lived_process_exits_within_close_timeout_when_the_hub_is_unreachable(
    tmp_path: Path, hub_state: str
) -> None:
    close_timeout = 1.0
    if hub_state == "refusing":
        exit_time = run_short_lived(
            tmp_path, f"ws://127.0.0.1:{free_port()}/v1/coordination", close_timeout, 200
        )
    else:  # accepts the TCP connection, never answers the upgrade
        with RawServer("record") as raw:
            exit_time = run_short_lived(tmp_path, raw.url, close_timeout, 200)
            assert raw.accepted >= 1
    assert exit_time < close_timeout + 1.0, f"the exit handlers took {exit_time:.2f} s"
