"""The operator commands as a person uses them: real subprocesses against a real hub, and
``watch`` in a real 80x24 terminal (tmux)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import signal
import subprocess
import time
from collections.abc import Callable, Iterator

import pytest
from websockets.sync.client import ClientConnection, connect

from tests.cli.conftest import COMMAND, clean_env, read_until, receive, run, send, start
from tests.support.faults import free_port
from tests.support.programs import require_program
from when_coordinator.hub import Hub, ThreadedHub


def stop(process: subprocess.Popen[str]) -> tuple[str, str]:
    """Ctrl-C the command; it must end by itself, with status 0 and no traceback."""
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=30)
    assert process.returncode == 0, err
    assert "Traceback" not in err
    return out, err


def created(ws: ClientConnection, hub: ThreadedHub, *ids: str, phase: str = "execution") -> None:
    for workflow_id in ids:
        send(ws, "workflow_created", workflow_id, action_type="load")
        send(ws, "phase_changed", workflow_id, **{"from": "planning", "to": phase})
    hub.wait_for(lambda h: all(h.workflows.get(i) and h.workflows[i].phase == phase for i in ids))


# --------------------------------------------------------------------------- workflows


def test_workflows_filters_by_phase_service_and_activity_and_finished_ones_show_100(
    hub: ThreadedHub, service: ClientConnection
) -> None:
    url = hub.http_url
    pending = run(["workflows", "--hub", url, "--phase", "pending"])
    assert [line.split()[0] for line in pending.stdout.splitlines()[1:]] == ["wf-2"]
    both = run(["workflows", "--hub", url, "--service", "etl"])  # a registered name
    assert len(both.stdout.splitlines()) == 3
    by_id = run(["workflows", "--hub", url, "--service", "etl-1", "--json"])
    assert {w["workflow_id"] for w in json.loads(by_id.stdout)} == {"wf-1", "wf-2"}
    unknown = run(["workflows", "--hub", url, "--service", "billing"])
    assert (unknown.returncode, unknown.stderr) == (
        1,
        "when-coordinator workflows: error: no service 'billing' at this hub (known: etl)\n",
    )
    bad = run(["workflows", "--hub", url, "--phase", "running"])
    assert bad.returncode == 1
    assert "unknown phase 'running'" in bad.stderr

    send(service, "phase_changed", "wf-2", **{"from": "completing", "to": "completed"})
    hub.wait_for(lambda h: h.workflows["wf-2"].phase == "completed")
    table = run(["workflows", "--hub", url]).stdout.splitlines()
    assert table[1].split()[:5] == ["wf-1", "ETL", "etl", "execution", "50%"]
    assert table[2].split()[:6] == ["└", "wf-2", "-", "etl", "completed", "100%"]
    active = run(["workflows", "--hub", url, "--active"])
    assert [line.split()[0] for line in active.stdout.splitlines()[1:]] == ["wf-1"]
    nothing = run(["workflows", "--hub", url, "--phase", "paused"])
    assert nothing.stdout.startswith("no workflows matching the filters")


def test_active_workflows_come_first_then_the_newest(hub: ThreadedHub) -> None:
    with connect(hub.url, proxy=None) as ws:
        send(ws, "register", service_name="etl", capabilities=None)
        receive(ws, "registered")
        created(ws, hub, "wf-old-active")
        created(ws, hub, "wf-done-1", "wf-done-2", phase="completed")
        created(ws, hub, "wf-new-active")
        listed = run(["workflows", "--hub", hub.http_url])
    order = [line.split()[0] for line in listed.stdout.splitlines()[1:]]
    assert order == ["wf-new-active", "wf-old-active", "wf-done-2", "wf-done-1"]


# --------------------------------------------------------------------------- prefixes


def test_any_unique_prefix_names_a_workflow_and_an_ambiguous_one_lists_the_candidates(
    hub: ThreadedHub, service: ClientConnection
) -> None:
    created(service, hub, "wf-3f2a9c0d", "wf-3f2b17e4")
    url = hub.http_url
    paused = run(["pause", "wf-3f2a", "--hub", url])
    assert paused.returncode == 0, paused.stderr
    assert "pause sent to service etl (etl-1) for workflow wf-3f2a9c0d" in paused.stdout
    assert receive(service, "pause")["workflow_id"] == "wf-3f2a9c0d"
    shown = run(["show", "wf-3f2b", "--hub", url])
    assert shown.stdout.splitlines()[0].split() == ["workflow", "wf-3f2b17e4"]
    for args in (["show", "wf-3f2"], ["cancel", "wf-3f"], ["logs", "--workflow", "wf-3f"]):
        ambiguous = run([*args, "--hub", url])
        assert ambiguous.returncode == 1, args
        assert ambiguous.stderr.startswith(
            f"when-coordinator {args[0]}: error: workflow id '{args[-1]}' is ambiguous: "
            "2 workflow ids start so (wf-3f2a9c0d, wf-3f2b17e4); give more of the id"
        ), ambiguous.stderr
    unknown = run(["status", "wf-9", "--hub", url])
    assert unknown.stderr == (
        "when-coordinator status: error: unknown workflow 'wf-9': no service has reported it "
        "to this hub\n"
    )


# --------------------------------------------------------------------------- show, services, logs


def test_show_prints_history_checkpoints_errors_children_and_logs(
    hub: ThreadedHub, service: ClientConnection
) -> None:
    send(service, "checkpoint", "wf-1", checkpoint_id="cp-7", reason="batch 7")
    send(service, "error", "wf-1", error="slow disk", recoverable=True)
    send(service, "log", level="warn", message="disk at 91%", workflow_id="wf-1")
    send(service, "workflow_created", "wf-3", parent_workflow_id="wf-2", action_type="part")
    hub.wait_for(lambda h: "wf-3" in h.workflows and h.workflows["wf-1"].errors)
    result = run(["show", "wf-1", "--hub", hub.http_url])
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    fields = dict(line.split(None, 1) for line in lines[: lines.index("")])
    assert fields["name"] == "ETL"
    assert fields["service"] == "etl (etl-1)"
    assert fields["phase"] == "execution"
    assert fields["progress"].endswith("50%")
    text = result.stdout
    assert re.search(r"history:\n  TIME +FROM +TO .*\n  \S+ +planning +execution", text)
    assert re.search(r"checkpoints:\n.*\n  \S+ +cp-7 +batch 7", text)
    assert re.search(r"errors:\n.*\n  \S+ +slow disk +yes", text)
    children = text[text.index("children:") :].splitlines()
    assert children[2].split()[:2] == ["wf-2", "-"]
    assert children[3].split()[:3] == ["└", "wf-3", "part"]
    assert re.search(r"logs \(last 1\):\n  \S+ WARN  etl wf-1  disk at 91%", text)
    assert json.loads(run(["show", "wf-1", "--json", "--hub", hub.http_url]).stdout)["errors"]


def test_services_lists_names_health_and_workflow_counts(
    hub: ThreadedHub, service: ClientConnection
) -> None:
    result = run(["services", "--hub", hub.http_url])
    assert result.returncode == 0, result.stderr
    header, row = result.stdout.splitlines()
    assert header.split() == [
        "NAME",
        "ID",
        "INSTANCE",
        "VERSION",
        "STATUS",
        "RTT",
        "WORKFLOWS",
        "SEEN",
    ]
    assert row.split()[:2] == ["etl", "etl-1"]
    assert row.split()[4] == "healthy"
    assert "2 active, 2 in all" in row
    listed = json.loads(run(["services", "--json", "--hub", hub.http_url]).stdout)
    assert [s["service_name"] for s in listed] == ["etl"]


def test_logs_filter_by_level_and_workflow_and_follow_new_entries(
    hub: ThreadedHub, service: ClientConnection
) -> None:
    for level, message, workflow_id in (
        ("info", "starting", "wf-1"),
        ("warn", "disk at 91%", "wf-1"),
        ("error", "child failed", "wf-2"),
    ):
        send(service, "log", level=level, message=message, workflow_id=workflow_id)
    hub.wait_for(lambda h: len(h.logs) == 3)
    url = hub.http_url
    every = run(["logs", "--hub", url]).stdout.splitlines()
    assert [line.split(None, 4)[1:] for line in every] == [
        ["INFO", "etl", "wf-1", "starting"],
        ["WARN", "etl", "wf-1", "disk at 91%"],
        ["ERROR", "etl", "wf-2", "child failed"],
    ]
    warn_up = run(["logs", "--hub", url, "--level", "warn"]).stdout
    assert "starting" not in warn_up
    assert ("disk at 91%" in warn_up, "child failed" in warn_up) == (True, True)
    one = run(["logs", "--hub", url, "--workflow", "wf-2", "--json"]).stdout.splitlines()
    assert [json.loads(line)["message"] for line in one] == ["child failed"]

    process = start(["logs", "--follow", "--level", "warn", "--workflow", "wf-1", "--hub", url])
    try:
        read_until(process, r"WARN  etl wf-1  disk at 91%")
        hub.wait_for(lambda h: h.watchers == 1)
        send(service, "log", level="info", message="quiet", workflow_id="wf-1")
        send(service, "log", level="error", message="elsewhere")  # no workflow: out of scope
        send(service, "log", level="error", message="disk full", workflow_id="wf-1")
        lines = read_until(process, r"ERROR etl wf-1  disk full")
        assert not any("quiet" in line or "elsewhere" in line for line in lines)
        stop(process)
    finally:
        process.kill()
        process.wait()


# --------------------------------------------------------------------------- pipes and JSON


@pytest.mark.parametrize(
    "args",
    [["workflows"], ["services"], ["logs"], ["show", "wf-1"], ["watch", "--once"]],
)
def test_a_closed_pipe_ends_the_command_quietly(
    hub: ThreadedHub, service: ClientConnection, args: list[str]
) -> None:
    """``when-coordinator workflows | head -1``: the reader is gone before anything is read."""
    send(service, "log", level="info", message="hello", workflow_id="wf-1")
    hub.wait_for(lambda h: len(h.logs) == 1)
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        result = subprocess.run(
            [*COMMAND, *args, "--hub", hub.http_url],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=30,
            env=clean_env(),
            check=False,
        )
    finally:
        os.close(write_end)
    assert (result.returncode, result.stderr) == (0, "")


def test_watch_json_prints_one_event_per_line_with_the_filters_applied(
    hub: ThreadedHub, service: ClientConnection
) -> None:
    send(service, "log", level="info", message="before", workflow_id="wf-1")
    hub.wait_for(lambda h: len(h.logs) == 1)
    once = run(["watch", "--json", "--once", "--logs", "--hub", hub.http_url])
    events = [json.loads(line) for line in once.stdout.splitlines()]
    assert [e["event"] for e in events] == ["snapshot", "log"]
    assert events[1]["message"] == "before"

    process = start(["watch", "--json", "--phase", "execution,paused", "--hub", hub.http_url])
    try:
        snapshot = json.loads(read_until(process, r'"event":"snapshot"')[-1])
        assert [w["workflow_id"] for w in snapshot["workflows"]] == ["wf-1"]
        hub.wait_for(lambda h: h.watchers == 1)
        send(service, "phase_changed", "wf-2", **{"from": "pending", "to": "failed"})
        send(service, "progress", "wf-1", percent=80, stage="load")
        lines = read_until(process, r'"progress":80')
        events = [json.loads(line) for line in lines]
        assert all(e.get("workflow_id", "wf-1") == "wf-1" for e in events), lines
        assert all(e["workflow"]["workflow_id"] == "wf-1" for e in events if "workflow" in e)
        stop(process)
    finally:
        process.kill()
        process.wait()


def test_watch_once_shows_recent_anomalies_and_logs(
    hub: ThreadedHub, service: ClientConnection
) -> None:
    send(service, "phase_changed", "wf-2", **{"from": "execution", "to": "paused"})  # skips
    send(service, "log", level="warn", message="disk at 91%", workflow_id="wf-1")
    hub.wait_for(lambda h: len(h.logs) == 1 and h.anomalies)
    result = run(["watch", "--once", "--anomalies", "--logs", "--hub", hub.http_url])
    assert result.returncode == 0, result.stderr
    anomalies = result.stdout.split("recent anomalies:\n")[1].split("\n\n")[0]
    assert re.search(r"wf-2  anomaly: phase_changed execution -> paused", anomalies)
    logs = result.stdout.split("recent logs:\n")[1]
    assert re.search(r"wf-1 ETL  \[warn\] disk at 91%", logs)
    filtered = run(["watch", "--once", "--service", "etl", "--phase", "paused", "--hub", hub.url])
    assert filtered.stdout.splitlines()[0].startswith("watching 1 workflow(s)")
    assert filtered.stdout.splitlines()[2].split()[:2] == ["wf-2", "-"]


# --------------------------------------------------------------------------- the hub restarting


def test_watch_waits_for_a_hub_that_went_away_and_says_so() -> None:
    port = free_port()
    with ThreadedHub(Hub(port=port)) as first:
        process = start(["watch", "--plain", "--hub", first.http_url])
        read_until(process, r"watching 0 workflow\(s\)")
        first.wait_for(lambda h: h.watchers == 1)
    try:
        read_until(process, rf"lost the hub at http://127.0.0.1:{port}; reconnecting")
        with ThreadedHub(Hub(port=port)) as second:
            with connect(second.url, proxy=None) as ws:
                send(ws, "register", service_name="etl", capabilities=None)
                receive(ws, "registered")
                created(ws, second, "wf-after")
                read_until(process, rf"reconnected to the hub at http://127.0.0.1:{port}")
                read_until(process, r"wf-after load  etl  execution ")
            stop(process)
    finally:
        process.kill()
        process.wait()


# --------------------------------------------------------------------------- an 80x24 terminal


class Terminal:
    """A command running in a detached tmux session of a fixed size, on its own tmux server."""

    def __init__(self, command: list[str], columns: int = 80, rows: int = 24) -> None:
        self.server = ["tmux", "-L", f"when-cli-test-{os.getpid()}-{time.monotonic_ns()}"]
        shell = f"{shlex.join(command)}; echo EXITED $?; sleep 600"
        size = ["-x", str(columns), "-y", str(rows)]
        subprocess.run(
            [*self.server, "-f", "/dev/null", "new-session", "-d", "-s", "t", *size, shell],
            check=True,
            env=clean_env(),
            timeout=30,
        )

    def screen(self) -> list[str]:
        out = subprocess.run(
            [*self.server, "capture-pane", "-p", "-t", "t"],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        )
        return out.stdout.split("\n")

    def wait_for(self, predicate: Callable[[list[str]], bool], timeout: float = 15.0) -> list[str]:
        deadline = time.monotonic() + timeout
        while True:
            screen = self.screen()
            if predicate(screen):
                return screen
            if time.monotonic() > deadline:
                raise AssertionError("the screen never matched:\n" + "\n".join(screen))
            time.sleep(0.05)

    def keys(self, *keys: str) -> None:
        subprocess.run([*self.server, "send-keys", "-t", "t", *keys], check=True, timeout=30)

    def close(self) -> None:
        subprocess.run([*self.server, "kill-server"], check=False, timeout=30)


@pytest.fixture
def terminal() -> Iterator[Callable[[list[str]], Terminal]]:
    require_program("tmux", "tmux")
    made: list[Terminal] = []

    def open_terminal(command: list[str]) -> Terminal:
        made.append(Terminal(command))
        return made[-1]

    yield open_terminal
    for term in made:
        term.close()


def _row(screen: list[str], workflow_id: str) -> str:
    return next((line for line in screen if line.startswith(workflow_id[:12])), "")


def test_watch_fits_an_80x24_terminal_active_first_aligned_and_live(
    hub: ThreadedHub, terminal: Callable[[list[str]], Terminal]
) -> None:
    ids = ["wf-" + hashlib.sha256(str(i).encode()).hexdigest()[:32] for i in range(40)]
    with connect(hub.url, proxy=None) as ws:
        send(ws, "register", service_name="billing", capabilities=None)
        receive(ws, "registered")
        for number, workflow_id in enumerate(ids):  # ten active ones first, then 30 done
            name = f"nightly-invoice-run-for-the-european-warehouses-{number}"
            send(ws, "workflow_created", workflow_id, action_type=name)
            phase = "execution" if number < 10 else "completed"
            send(ws, "phase_changed", workflow_id, **{"from": "planning", "to": phase})
            if number < 10:
                send(ws, "progress", workflow_id, percent=number * 9, stage="transform " * 9)
        hub.wait_for(lambda h: len(h.workflows) == 40)
        term = terminal([*COMMAND, "watch", "--hub", hub.http_url])
        screen = term.wait_for(lambda s: s[0].startswith("when-coordinator watch"))
        assert "40 workflow(s), 10 active" in screen[0]
        assert screen[2].split()[:5] == ["WORKFLOW", "NAME", "SERVICE", "PHASE", "PROGRESS"]
        assert screen[2].split()[5] == "STA…"  # cut to fit, never wrapped
        rows = screen[3:23]
        assert screen[23].startswith("… 20 more")
        phases = [row.split()[3] for row in rows if row]
        assert phases[:10] == ["execution"] * 10  # the active ones first, though older
        assert set(phases[10:]) == {"completed"}
        assert rows[0].startswith(ids[9][:12])  # the newest active one first
        bars = {row.index("[") for row in rows if row}
        assert len(bars) == 1, rows  # phases padded: the bars line up
        for row in rows:
            assert re.match(r"wf-\w{9}  nightly-\S*…  billing  \w+ +\[[#-]{10}\] +\d+%  ", row), row
        clock = screen[0].split()[2]

        # The clock moves with no event at all.
        term.wait_for(lambda s: s[0].split()[2] != clock, timeout=5)
        # Progress moves live; pausing then paused in one burst ends showing paused.
        send(ws, "progress", ids[4], percent=77, stage="load")
        term.wait_for(lambda s: " 77%  load" in _row(s, ids[4]))
        send(ws, "phase_changed", ids[4], **{"from": "execution", "to": "pausing"})
        send(ws, "phase_changed", ids[4], **{"from": "pausing", "to": "paused"})
        screen = term.wait_for(lambda s: _row(s, ids[4]).split()[3] == "paused")
        assert screen[0].startswith("when-coordinator watch")  # the header stays
        term.keys("C-c")
        term.wait_for(lambda s: any(line == "EXITED 0" for line in s))


def test_watch_on_a_terminal_shows_the_hub_offline_and_recovers(
    terminal: Callable[[list[str]], Terminal],
) -> None:
    port = free_port()
    with ThreadedHub(Hub(port=port)) as first:
        term = terminal([*COMMAND, "watch", "--hub", first.http_url])
        term.wait_for(lambda s: s[2] == "no workflows yet")
        first.wait_for(lambda h: h.watchers == 1)
    offline = term.wait_for(lambda s: s[1].startswith("OFFLINE for "))
    assert offline[0].startswith("when-coordinator watch")
    assert any(
        line.endswith(f"lost the hub at http://127.0.0.1:{port}; reconnecting") for line in offline
    )
    with ThreadedHub(Hub(port=port)) as second, connect(second.url, proxy=None) as ws:
        send(ws, "register", service_name="etl", capabilities=None)
        receive(ws, "registered")
        created(ws, second, "wf-after")
        screen = term.wait_for(lambda s: _row(s, "wf-after") != "", timeout=20)
        assert screen[1] == ""  # no longer offline
        assert any(
            line.endswith(f"reconnected to the hub at http://127.0.0.1:{port}") for line in screen
        )
        term.keys("C-c")
        term.wait_for(lambda s: any(line == "EXITED 0" for line in s))


def test_a_redraw_skipped_within_a_tenth_of_a_second_is_made_up() -> None:
    """The sink asks to be woken when the skipped redraw is due, and then draws the newest
    state (before, a row could show ``pausing`` until the next event)."""
    from io import StringIO  # noqa: PLC0415

    from when_coordinator.cli_watch import WatchSink  # noqa: PLC0415

    out = StringIO()
    sink = WatchSink(
        out,
        mode="screen",
        hub="http://hub",
        once=False,
        logs=False,
        anomalies=False,
        phases=None,
        service="",
        expected=[],
    )
    record = {"workflow_id": "wf-1", "phase": "execution", "created_at": 1.0}
    sink.event({"event": "snapshot", "workflows": [record], "services": []})
    drawn = out.getvalue()
    assert "execution" in drawn
    sink.event({"event": "workflow", "workflow": {**record, "phase": "pausing"}})
    sink.event({"event": "workflow", "workflow": {**record, "phase": "paused"}})
    assert out.getvalue() == drawn  # both inside the 0.1 s: not drawn yet
    wake = sink.wake_at()
    assert wake is not None
    assert wake <= sink.drawn_at + 0.1 + 1e-6
    time.sleep(max(0.0, wake - time.monotonic()))
    sink.tick()
    assert "paused" in out.getvalue()[len(drawn) :]
