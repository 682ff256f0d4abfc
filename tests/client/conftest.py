"""The client layer's shared fixtures: a scripted hub on loopback and a coordinator registered
to it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.scripted_server import ScriptedServer, fast_config
from when_coordinator import Coordinator


@pytest.fixture
def server() -> Iterator[ScriptedServer]:
    """A scripted hub on loopback: it registers every client and records their frames."""
    with ScriptedServer() as scripted:
        yield scripted


@pytest.fixture
def client(server: ScriptedServer) -> Iterator[Coordinator]:
    """A coordinator connected and registered to ``server`` (closed at teardown)."""
    coordinator = Coordinator(fast_config(server.url))
    coordinator.connect()
    assert coordinator.wait_registered(5)
    yield coordinator
    coordinator.close(2.0)
