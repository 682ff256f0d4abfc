"""Reliability against floods and oversized frames: an offending client in its own process hits
the real hub while a well-behaved ``Coordinator`` works at the same hub. The offender is
refused with a reason (drop counters, close code and reason); the other keeps working, during
the attack and after it.

tests/hub/test_hub_protection.py covers each refusal alone (and the other client after it).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from tests.support.faults import soak
from tests.support.scripted_server import fast_config
from when_coordinator import Coordinator
from when_coordinator.hub import Hub, ThreadedHub
from when_coordinator.hub.testing import RawService, frame

OFFENDER = textwrap.dedent(
    """
    import json, sys, time
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect

    url, mode, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
    register = json.dumps({"id": "r", "type": "register", "payload": {
        "service_name": "offender", "service_id": "offender", "protocol_version": "1.0"}})
    def progress(i, pad=0):
        return json.dumps({"id": f"f-{i}", "type": "progress", "workflow_id": "wf-flood",
            "payload": {"workflow_id": "wf-flood", "percent": i % 100, "message": "x" * pad}})
    deadline = time.monotonic() + seconds
    sent, closes, i = 0, [], 0
    while time.monotonic() < deadline and len(closes) < 50:
        with connect(url, additional_headers={"X-Service-Name": "offender"},
                     max_size=None, compression=None, proxy=None, close_timeout=2) as ws:
            ws.send(register)
            try:
                if mode == "oversized":
                    ws.send(progress(i, pad=200_000))
                    i += 1
                    sent += 1
                    ws.recv(timeout=5)  # registered, then the close
                    ws.recv(timeout=5)
                else:
                    while time.monotonic() < deadline:
                        ws.send(progress(i))
                        i += 1
                        sent += 1
            except ConnectionClosed as exc:
                rcvd = exc.rcvd
                closes.append([rcvd.code, rcvd.reason] if rcvd else [None, ""])
            except TimeoutError:
                closes.append(["timeout", ""])
    print(json.dumps({"sent": sent, "closes": closes}), flush=True)
    """
)


def start_offender(tmp_path: Path, url: str, mode: str, seconds: float) -> subprocess.Popen[str]:
    script = tmp_path / "offender.py"
    script.write_text(OFFENDER)
    return subprocess.Popen(
        [sys.executable, str(script), url, mode, str(seconds)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(process: subprocess.Popen[str]) -> dict[str, Any]:
    try:
        out, err = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 0, err
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


def offender_connections(hub: ThreadedHub) -> list[Any]:
    return [c for c in hub.connections.values() if c.header_service_name == "offender"]


def work_while_attacked(
    hub: ThreadedHub, coordinator: Coordinator, prefix: str, steps: int
) -> list[float]:
    """Walk workflows through their phases; each transition's delay until the hub applied it."""
    phases = coordinator.phases
    delays = []
    for n in range(steps):
        wf = f"{prefix}-{n // 5}"
        if n % 5 == 0:
            phases.register_workflow(wf)
        target = ["pre-flight", "planning", "execution", "completing", "completed"][n % 5]
        started = time.monotonic()
        if target == "completing":
            phases.transition_to(wf, "completing", "done")
        else:
            phases.transition_to(wf, target, f"step {n}")

        def applied(h: ThreadedHub, wf: str = wf, target: str = target) -> bool:
            known = h.hub.workflows
            return wf in known and known[wf].phase.value == target

        hub.wait_for(applied, 10)
        delays.append(time.monotonic() - started)
    return delays


@pytest.mark.parametrize("round_", soak(5))
def test_a_flood_is_throttled_and_counted_while_another_client_keeps_working(
    tmp_path: Path,
    round_: int,
) -> None:
    with ThreadedHub(Hub(port=0, rate_limit=2_000, rate_burst=500, flood_close_after=None)) as hub:
        coordinator = Coordinator(fast_config(hub.url, service_name="calm"))
        coordinator.connect()
        assert coordinator.wait_registered(10)
        offender = start_offender(tmp_path, hub.url, "flood", 4.0)
        try:
            hub.wait_for(lambda h: any(c.throttled > 0 for c in offender_connections(h)), 15)
            throttled_before = sum(c.throttled for c in offender_connections(hub))
            delays = work_while_attacked(hub, coordinator, "wf-calm", 25)
            during = offender_connections(hub)
            assert sum(c.throttled for c in during) > throttled_before  # still flooding
            assert any(c.is_open for c in during)
        finally:
            result = finish(offender)
        delays += work_while_attacked(hub, coordinator, "wf-after", 5)
        calm = hub.connections[hub.services[coordinator.service_id].connection_id]
        flood = offender_connections(hub)
        coordinator.close(2.0)

    assert max(delays) < 1.0, f"a transition took {max(delays):.2f} s to apply"
    assert (calm.throttled, calm.invalid_frames, calm.is_open) == (0, 0, True)
    # The offender's every frame is accounted for: applied, or dropped and counted.
    assert sum(c.messages + c.throttled for c in flood) == result["sent"] + len(flood)
    assert sum(c.throttled for c in flood) > result["sent"] // 2


@pytest.mark.parametrize("round_", soak(5))
def test_oversized_frames_and_a_sustained_flood_are_refused_with_a_reason(
    tmp_path: Path,
    round_: int,
) -> None:
    settings: dict[str, Any] = {
        "max_frame_bytes": 64 * 1024,
        "rate_limit": 1_000,
        "rate_burst": 200,
        "flood_close_after": 2_000,
    }
    with ThreadedHub(Hub(port=0, **settings)) as hub:
        coordinator = Coordinator(fast_config(hub.url, service_name="calm"))
        coordinator.connect()
        assert coordinator.wait_registered(10)
        oversized = start_offender(tmp_path, hub.url, "oversized", 2.0)
        flood = start_offender(tmp_path, hub.url, "flood", 2.0)
        try:
            delays = work_while_attacked(hub, coordinator, "wf-calm", 25)
        finally:
            big, fast = finish(oversized), finish(flood)
        delays += work_while_attacked(hub, coordinator, "wf-after", 5)
        calm = hub.connections[hub.services[coordinator.service_id].connection_id]
        refused = offender_connections(hub)
        assert "wf-flood" not in hub.workflows or hub.workflows["wf-flood"].progress < 100
        coordinator.close(2.0)

    assert max(delays) < 1.0, f"a transition took {max(delays):.2f} s to apply"
    assert (calm.throttled, calm.invalid_frames, calm.is_open) == (0, 0, True)
    assert big["closes"], "no oversized frame was sent"
    for code, reason in big["closes"]:
        assert code == 1009
        assert "exceeds limit" in reason
    assert fast["closes"], "the flood was never closed"
    for code, reason in fast["closes"]:
        assert (code, reason) == (1008, "message rate limit exceeded")
    codes = {c.close_code for c in refused if not c.is_open}
    assert {1008, 1009} <= codes <= {1000, 1008, 1009}  # 1000: its own goodbye at the end


async def test_a_flood_of_new_workflows_evicts_the_offenders_own_not_anothers_running_ones() -> (
    None
):
    """Past ``max_workflows`` the hub forgets workflows; a service that floods it with new
    workflow ids must push out its own, not the running workflows of another service."""

    async with Hub(max_workflows=50) as hub:
        calm = await RawService.connect(hub.url, service_name="calm")
        await calm.register("calm", service_id="calm")
        running = [f"wf-calm-{i}" for i in range(5)]
        for wf in running:
            change = {"workflow_id": wf, "from": "planning", "to": "execution"}
            await calm.send(frame("phase_changed", wf, change))
        await hub.wait_for(lambda h: all(wf in h.workflows for wf in running))
        offender = await RawService.connect(hub.url, service_name="offender")
        await offender.register("offender", service_id="offender")
        for i in range(500):
            wf = f"wf-flood-{i}"
            await offender.send(frame("progress", wf, {"workflow_id": wf, "percent": 1}))
        await hub.wait_for(lambda h: "wf-flood-499" in h.workflows)
        assert len(hub.workflows) == 50
        assert hub.state.workflows_evicted == 455
        assert all(hub.workflows[wf].phase.value == "execution" for wf in running)
        flood = [wf for wf in hub.workflows if wf.startswith("wf-flood-")]
        assert flood == [f"wf-flood-{i}" for i in range(455, 500)]  # its newest
        await calm.close()
        await offender.close()
