"""The reference hub under load: 100 services on loopback sending progress and logs.

The server under test runs in its own process, so that it does not share a GIL with the load
generator: first a bare websockets server that only counts frames (the baseline: the cost of
receiving), then the hub (receiving, decoding, validating, applying to its state). Both get the
same pre-encoded frames from the same 100 clients, as fast as they can send; each reports the
time from its first frame to its last.

Command latency is measured in a second hub run under a steady load the hub can sustain
(every client sends a frame every ``PACE`` seconds): the hub pauses every workflow once and the
clients answer like a service would (``phase_changed`` execution -> pausing); the time from
sending ``pause`` to applying that answer is the latency. (Under the unpaced burst it would
only measure how long the answer queues behind frames already sent on the same connection.)
"""

from __future__ import annotations

import asyncio
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from .harness import Figure

CLIENTS = 100
FRAMES_PER_CLIENT = 400
MAX_RATIO = 4.0
"""The hub may cost at most this many times what merely receiving the frames costs."""
MAX_P99_MS = 50.0
PACE = 0.01
"""Seconds between two frames of one client in the latency run (100 clients: 10k frames/s)."""
ROOT = Path(__file__).resolve().parents[1]


def _frames(client: int) -> list[str]:
    """One client's load: progress and single logs, alternating, as the reference sends them."""
    from when_coordinator.hub.testing import frame  # noqa: PLC0415

    wf = f"wf-bench-{client}"
    out = []
    for i in range(FRAMES_PER_CLIENT // 2):
        progress = {
            "workflow_id": wf,
            "percent": i * 100 / (FRAMES_PER_CLIENT // 2),
            "action_id": "act-load",
            "stage": "load",
            "message": f"batch {i}",
            "current_item": i,
            "total_items": FRAMES_PER_CLIENT // 2,
        }
        out.append(json.dumps(frame("progress", wf, progress)))
        entry = {
            "timestamp": "2026-11-26T22:42:03.750591713Z",
            "level": "info",
            "message": f"loaded batch {i}",
            "workflow_id": wf,
            "fields": {"rows": i * 100, "table": "orders"},
        }
        out.append(json.dumps(frame("log", payload=entry)))
    return out


class _Start:
    """Holds the load back until every client has connected and announced its workflow."""

    def __init__(self, clients: int) -> None:
        self.waiting = clients
        self.go = asyncio.Event()

    def arrived(self) -> None:
        self.waiting -= 1
        if self.waiting == 0:
            self.go.set()


async def _client(
    url: str, index: int, frames: list[str], start: _Start, pace: float | None
) -> None:
    from websockets.asyncio.client import connect  # noqa: PLC0415

    from when_coordinator.hub.testing import frame  # noqa: PLC0415

    wf = f"wf-bench-{index}"
    async with connect(url, compression=None, proxy=None, max_queue=None) as ws:
        register = {"service_name": f"bench-{index}", "service_id": f"bench-{index}"}
        await ws.send(json.dumps(frame("register", payload={**register, "capabilities": None})))
        begin = {"workflow_id": wf, "from": "planning", "to": "execution", "reason": "run"}
        await ws.send(json.dumps(frame("phase_changed", wf, begin)))

        async def answer() -> None:
            async for data in ws:
                message = json.loads(data)
                if message.get("type") == "pause":
                    change = {"workflow_id": wf, "from": "execution", "to": "pausing"}
                    await ws.send(json.dumps(frame("phase_changed", wf, change)))

        reader = asyncio.ensure_future(answer())
        start.arrived()
        await start.go.wait()
        if pace is None:
            for data in frames:
                await ws.send(data)
        else:
            while not reader.done():
                for data in frames:
                    await ws.send(data)
                    await asyncio.sleep(pace)
        await reader  # keep answering pauses until the run is over


async def _load(
    url: str, frames: list[list[str]], done: asyncio.Future[Any], pace: float | None
) -> None:
    start = _Start(len(frames))
    tasks = [asyncio.ensure_future(_client(url, i, f, start, pace)) for i, f in enumerate(frames)]
    await done
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def _measure(kind: str, frames: list[list[str]], pace: float | None = None) -> dict[str, Any]:
    """Start the server process, drive it with the clients, return what it reports."""
    expected = sum(len(f) for f in frames)
    server = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.bench_hub", kind, str(expected)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        url = server.stdout.readline().strip()
        if not url.startswith("ws://"):
            raise RuntimeError(f"the {kind} server did not start: {url!r}")

        async def drive() -> dict[str, Any]:
            loop = asyncio.get_running_loop()
            done: asyncio.Future[Any] = loop.create_future()
            assert server.stdout is not None
            reading = loop.run_in_executor(None, server.stdout.readline)
            reading.add_done_callback(lambda f: done.set_result(f.result()))
            await asyncio.wait_for(_load(url, frames, done, pace), 120)
            return dict(json.loads(done.result()))

        return asyncio.run(drive())
    finally:
        server.kill()
        server.wait(10)


def run() -> list[Figure]:
    frames = [_frames(i) for i in range(CLIENTS)]
    total = sum(len(f) for f in frames)
    bare = _measure("bare", frames)
    hub = _measure("hub", frames)
    paced = _measure("latency", frames, PACE)
    ours = hub["seconds"] / total * 1e6
    baseline = bare["seconds"] / total * 1e6
    latencies = sorted(paced["latencies_ms"])
    p50 = statistics.median(latencies)
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
    return [
        Figure.versus(
            f"hub absorbs {CLIENTS} clients' progress+log",
            ours,
            baseline,
            "us/msg",
            max_ratio=MAX_RATIO,
            what="bare websockets server",
        ),
        Figure.info("hub messages/s (100 clients)", total / hub["seconds"], "msg/s"),
        Figure.info("bare websockets messages/s", total / bare["seconds"], "msg/s"),
        Figure(
            "hub pause latency p50 under load",
            p50,
            None,
            "ms",
            None,
            "-",
            True,
        ),
        Figure(
            "hub pause latency p99 under load",
            p99,
            None,
            "ms",
            None,
            f"<= {MAX_P99_MS:g} ms",
            p99 <= MAX_P99_MS,
        ),
        Figure.info("hub load while pausing (paced)", paced["load_rate"], "msg/s"),
    ]


# --------------------------------------------------------------------------- server processes


async def _serve_bare(expected: int) -> dict[str, Any]:
    from websockets.asyncio.server import ServerConnection, serve  # noqa: PLC0415

    count = 0
    first = 0.0
    finished: asyncio.Future[float] = asyncio.get_running_loop().create_future()

    async def handler(ws: ServerConnection) -> None:
        nonlocal count, first
        async for _ in ws:
            if count == 2 * CLIENTS and not first:  # register + phase of every client seen
                first = time.perf_counter()
            count += 1
            if count == expected + 2 * CLIENTS and not finished.done():
                finished.set_result(time.perf_counter())

    async with serve(handler, "127.0.0.1", 0, compression=None, max_size=1 << 20) as server:
        port = server.sockets[0].getsockname()[1]
        print(f"ws://127.0.0.1:{port}/v1/coordination", flush=True)
        end = await finished
    return {"seconds": end - first}


async def _serve_hub(expected: int) -> dict[str, Any]:
    from when_coordinator.hub import Hub  # noqa: PLC0415

    async with Hub() as hub:
        print(hub.url, flush=True)
        state = hub.state

        def absorbed(h: Hub) -> int:
            """Load frames applied so far (not the registers and first phases)."""
            return sum(c.messages for c in state.connections.values()) - 2 * CLIENTS

        await hub.wait_for(lambda h: len(h.workflows) == CLIENTS, timeout=60)
        await hub.wait_for(lambda h: absorbed(h) > 0, timeout=60)
        first = time.perf_counter()
        # One predicate over 100 connections per frame would distort the figure: poll.
        while absorbed(hub) < expected:  # noqa: ASYNC110 - cheaper than a per-frame predicate
            await asyncio.sleep(0.002)
        end = time.perf_counter()
    return {"seconds": end - first}


async def _serve_latency() -> dict[str, Any]:
    from when_coordinator.hub import Hub  # noqa: PLC0415
    from when_coordinator.protocol import Phase  # noqa: PLC0415

    async with Hub() as hub:
        print(hub.url, flush=True)
        connections = hub.state.connections

        def frames_in() -> int:
            return sum(c.messages for c in connections.values())

        await hub.wait_for(lambda h: len(h.workflows) == CLIENTS, timeout=60)
        await hub.wait_for(lambda h: frames_in() > 4 * CLIENTS, timeout=60)  # load under way
        latencies = []
        began, before = time.perf_counter(), frames_in()
        for index in range(CLIENTS):
            wf = f"wf-bench-{index}"

            def pausing(h: Hub, wf: str = wf) -> bool:
                return h.workflows[wf].phase is Phase.PAUSING

            sent = time.perf_counter()
            await hub.pause(wf, "bench")
            await hub.wait_for(pausing, 30)
            latencies.append((time.perf_counter() - sent) * 1000)
        rate = (frames_in() - before) / (time.perf_counter() - began)
    return {"latencies_ms": latencies, "load_rate": rate}


def _serve(kind: str, expected: int) -> None:
    if kind == "latency":
        result = asyncio.run(_serve_latency())
    else:
        result = asyncio.run(_serve_hub(expected) if kind == "hub" else _serve_bare(expected))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    _serve(sys.argv[1], int(sys.argv[2]))
