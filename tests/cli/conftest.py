"""The CLI layer's shared parts: the ``when-coordinator`` command in a subprocess, a fresh hub per
test, and a raw service with two workflows on it."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
from websockets.sync.client import ClientConnection, connect

from when_coordinator.hub import Hub, ThreadedHub
from when_coordinator.hub.testing import frame

COMMAND = [sys.executable, "-m", "when_coordinator.cli"]


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without the CLI's own variables (they would steer the command), plus
    ``extra``."""
    env = {k: v for k, v in os.environ.items() if k not in ("WHEN_HUB_URL", "WHEN_AUTH_TOKEN")}
    env.update(extra)
    return env


def run(
    args: Sequence[str], *, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*COMMAND, *args],
        capture_output=True,
        text=True,
        timeout=30,
        env=env if env is not None else clean_env(),
        check=False,
    )


def start(args: Sequence[str], *, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*COMMAND, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env if env is not None else clean_env(),
    )


def read_until(process: subprocess.Popen[str], pattern: str) -> list[str]:
    """Lines of the process's output up to the first matching one (pytest-timeout guards)."""
    assert process.stdout is not None
    lines = []
    for line in process.stdout:
        lines.append(line.rstrip("\n"))
        if re.search(pattern, line):
            return lines
    raise AssertionError(f"output ended without {pattern!r}: {lines}")


def receive(ws: ClientConnection, kind: str) -> dict[str, Any]:
    while True:
        message: dict[str, Any] = json.loads(ws.recv(timeout=10))
        if message["type"] == kind:
            return message


def send(ws: ClientConnection, kind: str, workflow_id: str = "", **payload: Any) -> None:
    if workflow_id:
        payload.setdefault("workflow_id", workflow_id)
    ws.send(json.dumps(frame(kind, workflow_id, payload)))


@pytest.fixture
def hub() -> Iterator[ThreadedHub]:
    """A fresh hub per test (the commands list everything a hub has)."""
    with ThreadedHub(Hub(port=0)) as running:
        yield running


@pytest.fixture
def service(hub: ThreadedHub) -> Iterator[ClientConnection]:
    """A raw service with wf-1 (executing, 50 %) and its child wf-2."""
    with connect(hub.url, additional_headers={"X-Service-Name": "etl"}, proxy=None) as ws:
        send(ws, "register", service_name="etl", service_id="etl-1", capabilities=None)
        receive(ws, "registered")
        send(ws, "workflow_created", "wf-1", action_type="ETL")
        send(ws, "phase_changed", "wf-1", **{"from": "planning", "to": "execution"})
        send(ws, "progress", "wf-1", percent=50, stage="transform")
        send(ws, "workflow_created", "wf-2", parent_workflow_id="wf-1")
        hub.wait_for(lambda h: "wf-2" in h.workflows)
        yield ws
