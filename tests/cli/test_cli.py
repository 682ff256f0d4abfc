"""The real ``when-coordinator`` command in subprocesses, against a hub running in the test."""

from __future__ import annotations

import json
import re
import signal
import socket
import sys
import types
from collections.abc import Sequence
from typing import Any

import pytest
from websockets.sync.client import ClientConnection, connect

from tests.cli.conftest import clean_env, read_until, receive, run, send, start
from tests.support.faults import free_port
from when_coordinator import cli
from when_coordinator.hub import Hub, ThreadedHub
from when_coordinator.hub.testing import frame

# --------------------------------------------------------------------------- help


def test_help_names_every_command_and_the_environment() -> None:
    result = run(["--help"])
    assert result.returncode == 0
    for word in ("hub", "demo", "workflows", "watch", "pause", "resume", "cancel", "status"):
        assert re.search(rf"^\s+{word}\s", result.stdout, re.MULTILINE), word
    assert "WHEN_HUB_URL" in result.stdout
    assert "WHEN_AUTH_TOKEN" in result.stdout
    pause = run(["pause", "--help"])
    assert "WORKFLOW_ID" in pause.stdout
    assert "--reason" in pause.stdout
    assert "--hub URL" in pause.stdout
    assert run(["pause"]).returncode == 2  # argparse: the workflow id is required


# --------------------------------------------------------------------------- read commands


def test_workflows_prints_a_tree_table_and_json(
    hub: ThreadedHub, service: ClientConnection
) -> None:
    result = run(["workflows", "--hub", hub.http_url])
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == [
        "WORKFLOW",
        "NAME",
        "SERVICE",
        "PHASE",
        "PROGRESS",
        "STAGE",
        "ERRORS",
        "UPDATED",
    ]
    # The name (action_type) and the service's registered name, not its id.
    assert lines[1].split()[:6] == ["wf-1", "ETL", "etl", "execution", "50%", "transform"]
    assert lines[2].split()[:5] == ["└", "wf-2", "-", "etl", "pending"]

    as_json = run(["workflows", "--json"], env=clean_env(WHEN_HUB_URL=hub.http_url))
    assert {w["workflow_id"] for w in json.loads(as_json.stdout)} == {"wf-1", "wf-2"}


def test_workflows_on_an_empty_hub_says_so(hub: ThreadedHub) -> None:
    result = run(["workflows", "--hub", hub.url])  # a ws:// URL works too
    assert result.returncode == 0
    assert "no workflows" in result.stdout


def test_status_asks_the_service_and_prints_its_answer(
    hub: ThreadedHub, service: ClientConnection
) -> None:
    process = start(["status", "wf-1", "--hub", hub.http_url])
    asked = receive(service, "status")
    answer = {"phase": "execution", "progress": 62.5, "current_action": "load", "message": "ok"}
    service.send(
        json.dumps(
            frame("status_response", "wf-1", {"workflow_id": "wf-1", **answer}, id=asked["id"])
        )
    )
    out, err = process.communicate(timeout=30)
    assert process.returncode == 0, err
    fields = dict(line.split(None, 1) for line in out.splitlines())
    assert fields["phase"] == "execution"
    assert fields["progress"].endswith("62.5%")
    assert (fields["action"], fields["message"]) == ("load", "ok")


def test_status_without_an_answer_fails_cleanly(
    hub: ThreadedHub, service: ClientConnection
) -> None:
    result = run(["status", "wf-1", "--hub", hub.http_url, "--timeout", "0.2"])
    assert result.returncode == 1
    assert "did not answer status" in result.stderr
    assert "Traceback" not in result.stderr


# --------------------------------------------------------------------------- control commands


def test_pause_resume_and_cancel_reach_the_service(
    hub: ThreadedHub, service: ClientConnection
) -> None:
    result = run(["pause", "wf-1", "--hub", hub.http_url, "--reason", "db maintenance"])
    assert result.returncode == 0, result.stderr
    assert "pause sent to service etl (etl-1) for workflow wf-1" in result.stdout
    pause = receive(service, "pause")
    assert (pause["workflow_id"], pause["payload"]) == (
        "wf-1",
        {"workflow_id": "wf-1", "reason": "db maintenance"},
    )
    send(service, "phase_changed", "wf-1", **{"from": "execution", "to": "pausing"})
    send(service, "phase_changed", "wf-1", **{"from": "pausing", "to": "paused"})
    hub.wait_for(lambda h: h.workflows["wf-1"].phase == "paused")
    assert (
        run(["resume", "wf-1", "--hub", hub.http_url, "--from-checkpoint", "cp-2"]).returncode == 0
    )
    assert receive(service, "resume")["payload"] == {
        "workflow_id": "wf-1",
        "from_checkpoint": "cp-2",
    }
    assert run(["cancel", "wf-2", "--hub", hub.http_url, "--force"]).returncode == 0
    assert receive(service, "cancel")["payload"] == {"workflow_id": "wf-2", "force": True}


def test_an_unknown_workflow_is_a_one_line_error(hub: ThreadedHub) -> None:
    result = run(["pause", "wf-ghost", "--hub", hub.http_url])
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "when-coordinator pause: error: unknown workflow 'wf-ghost': "
        "no service has reported it to this hub"
    )


# --------------------------------------------------------------------------- watch


def test_watch_follows_phases_and_progress_until_interrupted(
    hub: ThreadedHub, service: ClientConnection
) -> None:
    process = start(["watch", "--hub", hub.http_url, "--plain"])
    try:
        read_until(process, r"watching 2 workflow")
        hub.wait_for(lambda h: h.watchers == 1)
        send(
            service,
            "phase_changed",
            "wf-1",
            **{"from": "execution", "to": "pausing", "reason": "ops"},
        )
        read_until(process, r"wf-1 ETL  execution -> pausing  \(ops\)")
        send(service, "progress", "wf-1", percent=75, stage="load")
        line = read_until(process, r"wf-1 ETL  etl  pausing     \[.*  75%")[-1]
        assert line.endswith("[###############-----]  75%  load")
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=30)
        assert process.returncode == 0
        assert "Traceback" not in err
    finally:
        process.kill()
        process.wait()


def test_watch_once_and_timeout_end_by_themselves(
    hub: ThreadedHub, service: ClientConnection
) -> None:
    once = run(["watch", "--once", "--hub", hub.http_url])
    assert once.returncode == 0, once.stderr
    assert "watching 2 workflow(s)" in once.stdout
    assert re.search(r"wf-1\s+ETL\s+etl\s+execution   \[##########----------\]  50%", once.stdout)
    timed = run(["watch", "--timeout", "0.3", "--hub", hub.http_url, "--workflow", "wf-2"])
    assert timed.returncode == 0, timed.stderr
    assert "watching 1 workflow(s)" in timed.stdout


# --------------------------------------------------------------------------- errors and auth


def test_an_unreachable_hub_gives_a_one_line_error_and_status_1() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    for args in (["workflows"], ["watch", "--once"], ["pause", "wf-1"], ["status", "wf-1"]):
        result = run([*args, "--hub", url])
        assert result.returncode == 1, args
        assert "Traceback" not in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
        assert f"cannot reach the hub at {url} (connection refused)" in result.stderr
    bad = run(["workflows", "--hub", "ftp://example"])
    assert (bad.returncode, "is not a hub URL" in bad.stderr) == (1, True)


def test_a_hub_with_a_token_refuses_commands_without_it() -> None:
    with ThreadedHub(Hub(token="cli-secret")) as hub:
        for args in (["workflows"], ["watch", "--once"]):
            refused = run([*args, "--hub", hub.http_url])
            assert refused.returncode == 1
            assert "needs a valid token" in refused.stderr
            wrong = run([*args, "--hub", hub.http_url, "--token", "nope"])
            assert wrong.returncode == 1
            assert "cli-secret" not in wrong.stderr
        assert run(["workflows", "--hub", hub.http_url, "--token", "cli-secret"]).returncode == 0
        from_env = run(
            ["watch", "--once", "--hub", hub.http_url], env=clean_env(WHEN_AUTH_TOKEN="cli-secret")
        )
        assert from_env.returncode == 0, from_env.stderr


# --------------------------------------------------------------------------- hub and demo


def test_the_hub_command_serves_until_sigterm(tmp_path: Any) -> None:
    process = start(["hub", "--port", "0", "--db", str(tmp_path / "hub.db")])
    try:
        first = read_until(process, r"listening on ws://")[-1]
        url = re.search(r"(ws://\S+)", first)
        assert url is not None
        port = int(url.group(1).split(":")[2].split("/")[0])
        result = run(["workflows", "--hub", f"127.0.0.1:{port}"])
        assert result.returncode == 0
        with connect(url.group(1), proxy=None) as ws:
            send(ws, "register", service_name="probe", capabilities=None)
            assert receive(ws, "registered")["payload"]["service_id"] == "svc-1"
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=30)
        assert process.returncode == 0, err
        assert "hub stopped" in out
        assert "Traceback" not in err
    finally:
        process.kill()
        process.wait()


def test_the_hub_command_reports_a_busy_port() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        result = run(["hub", "--port", str(taken.getsockname()[1])])
    assert result.returncode == 1
    assert "cannot listen on 127.0.0.1" in result.stderr
    assert "Traceback" not in result.stderr


def test_the_hub_command_reports_bad_settings_in_one_line(tmp_path: Any) -> None:
    missing = run(["hub", "--port", "0", "--db", str(tmp_path / "no" / "such" / "dir.db")])
    assert missing.returncode == 1
    assert "cannot use the hub database" in missing.stderr
    assert "Traceback" not in missing.stderr
    interval = run(["hub", "--port", "0", "--ping-interval", "0"])
    assert interval.returncode == 1
    assert "ping_interval must be > 0" in interval.stderr


def test_demo_runs_the_demo_module_with_its_own_arguments(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: list[list[str]] = []

    def demo_main(argv: Sequence[str]) -> int:
        seen.append(list(argv))
        return 3

    stand_in = types.ModuleType("when_coordinator.demo")
    stand_in.main = demo_main  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "when_coordinator.demo", stand_in)
    assert cli.main(["demo", "--fast", "-x", "value"]) == 3
    assert seen == [["--fast", "-x", "value"]]


def test_the_built_in_demo_stand_in_prints_phase_messages(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert cli._demo_stub() == 0
    messages = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [m["payload"]["to"] for m in messages][-2:] == ["completing", "completed"]


# --------------------------------------------------------------------------- issue 12


def next_command(ws: ClientConnection) -> dict[str, Any]:
    """The next message from the hub that is not a ping."""
    while True:
        message: dict[str, Any] = json.loads(ws.recv(timeout=10))
        if message["type"] != "ping":
            return message


def test_a_command_the_phase_forbids_is_a_one_line_error_naming_the_phase(
    hub: ThreadedHub, service: ClientConnection
) -> None:
    resume = run(["resume", "wf-1", "--hub", hub.http_url])
    assert resume.returncode == 1
    assert resume.stderr == (
        "when-coordinator resume: error: cannot resume workflow 'wf-1': its phase is "
        "execution; it allows pause and cancel\n"
    )
    send(service, "phase_changed", "wf-2", **{"from": "pending", "to": "failed"})
    hub.wait_for(lambda h: h.workflows["wf-2"].phase == "failed")
    for command in ("pause", "cancel"):
        result = run([command, "wf-2", "--hub", hub.http_url])
        assert result.returncode == 1
        assert result.stderr == (
            f"when-coordinator {command}: error: cannot {command} workflow 'wf-2': its phase "
            "is failed; it has finished: no command applies\n"
        )
    assert run(["pause", "wf-1", "--hub", hub.http_url]).returncode == 0
    assert next_command(service)["type"] == "pause"  # the refused ones never reached it


def test_the_hub_command_refuses_an_empty_token_in_one_line() -> None:
    for args, env in (
        (["--token", ""], clean_env()),
        (["--token", "   "], clean_env()),
        ([], clean_env(WHEN_AUTH_TOKEN="")),
    ):
        result = run(["hub", "--port", "0", *args], env=env)
        assert result.returncode == 1, result
        assert result.stderr.startswith("when-coordinator hub: error: the token is empty")
        assert len(result.stderr.strip().splitlines()) == 1
        assert "listening" not in result.stdout
    spaced = run(["hub", "--port", "0", "--token", " padded "])
    assert spaced.returncode == 1
    assert "surrounding spaces" in spaced.stderr


def test_the_hub_command_refuses_an_empty_or_padded_read_token() -> None:
    for args, env in (
        (["--token", "t0k", "--read-token", ""], clean_env()),
        (["--token", "t0k", "--read-token", "  "], clean_env()),
        (["--token", "t0k"], clean_env(WHEN_READ_TOKEN="")),
    ):
        result = run(["hub", "--port", "0", *args], env=env)
        assert result.returncode == 1, result
        assert result.stderr.startswith("when-coordinator hub: error: the read-only token is empty")
        assert len(result.stderr.strip().splitlines()) == 1
        assert "listening" not in result.stdout
    spaced = run(["hub", "--port", "0", "--token", "t0k", "--read-token", " padded "])
    assert spaced.returncode == 1
    assert "read_token must not have surrounding spaces" in spaced.stderr


def test_the_hub_command_warns_when_it_would_listen_beyond_loopback_without_a_token() -> None:
    # The port is taken on loopback, so the wildcard bind fails: nothing listens beyond it.
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        open_hub = run(["hub", "--host", "0.0.0.0", "--port", str(port)])
        with_token = run(["hub", "--host", "0.0.0.0", "--port", str(port), "--token", "t0k"])
        local = run(["hub", "--host", "127.0.0.1", "--port", str(port)])
    warning = (
        f"when-coordinator hub: warning: listening on 0.0.0.0 without a token: anyone who can "
        f"reach port {port} can read and steer every workflow; set --token or WHEN_AUTH_TOKEN"
    )
    assert open_hub.stderr.splitlines()[0] == warning
    assert "cannot listen on 0.0.0.0" in open_hub.stderr
    assert "warning" not in with_token.stderr
    assert "warning" not in local.stderr


def test_a_hub_on_every_interface_prints_an_address_clients_can_dial() -> None:
    for host, loopback in (("0.0.0.0", "127.0.0.1"), ("::", "[::1]")):
        lines = cli.listening_lines(host, 8080, "no authentication")
        url = re.search(r"listening on ws://(\S+):8080/v1/coordination$", lines[0])
        assert url is not None, lines
        assert url.group(1) not in ("0.0.0.0", "[::]", "127.0.0.1", "[::1]", "localhost")
        assert f"ws://{loopback}:8080/v1/coordination" in lines[1]
        assert lines[2].startswith(f"  operator API http://{url.group(1)}:8080 ")
        assert lines[3] == f"  dashboard    http://{url.group(1)}:8080/"
    assert cli.listening_lines("127.0.0.1", 9, "x")[0].endswith("ws://127.0.0.1:9/v1/coordination")


def test_credentials_in_the_hub_url_are_never_echoed(hub: ThreadedHub) -> None:
    secret = "pa55w0rd-e2f1"
    closed = free_port()
    for args in (["workflows"], ["watch", "--once"], ["pause", "wf-1"], ["status", "wf-1"]):
        result = run([*args, "--hub", f"http://alice:{secret}@127.0.0.1:{closed}"])
        assert result.returncode == 1, args
        assert f"cannot reach the hub at http://127.0.0.1:{closed} " in result.stderr
        assert secret not in result.stderr
        assert "alice" not in result.stderr
    for bad in (f"ftp://alice:{secret}@example", f"http://alice:{secret}@host:port"):
        result = run(["workflows", "--hub", bad])
        assert (result.returncode, "is not a hub URL" in result.stderr) == (1, True), result
        assert secret not in result.stderr
        assert "Traceback" not in result.stderr
    with ThreadedHub(Hub(token="cli-secret")) as guarded:
        url = guarded.http_url.replace("http://", f"http://alice:{secret}@")
        refused = run(["workflows", "--hub", url])
        assert (refused.returncode, "needs a valid token" in refused.stderr) == (1, True)
        assert secret not in refused.stderr
    # The credentials still work where no token is needed (sent as HTTP Basic auth).
    url = hub.http_url.replace("http://", f"http://alice:{secret}@")
    listed = run(["workflows", "--hub", url])
    assert listed.returncode == 0, listed.stderr
    assert secret not in listed.stdout + listed.stderr


def test_the_hub_command_checks_its_send_buffer_options() -> None:
    result = run(["hub", "--port", "0", "--send-buffer-timeout", "0"])
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "when-coordinator hub: error: send_buffer_timeout must be > 0 seconds"
    )
    result = run(["hub", "--port", "0", "--send-buffer-bytes", "-1"])
    assert "send_buffer_bytes must be an int >= 0" in result.stderr
