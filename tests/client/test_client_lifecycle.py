"""Closing, exiting and forking: bounded, idempotent, nothing lost that could be delivered,
nothing written on a socket that belongs to another process."""

from __future__ import annotations

import json
import math
import os
import re
import select
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.support.scripted_server import ScriptedServer, fast_config, wait_until
from when_coordinator import Coordinator


def client_thread(coordinator: Coordinator) -> threading.Thread:
    thread = coordinator._thread
    assert thread is not None
    return thread


# ---------------------------------------------------------------------- close


def test_close_delivers_what_is_queued_and_closes_with_1000() -> None:
    with ScriptedServer() as server:
        coordinator = Coordinator(fast_config(server.url))
        coordinator.connect()
        assert coordinator.wait_registered(5)
        thread = client_thread(coordinator)
        for i in range(500):
            coordinator.send_progress(f"wf-{i}", "act", i / 5)  # distinct: none coalesced
        coordinator.log_info("done")
        coordinator.close(5.0)
        assert not thread.is_alive()
        server.wait_for(lambda s: s.connections[0].closed, 5, "the close")
        assert server.connections[0].close_code == 1000
        server.wait_for(lambda s: s.count("progress") >= 500 and s.count("log") >= 1, 5)
        assert server.count("progress") == 500
        stats = coordinator.stats()
        assert stats.sent == stats.delivered == 501
        assert stats.dropped == 0
        assert not coordinator.is_connected


def test_flush_and_close_do_not_wait_out_the_write_delay() -> None:
    """A write delay gathers a burst into one write; who flushes or closes waits for what is
    queued, not for the delay (a pool process exiting after each task would pay it each)."""
    with ScriptedServer() as server:
        config = fast_config(server.url, write_delay=30.0)
        with Coordinator(config) as coordinator:
            assert coordinator.wait_registered(5)
            coordinator.send_progress("wf-delay", "act", 10.0)
            started = time.monotonic()
            assert coordinator.flush(5.0), "flush waited out the 30 s write delay"
            coordinator.send_progress("wf-delay", "act", 20.0)
            coordinator.close(5.0)
            assert time.monotonic() - started < 5.0
        assert server.count("progress") == 2
        assert coordinator.stats().delivered == 2


@pytest.mark.parametrize("gathering", [False, True], ids=["idle", "mid-delay"])
def test_answers_to_the_hub_do_not_wait_out_the_write_delay(gathering: bool) -> None:
    """The write delay gathers reports, not answers: a status reply goes at once, whether the
    writer was idle or already waiting out a delay (it takes what was gathered with it)."""
    with (
        ScriptedServer() as server,
        Coordinator(fast_config(server.url, write_delay=30.0)) as coordinator,
    ):
        assert coordinator.wait_registered(5)
        coordinator.phases.register_workflow("wf-asked")
        if gathering:
            coordinator.send_progress("wf-gathered", "act", 10.0)
        server.send({"id": "st-1", "type": "status", "workflow_id": "wf-asked"})
        server.wait_for(
            lambda s: s.count("status_response") == 1 and s.count("progress") == gathering,
            5,
            "the status reply (and what was gathered)",
        )


def test_close_is_bounded_when_the_hub_is_unreachable() -> None:
    with ScriptedServer() as server:
        coordinator = Coordinator(fast_config(server.url))
        lost = threading.Event()
        coordinator.on_disconnected(lost.set)
        coordinator.connect()
        assert coordinator.wait_registered(5)
        thread = client_thread(coordinator)
        server.stop()
        assert lost.wait(5)
        for i in range(100):
            coordinator.send_progress(f"wf-{i}", "act", 1.0)
        started = time.monotonic()
        coordinator.close(0.3)
        elapsed = time.monotonic() - started
    assert 0.25 <= elapsed < 1.5
    assert not thread.is_alive()
    stats = coordinator.stats()
    assert stats.dropped_by_kind == {"progress": 100}
    assert stats.drop_reasons == {"coordinator closed": 100}
    assert stats.sent == stats.delivered + stats.dropped


def test_close_is_idempotent_and_later_sends_are_dropped() -> None:
    with ScriptedServer() as server:
        coordinator = Coordinator(fast_config(server.url))
        coordinator.connect()
        assert coordinator.wait_registered(5)
        coordinator.close()
        coordinator.close()
        coordinator.close(0)
        server.wait_for(lambda s: s.connections[0].closed, 5)
        assert len(server.connections) == 1
        assert coordinator.send_progress("wf", "act", 1.0) is False
        assert coordinator.log_info("too late") is False
        assert coordinator.send_workflow_created("wf") is False
        coordinator.phases.register_workflow("wf")
        coordinator.phases.transition_to("wf", "pre-flight")  # no longer reported
        stats = coordinator.stats()
        assert stats.sent == 3
        assert stats.dropped == 3
        assert stats.drop_reasons == {"not sending: closed": 3}
        with pytest.raises(RuntimeError, match="closed"):
            coordinator.connect()


def test_the_context_manager_connects_and_closes() -> None:
    with ScriptedServer() as server:
        with Coordinator(fast_config(server.url)) as coordinator:
            assert coordinator.wait_registered(5)
            coordinator.send_error("wf", "act", ValueError("bad row"), recoverable=False)
        assert not client_thread(coordinator).is_alive()
        server.wait_for(lambda s: s.connections[0].closed and s.count("error") == 1, 5)
        error = server.of_type("error")[0]
        assert error.payload.to_dict() == {
            "workflow_id": "wf",
            "error": "ValueError: bad row",
            "recoverable": False,
            "action_id": "act",
        }
        assert server.connections[0].close_code == 1000


def test_close_from_a_callback_stops_the_client() -> None:
    with ScriptedServer() as server:
        coordinator = Coordinator(fast_config(server.url))
        closed = threading.Event()

        def on_registered(payload: object) -> None:
            coordinator.close()  # on the client's own thread: cannot wait, must still stop
            closed.set()

        coordinator.on_registered(on_registered)
        coordinator.connect()
        assert closed.wait(5)
        client_thread(coordinator).join(5)
        assert not client_thread(coordinator).is_alive()
        server.wait_for(lambda s: s.connections[0].closed, 5, "the close")
        assert server.connections[0].close_code == 1000
        assert len(server.connections) == 1  # and it does not dial again


def test_close_before_connect_and_flush_without_a_thread() -> None:
    coordinator = Coordinator(fast_config("ws://127.0.0.1:9/x"))
    coordinator.send_progress("wf", "act", 1.0)
    assert coordinator.flush(0.1) is False  # nothing runs that could deliver it
    coordinator.close()
    assert coordinator.stats().drop_reasons == {"coordinator closed": 1}


def test_blocking_calls_refuse_to_run_on_the_client_thread() -> None:
    with ScriptedServer() as server:
        coordinator = Coordinator(fast_config(server.url))
        errors: list[BaseException] = []
        done = threading.Event()

        def on_registered(payload: object) -> None:
            calls: list[Callable[[], bool]] = [
                lambda: coordinator.flush(1),
                lambda: coordinator.wait_registered(1),
            ]
            for call in calls:
                try:
                    call()
                except RuntimeError as exc:
                    errors.append(exc)
            done.set()

        coordinator.on_registered(on_registered)
        coordinator.connect()
        assert done.wait(5)
        assert len(errors) == 2
        coordinator.close()


# ---------------------------------------------------------------------- exit


EXIT_SCRIPT = textwrap.dedent(
    """
    import atexit
    import sys
    import time

    ended = []
    # Registered first, so it runs last: how long the exit (the coordinator's handler) took.
    atexit.register(lambda: print(f"exit took {time.monotonic() - ended[0]:.3f}", flush=True))

    from when_coordinator import Config, Coordinator

    coordinator = Coordinator(
        Config(
            when_url=sys.argv[1],
            service_name="exit-test",
            reconnect_initial_delay=0.05,
            close_timeout=float(sys.argv[2]),
        )
    )
    coordinator.connect()
    for i in range(200):
        coordinator.send_progress(f"wf-exit-{i}", "act", i / 2, message=f"step {i}")
    coordinator.log_info("last words")
    # No close(): the exit handler delivers what is queued.
    ended.append(time.monotonic())
    """
)
EXIT_SLACK = 1.5
"""Seconds of scheduling noise allowed past ``close_timeout`` on a loaded machine (before the
bound, an exit with the hub gone waited for reconnection for good)."""


def run_script(tmp_path: Path, url: str, close_timeout: float) -> float:
    """Run ``EXIT_SCRIPT`` against ``url``; the seconds its exit took, from the end of the
    script to the last exit handler (interpreter start-up is not in it)."""
    script = tmp_path / "exit_script.py"
    script.write_text(EXIT_SCRIPT)
    result = subprocess.run(
        [sys.executable, str(script), url, str(close_timeout)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    took = re.fullmatch(r"exit took (\d+\.\d+)", result.stdout.strip())
    assert took, result.stdout
    return float(took.group(1))


def test_an_exiting_process_delivers_what_it_queued(tmp_path: Path) -> None:
    with ScriptedServer() as server:
        run_script(tmp_path, server.url, 5.0)
        server.wait_for(lambda s: s.count("progress") >= 200 and s.count("log") >= 1, 5)
        assert server.count("progress") == 200
        assert [f.payload["message"] for f in server.of_type("log")] == ["last words"]
        server.wait_for(lambda s: bool(s.connections) and s.connections[0].closed, 5)
        assert server.connections[0].close_code == 1000


def test_an_exiting_process_does_not_hang_when_the_hub_is_gone(tmp_path: Path) -> None:
    server = ScriptedServer()
    server.start()
    url = server.url
    server.stop()
    took = run_script(tmp_path, url, 0.5)
    assert took < 0.5 + EXIT_SLACK  # the 0.5 s close limit, not a wait for the hub


# ---------------------------------------------------------------------- fork


def read_with_deadline(fd: int, timeout: float) -> bytes:
    deadline = time.monotonic() + timeout
    data = b""
    while True:
        remaining = deadline - time.monotonic()
        assert remaining > 0, "the child did not report in time"
        ready, _, _ = select.select([fd], [], [], remaining)
        if not ready:
            continue
        chunk = os.read(fd, 65536)
        if not chunk:
            return data
        data += chunk


def reap(pid: int, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() >= deadline:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            raise AssertionError("the child process hung")
        pause.wait(0.01)


def in_child(work: Any) -> tuple[int, dict[str, Any]]:
    """Fork; the child runs ``work()`` and reports its JSON result through a pipe."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        code = 0
        try:
            os.close(read_end)
            os.write(write_end, json.dumps(work()).encode())
        except BaseException as exc:
            os.write(write_end, json.dumps({"error": repr(exc)}).encode())
            code = 1
        finally:
            os._exit(code)
    os.close(write_end)
    try:
        report = json.loads(read_with_deadline(read_end, 15) or b"{}")
    finally:
        os.close(read_end)
    return reap(pid, 15), report


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
@pytest.mark.filterwarnings("ignore:.*fork.*:DeprecationWarning")
def test_a_forked_child_stays_quiet_and_the_parent_keeps_working() -> None:
    with ScriptedServer() as server:
        coordinator = Coordinator(fast_config(server.url))
        coordinator.connect()
        assert coordinator.wait_registered(5)
        coordinator.send_progress("wf-parent", "act", 1.0)
        assert coordinator.flush(5)
        server.barrier()
        before = len(server.snapshot())

        def child() -> dict[str, Any]:
            results = [coordinator.send_progress("wf-child", "act", float(i)) for i in range(50)]
            results.append(coordinator.log_info("from the child"))
            coordinator.phases.register_workflow("wf-child-phase")
            coordinator.phases.transition_to("wf-child-phase", "pre-flight")
            stats = coordinator.stats()
            flushed = coordinator.flush(0.2)
            coordinator.close(0.5)
            return {
                "results": results,
                "sent": stats.sent,
                "dropped": stats.dropped,
                "reasons": dict(stats.drop_reasons),
                "connected": coordinator.is_connected,
                "flushed": flushed,
            }

        started = time.monotonic()
        code, report = in_child(child)
        assert time.monotonic() - started < 15
        assert code == 0, report
        assert report["results"] == [False] * 51
        assert report["sent"] == report["dropped"] == 52
        assert report["reasons"] == {"not sending: forked child": 52}
        assert report["connected"] is False

        # The parent's connection is untouched and still works.
        coordinator.send_progress("wf-parent", "act", 2.0)
        assert coordinator.flush(5)
        server.barrier()
        frames = server.snapshot()
        assert all("wf-child" not in f.text for f in frames)
        assert all(f.message is not None for f in frames)  # no interleaved garbage
        assert len(server.connections) == 1
        assert not server.connections[0].closed
        assert [f.payload["percent"] for f in server.of_type("progress")] == [1, 2]
        assert len(frames) > before
        stats = coordinator.stats()
        assert stats.sent == stats.delivered == 2
        coordinator.close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
@pytest.mark.filterwarnings("ignore:.*fork.*:DeprecationWarning")
def test_a_forked_child_that_connects_gets_its_own_connection() -> None:
    with ScriptedServer() as server:
        coordinator = Coordinator(fast_config(server.url))
        coordinator.connect()
        assert coordinator.wait_registered(5)

        def child() -> dict[str, Any]:
            coordinator.connect()
            registered = coordinator.wait_registered(5)
            coordinator.send_progress("wf-child-own", "act", 7.0)
            flushed = coordinator.flush(5)
            coordinator.close(2.0)
            return {"registered": registered, "flushed": flushed}

        code, report = in_child(child)
        assert code == 0, report
        assert report == {"registered": True, "flushed": True}
        server.wait_for(lambda s: s.count("progress") >= 1, 5)
        progress = server.of_type("progress")
        assert [(f.connection, f.workflow_id) for f in progress] == [(2, "wf-child-own")]
        # The child registers as another instance, not with the id the hub gave its parent.
        parent_register, child_register = server.of_type("register")
        assert parent_register.payload.get("service_id") is None
        assert child_register.payload.get("service_id") is None
        parent_instance = parent_register.payload["instance_id"]
        assert child_register.payload["instance_id"].startswith(f"{parent_instance}-fork-")
        assert not server.connections[0].closed  # the parent's
        coordinator.send_progress("wf-parent", "act", 3.0)
        assert coordinator.flush(5)
        server.wait_for(lambda s: s.count("progress") >= 2, 5)
        assert server.of_type("progress")[1].connection == 1
        coordinator.close()
        wait_until(lambda: server.connections[0].closed, 5)


@pytest.mark.parametrize(
    ("timeout", "error"),
    [(math.nan, ValueError), ("1", TypeError), (True, TypeError)],
    ids=["nan", "text", "bool"],
)
def test_a_bad_timeout_is_refused_at_the_call_and_nothing_hangs(
    timeout: Any, error: type[Exception]
) -> None:
    """``flush(float('nan'))`` once waited forever with anything queued (every comparison
    with NaN is false), and ``close(nan)`` with it."""
    with socket.socket() as sock:  # a port nothing listens on: what is queued stays queued
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    coordinator = Coordinator(fast_config(f"ws://127.0.0.1:{port}/v1/coordination"))
    coordinator.connect()
    assert coordinator.log_info("never delivered")
    started = time.monotonic()
    for call in (coordinator.flush, coordinator.wait_registered, coordinator.close):
        with pytest.raises(error, match="timeout"):
            call(timeout)
    with pytest.raises(ValueError, match="finite"):
        coordinator.close(math.inf)
    assert coordinator.flush(-1.0) is False  # negative: do not wait
    assert time.monotonic() - started < 5
    assert coordinator.log_info("still open")  # the refused close() closed nothing
    coordinator.close(0.2)


@pytest.mark.parametrize(
    "name", ["workflow_id", "action_id", "correlation_id", "trace_id", "span_id"]
)
def test_log_context_arguments_are_checked_at_the_call(name: str) -> None:
    """A number here was accepted and only failed to encode later, on the client's thread."""
    coordinator = Coordinator(fast_config("ws://127.0.0.1:1/v1/coordination"))
    arguments: dict[str, Any] = {name: 5}
    with pytest.raises(TypeError, match=name):
        coordinator.log_with_context("info", "message", **arguments)
    assert coordinator.stats().sent == 0
    coordinator.close(0.1)


@pytest.mark.parametrize(
    ("arguments", "error", "match"),
    [
        (("", "a", 5.0), ValueError, "workflow_id must not be empty"),
        ((7, "a", 5.0), TypeError, "workflow_id must be a string"),
        (("wf", "a", math.nan), ValueError, "between 0 and 100"),
        (("wf", "a", 100.5), ValueError, "between 0 and 100"),
        (("wf", "a", True), TypeError, "percent must be a number"),
        (("wf", "a", "5"), TypeError, "percent must be a number"),
        (("wf", None, 5.0), TypeError, "action_id must be a string"),
        (("wf", "a", 5.0, 3), TypeError, "stage must be a string"),
        (("wf", "a", 5.0, "s", b"m"), TypeError, "message must be a string"),
        (("wf", "a", 5.0, "s", "m", -1), ValueError, "current_item must be an integer"),
        (("wf", "a", 5.0, "s", "m", 0, 1.5), ValueError, "total_items must be an integer"),
    ],
    ids=[
        "empty-id",
        "int-id",
        "nan",
        "over-100",
        "bool-percent",
        "text-percent",
        "none-action",
        "int-stage",
        "bytes-message",
        "negative-item",
        "float-total",
    ],
)
def test_progress_arguments_are_checked_at_the_call(
    arguments: tuple[Any, ...], error: type[Exception], match: str
) -> None:
    """Progress checks its common arguments (exact str and float, no counts) in one test; any
    other argument still meets the check that names it, and nothing is queued."""
    coordinator = Coordinator(fast_config("ws://127.0.0.1:1/v1/coordination"))
    positional, counts = arguments[:5], arguments[5:]
    keywords = dict(zip(("current_item", "total_items"), counts, strict=False))
    with pytest.raises(error, match=match):
        coordinator.send_progress(*positional, **keywords)
    assert coordinator.stats().sent == 0
    # What the common test lets through is queued: an int percent, a str subclass, counts.
    assert coordinator.send_progress("wf", "a", 50, "s")
    assert coordinator.send_progress(type("Id", (str,), {})("wf-2"), "a", 0.0)
    assert coordinator.send_progress("wf-3", "", 100.0, "", "", current_item=1, total_items=2)
    assert coordinator.stats().sent == 3
    coordinator.close(0.1)
