"""``Config.joined_frames``: a write's messages in one text frame, for a peer that accepts the
``when.joined-frames`` subprotocol (the worker's relay); one message a frame for any other."""

from __future__ import annotations

import json

import pytest

from tests.support.scripted_server import ScriptedServer, fast_config
from when_coordinator import Coordinator
from when_coordinator.client.connection import JOINED_FRAMES, joined

WAIT = 10.0
ERRORS = 60


def test_joined_keeps_order_and_each_frame_within_the_limit() -> None:
    frames = [json.dumps({"n": i, "text": "é" * (i % 7) + "x" * (i * 3)}) for i in range(80)]
    limit = 600
    out = joined(frames, limit)
    assert "\n".join(out).split("\n") == frames
    assert 1 < len(out) < len(frames)
    assert all(len(frame.encode()) <= limit for frame in out)  # bytes: "é" is two
    big = "y" * (limit + 1)  # over the limit alone: stays one frame (checked by the caller)
    assert joined(["a", big, "b"], limit) == ["a", big, "b"]
    assert joined(["one"], limit) == ["one"]
    assert joined([], limit) == []


def _send_errors(server: ScriptedServer, **config: object) -> tuple[Coordinator, list[str]]:
    """Queue ``ERRORS`` errors within one write delay, deliver them, and return what the server
    parsed out of the first connection's frames (in order)."""
    coordinator = Coordinator(fast_config(server.url, write_delay=0.05, **config))
    coordinator.connect()
    assert coordinator.wait_registered(WAIT)
    for i in range(ERRORS):
        coordinator.send_error("wf-joined", "", f"error {i}", True)
    assert coordinator.flush(WAIT)
    server.barrier()
    return coordinator, [f.payload.error for f in server.of_type("error")]


def test_a_peer_that_accepts_gets_each_write_in_few_frames_within_the_limit() -> None:
    with ScriptedServer(subprotocols=[JOINED_FRAMES]) as server:
        coordinator, messages = _send_errors(server, joined_frames=True, max_frame_bytes=4096)
        coordinator.close()
        assert messages == [f"error {i}" for i in range(ERRORS)]
        raw = server.connections[0].raw
        assert server.connections[0].ws.subprotocol == JOINED_FRAMES
        assert len(raw) < ERRORS // 4, f"{len(raw)} frames for {ERRORS} errors and a register"
        assert any("\n" in frame for frame in raw)
        assert all(len(frame.encode()) <= 4096 for frame in raw)


@pytest.mark.parametrize("offered", [True, False])
def test_a_peer_that_does_not_accept_gets_one_message_a_frame(offered: bool) -> None:
    """A hub accepts no subprotocol: the offer changes nothing it sees but the header."""
    with ScriptedServer() as server:
        coordinator, messages = _send_errors(server, joined_frames=offered)
        coordinator.close()
        assert messages == [f"error {i}" for i in range(ERRORS)]
        connection = server.connections[0]
        assert connection.ws.subprotocol is None
        assert all("\n" not in frame for frame in connection.raw)
        assert len(connection.raw) >= ERRORS
        offer = connection.headers.get("Sec-WebSocket-Protocol")
        assert offer == (JOINED_FRAMES if offered else None)
