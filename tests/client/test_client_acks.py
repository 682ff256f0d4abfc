"""When the client asks the hub to acknowledge what it sent (a ping after it): once idle for
``ACK_QUIET``, at once when ``flush`` waits or ``ACK_IDLE_EVERY`` messages are unconfirmed."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.scripted_server import ScriptedServer, fast_config, wait_until
from when_coordinator import Coordinator
from when_coordinator.client import session


@pytest.fixture
def coordinator() -> Iterator[Coordinator]:
    with ScriptedServer() as server:
        coordinator = Coordinator(fast_config(server.url))
        coordinator.connect()
        assert coordinator.wait_registered(10)
        try:
            yield coordinator
        finally:
            coordinator.close()


def delivered(coordinator: Coordinator) -> int:
    return coordinator.stats().delivered


def test_an_idle_client_confirms_what_it_sent_without_a_flush(coordinator: Coordinator) -> None:
    for n in range(3):
        assert coordinator.log_info(f"record {n}")
    wait_until(lambda: delivered(coordinator) == 3, what="the quiet acknowledgement")


def test_a_flush_does_not_wait_for_a_quiet_moment(
    coordinator: Coordinator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(session, "ACK_QUIET", 3600.0)
    for n in range(3):
        assert coordinator.log_info(f"record {n}")
    assert coordinator.flush(10)
    assert delivered(coordinator) == 3


def test_enough_unconfirmed_messages_are_confirmed_at_once(
    coordinator: Coordinator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a drop would make the client send again stays bounded while the quiet moment
    never comes."""
    monkeypatch.setattr(session, "ACK_QUIET", 3600.0)
    count = session.ACK_IDLE_EVERY + 8
    for n in range(count):
        assert coordinator.log_info(f"record {n}")
    wait_until(
        lambda: delivered(coordinator) >= session.ACK_IDLE_EVERY,
        what=f"an acknowledgement of {session.ACK_IDLE_EVERY} messages in flight",
    )
