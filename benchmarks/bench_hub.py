"""The reference hub under load, in its own process, with the load generated in this one.

7. Capacity: 200 services on loopback each send 50 messages/s (progress and single logs,
   alternating, paced on a monotonic schedule, spread evenly over each 20 ms period) for a
   2 s warm-up and a 10 s window, while the hub pauses and resumes workflows 50 times a
   second and the services answer like a service would (``execution -> pausing -> paused``,
   ``paused -> resuming -> execution``). Both sides count messages every 100 ms on the
   machine's monotonic clock (shared between processes), which gives, over the window, the
   rate offered (what the services sent) beside the rate the hub applied, and the backlog
   (sent but not yet applied) at every sample. Targets: applied >= 0.97x offered, with the
   offered rate within 5 % of the nominal 10,000/s (else the generator, not the hub, fell
   behind), the backlog at most 250 ms worth of load; and command latency (``hub.pause``
   until the hub applied ``execution -> pausing``) p99 under 10 ms.

   The load generator is raw ``websockets`` clients, one asyncio task each.

Also, for insight: the hub's cost per message beside a bare websockets server that only
counts frames, when 100 clients send as fast as they can (``MAX_BURST_RATIO``: an earlier
target kept here). Both get the same pre-encoded frames; each reports the time from its first
frame to its last. And the hub's CPU per message under figure 7's paced load beside such a
server's under the same load: at this pace most frames arrive alone, and a wake-up, a read and
a parse per frame are most of what either spends.
"""

from __future__ import annotations

import asyncio
import bisect
import gc
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

from .harness import ROOT, Child, Figure, percentile, say, serve_commands

BURST_CLIENTS = 100
BURST_FRAMES = 400
MAX_BURST_RATIO = 4.0
"""The hub may cost at most this many times what merely receiving the frames costs."""

CLIENTS = 200
RATE = 50.0
"""Messages per second from each client."""
WARMUP = 2.0
WINDOW = 10.0
COMMANDS_PER_SECOND = 50.0
CAPACITY_REPEATS = 3
"""Runs of the capacity figure; each number reported is the median over the runs."""
SAMPLE_EVERY = 0.1
MIN_APPLIED_RATIO = 0.97
MIN_OFFERED_RATIO = 0.95
MAX_BACKLOG_SECONDS = 0.25
MAX_COMMAND_P99_MS = 10.0
TIMEOUT = 120.0


def _frames(client: int, count: int) -> list[str]:
    """One client's load: progress and single logs, alternating, as the reference sends them."""
    from when_coordinator.hub.testing import frame  # noqa: PLC0415

    wf = f"wf-bench-{client}"
    out = []
    for i in range(count // 2):
        progress = {
            "workflow_id": wf,
            "percent": i * 100 / (count // 2),
            "action_id": "act-load",
            "stage": "load",
            "message": f"batch {i}",
            "current_item": i,
            "total_items": count // 2,
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


def _register_frames(index: int) -> list[str]:
    """Register, then announce the client's workflow in ``execution``."""
    from when_coordinator.hub.testing import frame  # noqa: PLC0415

    wf = f"wf-bench-{index}"
    register = {"service_name": f"bench-{index}", "service_id": f"bench-{index}"}
    begin = {"workflow_id": wf, "from": "planning", "to": "execution", "reason": "run"}
    return [
        json.dumps(frame("register", payload={**register, "capabilities": None})),
        json.dumps(frame("phase_changed", wf, begin)),
    ]


# --------------------------------------------------------------------------- burst (insight)


class _Start:
    """Holds the load back until every client has connected and announced its workflow."""

    def __init__(self, clients: int) -> None:
        self.waiting = clients
        self.go = asyncio.Event()

    def arrived(self) -> None:
        self.waiting -= 1
        if self.waiting == 0:
            self.go.set()


async def _burst_client(url: str, index: int, frames: list[str], start: _Start) -> None:
    from websockets.asyncio.client import connect  # noqa: PLC0415

    async with connect(url, compression=None, proxy=None, max_queue=None) as ws:
        for data in _register_frames(index):
            await ws.send(data)
        start.arrived()
        await start.go.wait()
        for data in frames:
            await ws.send(data)
        await ws.wait_closed()  # until the run is over


async def _burst(url: str, frames: list[list[str]], done: asyncio.Future[Any]) -> None:
    start = _Start(len(frames))
    tasks = [asyncio.ensure_future(_burst_client(url, i, f, start)) for i, f in enumerate(frames)]
    await done
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def _measure_burst(kind: str, frames: list[list[str]]) -> dict[str, Any]:
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
            await asyncio.wait_for(_burst(url, frames, done), TIMEOUT)
            return dict(json.loads(done.result()))

        return asyncio.run(drive())
    finally:
        server.kill()
        server.wait(10)


def _burst_figures() -> list[Figure]:
    frames = [_frames(i, BURST_FRAMES) for i in range(BURST_CLIENTS)]
    total = sum(len(f) for f in frames)
    bare = _measure_burst("bare", frames)
    hub = _measure_burst("hub", frames)
    return [
        Figure.versus(
            f"hub absorbs a burst from {BURST_CLIENTS} clients",
            hub["seconds"] / total * 1e6,
            bare["seconds"] / total * 1e6,
            "us/msg",
            max_ratio=MAX_BURST_RATIO,
            what="bare websockets server",
        ),
        Figure.info(
            "    hub messages/s (burst)", total / hub["seconds"], "msg/s", total / bare["seconds"]
        ),
    ]


async def _serve_bare(expected: int) -> dict[str, Any]:
    from websockets.asyncio.server import ServerConnection, serve  # noqa: PLC0415

    count = 0
    first = 0.0
    finished: asyncio.Future[float] = asyncio.get_running_loop().create_future()

    async def handler(ws: ServerConnection) -> None:
        nonlocal count, first
        async for _ in ws:
            if count == 2 * BURST_CLIENTS and not first:  # register + phase of every client
                first = time.perf_counter()
            count += 1
            if count == expected + 2 * BURST_CLIENTS and not finished.done():
                finished.set_result(time.perf_counter())

    async with serve(handler, "127.0.0.1", 0, compression=None, max_size=1 << 20) as server:
        port = server.sockets[0].getsockname()[1]
        print(f"ws://127.0.0.1:{port}/v1/coordination", flush=True)
        end = await asyncio.wait_for(finished, TIMEOUT)
    return {"seconds": end - first}


async def _serve_hub(expected: int) -> dict[str, Any]:
    from when_coordinator.hub import Hub  # noqa: PLC0415

    async with Hub() as hub:
        print(hub.url, flush=True)
        state = hub.state

        def absorbed(h: Hub) -> int:
            """Load frames applied so far (not the registers and first phases)."""
            return sum(c.messages for c in state.connections.values()) - 2 * BURST_CLIENTS

        await hub.wait_for(lambda h: len(h.workflows) == BURST_CLIENTS, timeout=60)
        await hub.wait_for(lambda h: absorbed(h) > 0, timeout=60)
        first = time.perf_counter()
        # One predicate over 100 connections per frame would distort the figure: poll.
        deadline = first + TIMEOUT
        while absorbed(hub) < expected and time.perf_counter() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.002)
        end = time.perf_counter()
    return {"seconds": end - first}


# --------------------------------------------------------------------------- capacity


class _Watch:
    """What could stall a process in a time window: garbage collections and event-loop lag.

    Both processes of the capacity run report it, so that a latency spike can be told apart:
    a collection in the hub, one in the load generator, or a loop that did not get the CPU
    (lag without a collection: another process had it).
    """

    def __init__(self, begin: float, end: float) -> None:
        self.begin, self.end = begin, end
        self.pauses: list[float] = []
        self.lag = 0.0
        self.lag_cpu = 0.0
        self.cpu = 0.0
        self._started = 0.0

    def _gc(self, phase: str, info: dict[str, Any]) -> None:
        now = time.monotonic()
        if phase == "start":
            self._started = now
        elif self.begin <= now <= self.end:
            self.pauses.append(now - self._started)

    async def watch(self) -> None:
        gc.callbacks.append(self._gc)
        try:
            tick = 0.005
            cpu_begin = None
            while (now := time.monotonic()) < self.end:
                if cpu_begin is None and now >= self.begin:
                    cpu_begin = time.process_time()
                cpu = time.process_time()
                await asyncio.sleep(tick)
                late = time.monotonic() - now - tick
                if now >= self.begin and late > self.lag:
                    # The CPU time this process used over the tick and its lag: about all of
                    # it means the process was busy; little, that it waited for a CPU.
                    self.lag, self.lag_cpu = late, time.process_time() - cpu
            if cpu_begin is not None:
                self.cpu = time.process_time() - cpu_begin
        finally:
            gc.callbacks.remove(self._gc)

    def report(self) -> dict[str, float]:
        return {
            "gc_count": len(self.pauses),
            "gc_max_ms": max(self.pauses, default=0.0) * 1000,
            "gc_total_ms": sum(self.pauses) * 1000,
            "lag_max_ms": self.lag * 1000,
            "lag_cpu_ms": self.lag_cpu * 1000,
            "cpu_share": self.cpu / (self.end - self.begin),
        }


_ANSWERS = {
    "pause": (("execution", "pausing"), ("pausing", "paused")),
    "resume": (("paused", "resuming"), ("resuming", "execution")),
}


class _Load:
    """The load generator (its own process): raw websockets clients answering like services."""

    def __init__(self) -> None:
        self.count = 0
        self.sockets: list[Any] = []
        self.readers: list[asyncio.Future[None]] = []
        self.pauses: dict[str, list[tuple[float, float]]] = {}
        """Per workflow: when (monotonic) each pause arrived and its first answer was sent."""

    async def connect(self, url: str) -> None:
        from websockets.asyncio.client import connect  # noqa: PLC0415

        for index in range(CLIENTS):
            ws = await connect(url, compression=None, proxy=None, max_queue=None)
            self.sockets.append(ws)
            for data in _register_frames(index):
                await ws.send(data)
            self.count += 2  # the hub counts the register and the phase change too
            self.readers.append(asyncio.ensure_future(self.answer(ws, index)))

    async def answer(self, ws: Any, index: int) -> None:
        """Answer pause and resume like a service: two phase changes each."""
        from when_coordinator.hub.testing import frame  # noqa: PLC0415

        wf = f"wf-bench-{index}"
        async for data in ws:
            arrived = time.monotonic()
            kind = json.loads(data).get("type")
            for source, target in _ANSWERS.get(kind, ()):
                change = {"workflow_id": wf, "from": source, "to": target}
                await ws.send(json.dumps(frame("phase_changed", wf, change)))
                self.count += 1
                if kind == "pause" and source == "execution":
                    self.pauses.setdefault(wf, []).append((arrived, time.monotonic()))

    async def paced(self, frames: list[list[str]], start: float, end: float) -> None:
        """Every client sends its ``frames`` in turn at ``RATE``, the clients' slots spread
        evenly over each period: send ``n`` goes to client ``n % CLIENTS`` at
        ``start + n / (RATE * CLIENTS)``. One task paces them all (a task and a timer per
        client would cost the generator more CPU than the hub spends on the frames)."""
        step = 1.0 / (RATE * CLIENTS)
        sockets = self.sockets
        for n in range(int((end - start) / step)):
            delay = start + n * step - time.monotonic()
            if delay > 0.0005:  # frames due within half a millisecond go out together
                await asyncio.sleep(delay)
            client, k = n % CLIENTS, n // CLIENTS
            await sockets[client].send(frames[client][k % len(frames[client])])
            self.count += 1

    async def run(self, command: dict[str, Any]) -> dict[str, Any]:
        start, end = command["start"], command["end"]
        frames = [_frames(index, 100) for index in range(CLIENTS)]
        watch = _Watch(start + WARMUP, end)
        watching = asyncio.ensure_future(watch.watch())
        samples: list[tuple[float, int]] = []
        # The generator is the measuring instrument: its own collections must not hold the
        # clients' answers back (they would count as the hub's command latency).
        gc.collect()
        gc.freeze()
        gc.disable()
        try:
            sending = asyncio.ensure_future(self.paced(frames, start, end))
            while (not sending.done() or time.monotonic() < end + 1.5) and (
                time.monotonic() < end + TIMEOUT
            ):
                samples.append((time.monotonic(), self.count))
                await asyncio.sleep(SAMPLE_EVERY)
            await asyncio.wait_for(sending, TIMEOUT)
        finally:
            gc.enable()
            gc.unfreeze()
        await watching
        return {
            "samples": samples,
            "count": self.count,
            "pauses": self.pauses,
            "watch": watch.report(),
        }

    async def close(self) -> None:
        for reader in self.readers:
            reader.cancel()
        await asyncio.gather(*self.readers, return_exceptions=True)
        await asyncio.gather(*(ws.close() for ws in self.sockets), return_exceptions=True)


async def _serve_load(url: str) -> None:
    load = _Load()
    try:
        await load.connect(url)
        say(clients=len(load.sockets))
        await serve_commands(load.run)
    finally:
        await load.close()


def _at(samples: Sequence[Sequence[float]], when: float) -> float:
    """The count at ``when``, interpolated between the samples around it."""
    times = [s[0] for s in samples]
    i = bisect.bisect_left(times, when)
    if i == 0:
        return samples[0][1]
    if i == len(samples):
        return samples[-1][1]
    (t0, c0), (t1, c1) = samples[i - 1], samples[i]
    return c0 + (c1 - c0) * (when - t0) / (t1 - t0) if t1 > t0 else c1


def _capacity_run(server: str = "capacity") -> tuple[dict[str, Any], dict[str, Any], float]:
    """The capacity load against a server child (``server`` is its mode): its report, the
    load generator's and when the load started."""
    hub = Child("bench_hub", server, timeout=TIMEOUT)
    load: Child | None = None
    try:
        load = Child("bench_hub", "load", hub.hello["url"], timeout=TIMEOUT)
        start = time.monotonic() + 0.5
        end = start + WARMUP + WINDOW
        hub.send(cmd="measure", start=start, end=end, clients=CLIENTS)
        load.send(cmd="run", start=start, end=end)
        return hub.read(), load.read(), start
    finally:
        if load is not None:
            load.close()
        hub.close()


def _segments(
    issued: Sequence[Sequence[Any]],
    latencies: Sequence[float],
    pauses: dict[str, list[list[float]]],
) -> list[tuple[float, float, float, float]]:
    """Each command's latency split where its time went: ``(total, out, service, back)``,
    in ms: hub asked until the pause reached the service; the service's answer; the answer's
    way back until the hub applied it. Monotonic clocks are one clock on this machine."""
    seen: dict[str, int] = {}
    out = []
    for (wf, asked), latency in zip(issued, latencies, strict=True):
        k = seen.get(wf, 0)
        seen[wf] = k + 1
        if k >= len(pauses.get(wf, ())):
            continue  # answered after the load generator reported
        arrived, answered = pauses[wf][k]
        total = latency * 1000
        to_service, service = (arrived - asked) * 1000, (answered - arrived) * 1000
        out.append((total, to_service, service, total - to_service - service))
    return out


def _capacity_metrics() -> dict[str, float]:
    """One capacity run, reduced to the numbers the figures report."""
    report, sent, start = _capacity_run()
    applied, offered = report["samples"], sent["samples"]
    begin, end = start + WARMUP, start + WARMUP + WINDOW
    offered_rate = (_at(offered, end) - _at(offered, begin)) / WINDOW
    applied_rate = (_at(applied, end) - _at(applied, begin)) / WINDOW
    backlog = max(_at(offered, t) - count for t, count in applied if begin <= t <= end)
    latencies = [x * 1000 for x in report["latencies"]]
    split = _segments(report["commands"], report["latencies"], sent["pauses"])
    slow = sorted(split, reverse=True)[: max(1, len(split) // 100)]  # the p99 tail
    return {
        "offered": offered_rate,
        "applied": applied_rate,
        "ratio": applied_rate / offered_rate,
        "lag_ms": backlog / offered_rate * 1000,
        "unapplied": sent["count"] - applied[-1][1],  # sent but never applied, after the run
        "p99": percentile(latencies, 0.99),
        "p50": statistics.median(latencies),
        "commands": len(latencies),
        "hub_gc_count": report["watch"]["gc_count"],
        "hub_gc_max_ms": report["watch"]["gc_max_ms"],
        "hub_lag_ms": report["watch"]["lag_max_ms"],
        "hub_lag_cpu_ms": report["watch"]["lag_cpu_ms"],
        "load_lag_ms": sent["watch"]["lag_max_ms"],
        "tail_out_ms": statistics.median(s[1] for s in slow),
        "tail_service_ms": statistics.median(s[2] for s in slow),
        "tail_back_ms": statistics.median(s[3] for s in slow),
        "hub_cpu_share": report["watch"]["cpu_share"],
        "load_cpu_share": sent["watch"]["cpu_share"],
    }


def _capacity_figures() -> list[Figure]:
    runs = [_capacity_metrics() for _ in range(CAPACITY_REPEATS)]
    m = {key: statistics.median(run[key] for run in runs) for key in runs[0]}
    nominal = CLIENTS * RATE
    keeps_up = (
        m["ratio"] >= MIN_APPLIED_RATIO
        and m["offered"] >= MIN_OFFERED_RATIO * nominal
        and m["lag_ms"] <= MAX_BACKLOG_SECONDS * 1000
        and all(run["unapplied"] == 0 for run in runs)
    )
    worst = max(run["p99"] for run in runs)
    return [
        Figure(
            f"[7] hub keeps up: {CLIENTS} clients x {RATE:g} msg/s",
            m["applied"],
            m["offered"],
            "msg/s",
            m["ratio"],
            f">= {MIN_APPLIED_RATIO:g}x offered (>= {MIN_OFFERED_RATIO:.0%} of {nominal:,.0f}), "
            f"backlog <= {MAX_BACKLOG_SECONDS * 1000:g} ms",
            keeps_up,
        ),
        Figure.info("    largest backlog in the window (as time)", m["lag_ms"], "ms"),
        Figure(
            "[7] command latency p99 under that load",
            m["p99"],
            None,
            "ms",
            None,
            f"< {MAX_COMMAND_P99_MS:g} ms",
            m["p99"] < MAX_COMMAND_P99_MS,
        ),
        Figure.info(f"    command latency p50 ({m['commands']:.0f} pauses a run)", m["p50"], "ms"),
        Figure.info(f"    command latency p99, worst of {CAPACITY_REPEATS} runs", worst, "ms"),
        Figure.info("    slowest 1 %: hub -> service (median)", m["tail_out_ms"], "ms"),
        Figure.info("    slowest 1 %: service answering (median)", m["tail_service_ms"], "ms"),
        Figure.info("    slowest 1 %: answer -> hub applied (median)", m["tail_back_ms"], "ms"),
        Figure.info(
            f"    hub: {m['hub_gc_count']:.0f} collections in the window, longest",
            m["hub_gc_max_ms"],
            "ms",
        ),
        Figure.info("    hub: longest event-loop lag in the window", m["hub_lag_ms"], "ms"),
        Figure.info("    hub: CPU it used in that 5 ms tick + lag", m["hub_lag_cpu_ms"], "ms"),
        Figure.info("    load generator (GC off): longest loop lag", m["load_lag_ms"], "ms"),
        Figure.info("    hub: CPU time in the window (share of one core)", m["hub_cpu_share"], "x"),
        Figure.info("    load generator: CPU time in the window", m["load_cpu_share"], "x"),
        Figure.info(
            "    hub CPU per message (baseline: a websockets server that only receives them)",
            m["hub_cpu_share"] / m["applied"] * 1e6 if m["applied"] else 0.0,
            "us/msg",
            _bare_paced(),
        ),
    ]


def _bare_paced() -> float:
    """CPU per frame of a websockets server that only counts what the capacity load sends
    it: what merely receiving the frames costs this machine at this pace (each frame
    mostly alone on its socket: a wake-up, a read and a parse per frame)."""
    report = _capacity_run("bare-capacity")[0]
    return float(report["cpu"]) / report["frames"] * 1e6 if report["frames"] else 0.0


async def _serve_bare_capacity() -> None:
    from websockets.asyncio.server import ServerConnection, serve  # noqa: PLC0415

    count = 0

    async def handler(ws: ServerConnection) -> None:
        nonlocal count
        async for _ in ws:
            count += 1

    async def measure(command: dict[str, Any]) -> dict[str, Any]:
        begin, end = command["start"] + WARMUP, command["end"]
        await asyncio.sleep(max(0.0, begin - time.monotonic()))
        cpu, frames = time.process_time(), count
        await asyncio.sleep(max(0.0, end - time.monotonic()))
        return {"cpu": time.process_time() - cpu, "frames": count - frames}

    async with serve(handler, "127.0.0.1", 0, compression=None, max_size=1 << 20) as server:
        say(url=f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1/coordination")
        await serve_commands(measure)


async def _serve_capacity() -> None:
    from when_coordinator.hub import Hub  # noqa: PLC0415
    from when_coordinator.protocol import Phase  # noqa: PLC0415

    async with Hub() as hub:
        connections = hub.state.connections
        issued: list[tuple[str, float]] = []
        """Each pause: the workflow and when (monotonic) the hub was asked."""

        def applied() -> int:
            return sum(c.messages for c in connections.values())

        async def sample(samples: list[tuple[float, int]], until: float) -> None:
            while time.monotonic() < until:
                samples.append((time.monotonic(), applied()))
                await asyncio.sleep(SAMPLE_EVERY)
            samples.append((time.monotonic(), applied()))

        async def command(wf: str) -> float:
            def pausing(h: Hub) -> bool:
                # Both answers may be applied before the waiter is: paused counts too.
                return h.workflows[wf].phase in (Phase.PAUSING, Phase.PAUSED)

            await hub.wait_for(lambda h: h.workflows[wf].phase is Phase.EXECUTION, 10)
            started = time.perf_counter()
            issued.append((wf, time.monotonic()))
            await hub.pause(wf, "bench")
            await hub.wait_for(pausing, 10)
            latency = time.perf_counter() - started
            # Resume only what is paused: the hub refuses (409) a resume from pausing.
            await hub.wait_for(lambda h: h.workflows[wf].phase is Phase.PAUSED, 10)
            await hub.resume(wf)
            return latency

        async def measure(command_: dict[str, Any]) -> dict[str, Any]:
            start, end, clients = command_["start"], command_["end"], command_["clients"]
            workflows = [f"wf-bench-{i}" for i in range(clients)]
            issued.clear()

            def running(h: Hub) -> bool:
                return all(h.workflows[wf].phase is Phase.EXECUTION for wf in workflows)

            await hub.wait_for(running, TIMEOUT)
            samples: list[tuple[float, int]] = []
            sampler = asyncio.ensure_future(sample(samples, end + 1.0))
            begin = start + WARMUP
            watch = _Watch(begin, end)
            watching = asyncio.ensure_future(watch.watch())
            latencies = []
            for k in range(int((end - begin) * COMMANDS_PER_SECOND)):
                delay = begin + k / COMMANDS_PER_SECOND - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                latencies.append(await command(workflows[k % clients]))
            await sampler
            await watching
            return {
                "samples": samples,
                "latencies": latencies,
                "commands": issued,
                "watch": watch.report(),
            }

        say(url=hub.url)
        await serve_commands(measure)


# --------------------------------------------------------------------------- entry points


def run() -> list[Figure]:
    return _capacity_figures() + _burst_figures()


def _main(argv: Sequence[str]) -> None:
    if list(argv) == ["capacity"]:
        asyncio.run(_serve_capacity())
    elif list(argv) == ["bare-capacity"]:
        asyncio.run(_serve_bare_capacity())
    elif len(argv) == 2 and argv[0] == "load":
        asyncio.run(_serve_load(argv[1]))
    elif len(argv) == 2:
        kind, expected = argv[0], int(argv[1])
        result = asyncio.run(_serve_hub(expected) if kind == "hub" else _serve_bare(expected))
        print(json.dumps(result), flush=True)
    else:
        from .harness import format_table  # noqa: PLC0415

        print(format_table(run()))


if __name__ == "__main__":
    _main(sys.argv[1:])
