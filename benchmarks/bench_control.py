"""Control latency and reconnect time, with the reference hub in its own process.

4. Control latency: the hub sends ``pause`` for a workflow in ``execution`` and times until it
   has applied the service's ``phase_changed`` execution -> pausing (``hub.pause`` then
   ``hub.wait_for``). The service is a ``Coordinator`` in this process; the pause is handled on
   its thread (decode, phase manager, enqueue, encode, write). Baseline, measured in the same
   run and alternating with it: a raw ``websockets`` server in the hub's process sends the
   very same pause frame to a raw ``websockets`` client in this process, which echoes it.
   Target: p99 <= 5x the raw p99, and p99 under 2 ms.
6. Reconnect: the hub closes (a graceful restart: close 1001 to every client) and starts
   again on the same port at once; the time from the drop to the hub having the service
   registered again, hub side, median of 10 restarts. The client waits its backoff (set to
   0.2 s here; jitter only shortens it) before dialling, so the target is 0.2 s + 250 ms.
   The hub is listening again within a few milliseconds of the drop, so measured from the
   drop or from the hub being up differs by those milliseconds (both shown).

The hub process is ``python -m benchmarks.bench_control hub``; it answers JSON commands.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

from when_coordinator import Config, Coordinator, Phase

from .harness import Child, Figure, percentile, say, serve_commands

WORKFLOWS_PER_ROUND = 200
ROUNDS = 5
MAX_P99_RATIO = 5.0
MAX_P99_MS = 2.0
RESTARTS = 10
BACKOFF = 0.2
RECONNECT_ALLOWANCE = 0.25
TIMEOUT = 30.0


# ---------------------------------------------------------------------- the hub process


class _HubSide:
    """The hub under test plus a raw echo-timing server, driven by the parent's commands."""

    def __init__(self) -> None:
        from websockets.asyncio.server import ServerConnection  # noqa: PLC0415

        from when_coordinator.hub import Hub  # noqa: PLC0415

        self.hub = Hub()
        self.raw_peer: ServerConnection | None = None
        self.raw_ready = asyncio.Event()

    async def raw_handler(self, ws: Any) -> None:
        self.raw_peer = ws
        self.raw_ready.set()
        await ws.wait_closed()

    async def handle(self, command: dict[str, Any]) -> dict[str, Any]:
        kind = command["cmd"]
        if kind == "wait_execution":
            count = command["count"]

            def ready(h: Any) -> bool:
                running = [w for w in h.workflows.values() if w.phase is Phase.EXECUTION]
                return bool(len(running) >= count)

            await self.hub.wait_for(ready, TIMEOUT)
            return {"ok": True}
        if kind == "pause":
            return await self.pause(command["workflows"])
        if kind == "echo":
            return await self.echo(command["frame"], command["count"])
        if kind == "restart":
            return await self.restart()
        raise ValueError(f"unknown command {kind!r}")

    async def pause(self, workflows: list[str]) -> dict[str, Any]:
        from when_coordinator.protocol import encode  # noqa: PLC0415

        latencies = []
        frame = ""
        for wf in workflows:

            def pausing(h: Any, wf: str = wf) -> bool:
                return bool(h.workflows[wf].phase is Phase.PAUSING)

            started = time.perf_counter()
            sent = await self.hub.pause(wf, "bench")
            await self.hub.wait_for(pausing, TIMEOUT)
            latencies.append(time.perf_counter() - started)
            frame = frame or encode(sent)
        return {"latencies": latencies, "frame": frame}

    async def echo(self, frame: str, count: int) -> dict[str, Any]:
        await asyncio.wait_for(self.raw_ready.wait(), TIMEOUT)
        ws = self.raw_peer
        assert ws is not None
        rtts = []
        for _ in range(count):
            started = time.perf_counter()
            await ws.send(frame)
            await asyncio.wait_for(ws.recv(), TIMEOUT)
            rtts.append(time.perf_counter() - started)
        return {"rtts": rtts}

    async def restart(self) -> dict[str, Any]:
        from when_coordinator.hub import Hub  # noqa: PLC0415

        port = self.hub.port
        dropped = time.perf_counter()
        await self.hub.close()
        self.hub = Hub(port=port)
        await self.hub.start()
        up = time.perf_counter()
        await self.hub.wait_for(lambda h: any(s.connected for s in h.services.values()), TIMEOUT)
        registered = time.perf_counter()
        return {"up": up - dropped, "registered": registered - dropped}


async def _serve_hub() -> None:
    from websockets.asyncio.server import serve  # noqa: PLC0415

    side = _HubSide()
    await side.hub.start()
    async with serve(side.raw_handler, "127.0.0.1", 0, compression=None) as raw:
        raw_port = raw.sockets[0].getsockname()[1]
        say(hub=side.hub.url, raw=f"ws://127.0.0.1:{raw_port}/")
        try:
            await serve_commands(side.handle)
        finally:
            await side.hub.close()


# ---------------------------------------------------------------------- this process


class _RawEcho:
    """A raw websockets client on its own thread that echoes every frame it gets."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.loop = asyncio.new_event_loop()
        self.connected = threading.Event()
        self.thread = threading.Thread(target=self.loop.run_until_complete, args=(self._run(),))
        self.stop: asyncio.Event | None = None
        self.thread.start()
        if not self.connected.wait(TIMEOUT):
            raise RuntimeError("the raw echo client did not connect")

    async def _run(self) -> None:
        from websockets.asyncio.client import connect  # noqa: PLC0415
        from websockets.exceptions import ConnectionClosed  # noqa: PLC0415

        self.stop = asyncio.Event()
        async with connect(self.url, compression=None, proxy=None) as ws:
            self.connected.set()

            async def echo() -> None:
                async for data in ws:
                    await ws.send(data)

            task = asyncio.ensure_future(echo())
            await self.stop.wait()
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionClosed):
                await task

    def close(self) -> None:
        if self.stop is not None:
            self.loop.call_soon_threadsafe(self.stop.set)
        self.thread.join(TIMEOUT)
        self.loop.close()


def _ms(seconds: float) -> float:
    return seconds * 1000


def _control_latency(hub: Child) -> list[Figure]:
    coordinator = Coordinator(Config(when_url=hub.hello["hub"], service_name="bench-control"))
    coordinator.connect()
    raw: _RawEcho | None = None
    try:
        if not coordinator.wait_registered(TIMEOUT):
            raise RuntimeError("the coordinator did not register with the bench hub")
        phases = coordinator.phases
        workflows = [f"wf-control-{i}" for i in range(WORKFLOWS_PER_ROUND * ROUNDS)]
        for wf in workflows:
            phases.register_workflow(wf)
            for phase in (Phase.PRE_FLIGHT, Phase.PLANNING, Phase.EXECUTION):
                phases.transition_to(wf, phase)
        if not coordinator.flush(TIMEOUT):
            raise RuntimeError("the hub did not acknowledge the workflows")
        hub.ask(cmd="wait_execution", count=len(workflows))
        raw = _RawEcho(hub.hello["raw"])
        ours: list[float] = []
        base: list[float] = []
        for round_ in range(ROUNDS):  # alternate, so drift hits both alike
            batch = workflows[round_ * WORKFLOWS_PER_ROUND : (round_ + 1) * WORKFLOWS_PER_ROUND]
            answer = hub.ask(cmd="pause", workflows=batch)
            ours += answer["latencies"]
            base += hub.ask(cmd="echo", frame=answer["frame"], count=len(batch))["rtts"]
        dropped = coordinator.stats().dropped
        if dropped:
            raise RuntimeError(f"the coordinator dropped {dropped} messages")
    finally:
        if raw is not None:
            raw.close()
        coordinator.close(5)
    p50, p99 = percentile(ours, 0.5), percentile(ours, 0.99)
    raw50, raw99 = percentile(base, 0.5), percentile(base, 0.99)
    ratio = p99 / raw99
    return [
        Figure(
            "[4] control latency p99 (pause -> pausing)",
            _ms(p99),
            _ms(raw99),
            "ms",
            ratio,
            f"<= {MAX_P99_RATIO:g}x raw echo p99, < {MAX_P99_MS:g} ms",
            ratio <= MAX_P99_RATIO and _ms(p99) < MAX_P99_MS,
        ),
        Figure.info("    control latency p50", _ms(p50), "ms", _ms(raw50)),
    ]


def _reconnect(hub: Child) -> list[Figure]:
    config = Config(
        when_url=hub.hello["hub"],
        service_name="bench-reconnect",
        reconnect_initial_delay=BACKOFF,
    )
    coordinator = Coordinator(config)
    coordinator.connect()
    try:
        if not coordinator.wait_registered(TIMEOUT):
            raise RuntimeError("the coordinator did not register with the bench hub")
        ups: list[float] = []
        registered: list[float] = []
        for _ in range(RESTARTS):
            answer = hub.ask(cmd="restart")
            ups.append(answer["up"])
            registered.append(answer["registered"])
            if not coordinator.wait_registered(TIMEOUT):
                raise RuntimeError("the coordinator did not register again")
        reconnects = coordinator.stats().reconnects
        if reconnects != RESTARTS:
            raise RuntimeError(f"{reconnects} reconnects for {RESTARTS} restarts")
    finally:
        coordinator.close(5)
    median = statistics.median(registered)
    limit = BACKOFF + RECONNECT_ALLOWANCE
    from_up = statistics.median(r - u for r, u in zip(registered, ups, strict=True))
    return [
        Figure(
            "[6] reconnect: drop -> registered again",
            _ms(median),
            _ms(BACKOFF),
            "ms",
            median / BACKOFF,
            f"<= {_ms(BACKOFF):g} ms backoff + {_ms(RECONNECT_ALLOWANCE):g} ms",
            median <= limit,
        ),
        Figure.info("    hub listening again -> registered", _ms(from_up), "ms"),
        Figure.info("    drop -> hub listening again", _ms(statistics.median(ups)), "ms"),
        Figure.info("    slowest of the restarts (drop -> registered)", _ms(max(registered)), "ms"),
    ]


def run() -> list[Figure]:
    hub = Child("bench_control", "hub", timeout=TIMEOUT * 2)
    try:
        return _control_latency(hub) + _reconnect(hub)
    finally:
        hub.close()


def _main(argv: Sequence[str]) -> None:
    if list(argv) == ["hub"]:
        asyncio.run(_serve_hub())
        return
    from .harness import format_table  # noqa: PLC0415

    print(format_table(run()))


if __name__ == "__main__":
    _main(sys.argv[1:])
