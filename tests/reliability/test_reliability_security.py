"""Reliability at the trust boundary: a token-protected hub lets in only the right token, at
the handshake, and no token (right or wrong) ever reaches a log, an error message or the
output of the processes involved."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.support.faults import HubProcess, handshake_status
from tests.support.scripted_server import fast_config, wait_until
from when_coordinator import Coordinator
from when_coordinator.hub import Hub, ThreadedHub

RIGHT = "right-token-8d41c7e2"
WRONG = "wrong-token-53f09ab6"


def assert_no_token(text: str, where: str) -> None:
    for token in (RIGHT, WRONG):
        assert token not in text, f"a token appears in {where}"
        assert token[:12] not in text, f"part of a token appears in {where}"


def assert_not_logged(caplog: pytest.LogCaptureFixture) -> None:
    formatter = logging.Formatter()
    for record in caplog.records:
        assert_no_token(record.getMessage(), f"a record of {record.name}")
        if record.exc_info:
            assert_no_token(formatter.formatException(record.exc_info), f"{record.name} traceback")
    assert_no_token(caplog.text, "the captured log")


def test_the_hub_refuses_missing_and_wrong_tokens_at_the_handshake_and_logs_none(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)  # every logger, websockets' own included, at DEBUG
    with ThreadedHub(Hub(port=0, token=RIGHT)) as hub:
        assert handshake_status(hub.url, None) == 401
        assert handshake_status(hub.url, f"Bearer {WRONG}") == 401
        assert handshake_status(hub.url, f"Basic {RIGHT}") == 401
        assert handshake_status(hub.url, "Bearer") == 401
        assert handshake_status(hub.url, f"Bearer {RIGHT}") == 101

        refused = []
        for token in ("", WRONG):
            coordinator = Coordinator(
                fast_config(hub.url, auth_token=token, reconnect_max_attempts=2)
            )
            coordinator.send_progress("wf-intruder", "act", 1.0)
            coordinator.connect()

            def twice_refused(c: Coordinator = coordinator) -> bool:
                return c.stats().connect_failures >= 2

            wait_until(twice_refused, 10, "two refusals")
            refused.append(coordinator.stats())
            coordinator.close(0.5)
        assert [(s.connects, s.registered) for s in refused] == [(0, False), (0, False)]

        trusted = Coordinator(fast_config(hub.url, auth_token=RIGHT, service_name="trusted"))
        trusted.connect()
        assert trusted.wait_registered(10)
        trusted.send_progress("wf-trusted", "act", 42.0)
        hub.wait_for(lambda h: "wf-trusted" in h.hub.workflows, 10)
        trusted.close(2.0)
        # Only the right token ever got a connection; nothing of the others arrived.
        names = [c.header_service_name for c in hub.connections.values()]
        assert names == ["handshake-probe", "trusted"]  # the right-token probe, then trusted
        assert "wf-intruder" not in hub.workflows
    assert any("401" in r.getMessage() for r in caplog.records)  # the refusal is logged...
    assert any("bad or missing token" in r.getMessage() for r in caplog.records)
    assert any(r.name.startswith("when_coordinator.hub.websockets") for r in caplog.records)
    assert_not_logged(caplog)  # ...and no token, though every header was logged at DEBUG


CLIENT_SCRIPT = textwrap.dedent(
    """
    import logging, sys, threading
    logging.basicConfig(level=logging.DEBUG, stream=sys.stderr)
    from when_coordinator import Config, Coordinator

    coordinator = Coordinator(Config.from_env(reconnect_max_attempts=2))
    coordinator.connect()
    pause = threading.Event()
    for _ in range(1000):  # at most 10 s
        stats = coordinator.stats()
        if stats.registered or stats.connect_failures >= 2:
            break
        pause.wait(0.01)
    print("registered" if coordinator.is_registered else "refused", flush=True)
    coordinator.close(2.0)
    """
)


def run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=60, env=env, check=False)


def test_no_process_prints_a_token_neither_the_hub_nor_clients_nor_the_cli(
    tmp_path: Path,
) -> None:
    base = {k: v for k, v in os.environ.items() if not k.startswith("WHEN_")}
    script = tmp_path / "client.py"
    script.write_text(CLIENT_SCRIPT)
    with HubProcess(tmp_path, token=RIGHT, log_level="debug") as hub:
        env = {**base, "WHEN_URL": hub.url, "WHEN_SERVICE_NAME": "cli-probe"}
        wrong = run([sys.executable, str(script)], {**env, "WHEN_AUTH_TOKEN": WRONG})
        missing = run([sys.executable, str(script)], env)
        right = run([sys.executable, str(script)], {**env, "WHEN_AUTH_TOKEN": RIGHT})
        command = [sys.executable, "-m", "when_coordinator.cli"]
        cli_wrong = [
            run([*command, *args, "--hub", hub.http_url, "--token", WRONG], base)
            for args in (["workflows"], ["watch", "--once"], ["pause", "wf-1"])
        ]
        cli_right = run([*command, "workflows", "--hub", hub.http_url, "--token", RIGHT], base)
        hub.stop()
        hub_log = hub.stderr_text()

    assert (wrong.returncode, wrong.stdout.strip()) == (0, "refused"), wrong.stderr
    assert (missing.returncode, missing.stdout.strip()) == (0, "refused"), missing.stderr
    assert (right.returncode, right.stdout.strip()) == (0, "registered"), right.stderr
    assert "401" in wrong.stderr  # the client says why it failed...
    assert "Authorization" in right.stderr  # ...and at DEBUG it logged its headers
    for result in cli_wrong:
        assert result.returncode == 1
        assert "needs a valid token" in result.stderr
    assert cli_right.returncode == 0, cli_right.stderr
    assert "bad or missing token" in hub_log
    assert "Authorization: <redacted>" in hub_log  # the hub logged every header at DEBUG
    for name, text in [
        ("the wrong-token client", wrong.stdout + wrong.stderr),
        ("the token-less client", missing.stdout + missing.stderr),
        ("the right-token client", right.stdout + right.stderr),
        ("the hub", hub_log),
        ("the CLI", "".join(r.stdout + r.stderr for r in [*cli_wrong, cli_right])),
    ]:
        assert_no_token(text, name)
