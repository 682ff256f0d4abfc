"""Bad clients: invalid, binary, oversized frames and floods affect only their own connection."""

from __future__ import annotations

import json

from tests.hub.conftest import registered
from when_coordinator.hub import Hub
from when_coordinator.hub.testing import RawService, frame


async def still_works(hub: Hub, client: RawService, workflow_id: str) -> None:
    """The connection (and the hub) still accept and apply a valid message."""
    await client.send(frame("progress", workflow_id, {"workflow_id": workflow_id, "percent": 7}))
    await hub.wait_for(lambda h: h.workflows[workflow_id].progress == 7)


async def test_invalid_frames_are_dropped_counted_with_reasons_and_the_connection_stays_up() -> (
    None
):
    async with Hub() as hub:
        bad = await registered(hub, "bad")
        good = await registered(hub, "good")
        junk: list[str | bytes] = [
            "this is not json",
            "[1, 2, 3]",
            json.dumps({"type": "progress"}),  # no id
            json.dumps(frame("progress", "wf-x", {"percent": "half"})),
            json.dumps(frame("progress", "", {"percent": 3})),  # no workflow at all
            "[" * 100_000,  # nested too deeply for the parser
            b"\x00\x01binary",
        ]
        for item in junk:
            await bad.send(item)
        conn_id = hub.services["bad"].connection_id
        await hub.wait_for(lambda h: h.connections[conn_id].invalid_frames == len(junk))
        reasons = hub.connections[conn_id].invalid_reasons
        assert "invalid JSON" in reasons[0]
        assert "must be a JSON object" in reasons[1]
        assert "'id'" in reasons[2]
        assert "percent" in reasons[3]
        assert "without a workflow_id" in reasons[4]
        assert "binary frame" in reasons[6]
        assert "wf-x" not in hub.workflows
        await still_works(hub, bad, "wf-bad")
        await still_works(hub, good, "wf-good")
        good_conn = hub.connections[hub.services["good"].connection_id]
        assert (good_conn.invalid_frames, good_conn.throttled) == (0, 0)
        # Dropped frames are not in the record of received messages.
        assert [str(r.message.type) for r in hub.received if r.service_id == "bad"] == [
            "register",
            "progress",
        ]
        await bad.close()
        await good.close()


async def test_unknown_message_types_are_ignored_but_recorded() -> None:
    async with Hub() as hub:
        client = await registered(hub, "curious")
        await client.send(frame("no_such_type", "wf-1", {"x": 1}))
        await hub.wait_for(lambda h: h.received[-1].message.type == "no_such_type")
        assert hub.connections[hub.services["curious"].connection_id].ignored == 1
        assert "wf-1" not in hub.workflows
        await client.close()


async def test_an_oversized_frame_closes_only_that_connection_with_1009() -> None:
    async with Hub(max_frame_bytes=2_000) as hub:
        big = await registered(hub, "big")
        good = await registered(hub, "good")
        huge = frame("progress", "wf-big", {"workflow_id": "wf-big", "percent": 1})
        huge["payload"]["message"] = "x" * 5_000
        await big.send(huge)
        code, reason = await big.closed()
        assert code == 1009
        assert "exceeds limit" in reason
        await hub.wait_for(lambda h: not h.services["big"].connected)
        assert hub.services["big"].close_code == 1009
        assert "wf-big" not in hub.workflows
        await still_works(hub, good, "wf-good")
        await good.close()


async def test_a_flood_is_throttled_and_counted_without_disturbing_others() -> None:
    async with Hub(rate_limit=100, rate_burst=20, flood_close_after=None) as hub:
        flood = await registered(hub, "flood")
        calm = await registered(hub, "calm")
        total = 300
        for i in range(total):
            await flood.send(frame("progress", "wf-f", {"workflow_id": "wf-f", "percent": i % 100}))
        conn_id = hub.services["flood"].connection_id

        def accounted(h: Hub) -> bool:
            conn = h.connections[conn_id]
            # register (1) + accepted progress + throttled progress = everything sent
            return conn.messages + conn.throttled == total + 1

        await hub.wait_for(accounted)
        conn = hub.connections[conn_id]
        assert conn.throttled > 0
        assert conn.is_open
        for i in range(10):
            await calm.send(frame("progress", "wf-c", {"workflow_id": "wf-c", "percent": i}))
        await hub.wait_for(lambda h: h.workflows["wf-c"].progress == 9)
        calm_conn = hub.connections[hub.services["calm"].connection_id]
        assert calm_conn.throttled == 0
        assert calm_conn.messages == 11
        await flood.close()
        await calm.close()


async def test_a_sustained_flood_is_closed_with_1008() -> None:
    async with Hub(rate_limit=50, rate_burst=10, flood_close_after=100) as hub:
        flood = await registered(hub, "flood")
        calm = await registered(hub, "calm")
        flood_frame = json.dumps(frame("progress", "wf-f", {"workflow_id": "wf-f", "percent": 1}))
        for _ in range(1_000):
            try:
                await flood.send(flood_frame)
            except Exception:
                break  # the hub hung up on us, as it should
        code, reason = await flood.closed()
        assert code == 1008
        assert reason == "message rate limit exceeded"
        await hub.wait_for(lambda h: h.services["flood"].close_code == 1008)
        await still_works(hub, calm, "wf-c")
        await calm.close()
