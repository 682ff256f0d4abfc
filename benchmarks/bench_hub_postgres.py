"""Two hub instances on one PostgreSQL under the capacity load of ``bench_hub`` (issue 16).

8. The load of figure 7 (200 services x 50 msg/s, raw websockets clients in their own process)
   split between two ``Hub(db="postgresql://...")`` instances, each in its own process: even
   services on A, odd ones on B. Instance A sends 50 pauses (and resumes) a second for
   workflows of services held by B, so every command crosses instances (written to
   ``when_commands`` and notified, claimed and sent by B, the service's ``pausing`` applied
   by B and notified back); its latency is ``hub.pause`` on A until A's view shows
   ``pausing``. Target: p99 under 20 ms. Beside it, in the same run, the same load and
   commands on one ``Hub(db=<SQLite file>)`` (every command local): the same machine's
   latency without the bus. Figures: messages applied beside those offered, and the
   latencies of both.

The PostgreSQL server is started like the tests' (tests/support/pgserver.py, Debian's binaries,
fsync off). Without it the benchmark reports that it was skipped.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import bench_hub as base
from .harness import ROOT, Child, Figure, percentile, say, serve_commands

STORE_INTERVAL = 0.02
"""Each instance's batch interval here (commands do not wait for batches, but the view of the
other instance's telemetry does)."""
TIMEOUT = 180.0
MAX_CROSS_P99_MS = 20.0


class _SplitLoad(base._Load):
    """The capacity load, its clients alternating between two hub URLs."""

    async def connect_split(self, urls: Sequence[str]) -> None:
        from websockets.asyncio.client import connect  # noqa: PLC0415

        for index in range(base.CLIENTS):
            ws = await connect(urls[index % len(urls)], compression=None, proxy=None)
            self.sockets.append(ws)
            for data in base._register_frames(index):
                await ws.send(data)
            self.count += 2
            self.readers.append(asyncio.ensure_future(self.answer(ws, index)))

    async def paced(self, frames: list[list[str]], start: float, end: float) -> None:
        """``bench_hub._Load.paced``, but yielding once a round of clients while it is behind:
        on a machine too busy to keep the pace, the sampler would otherwise not run until
        the end, and the offered rate would read 0."""
        step = 1.0 / (base.RATE * base.CLIENTS)
        sockets = self.sockets
        for n in range(int((end - start) / step)):
            delay = start + n * step - time.monotonic()
            if delay > 0.0005:
                await asyncio.sleep(delay)
            elif n % base.CLIENTS == 0:
                await asyncio.sleep(0)
            client, k = n % base.CLIENTS, n // base.CLIENTS
            await sockets[client].send(frames[client][k % len(frames[client])])
            self.count += 1


async def _serve_load(urls: Sequence[str]) -> None:
    load = _SplitLoad()
    try:
        await load.connect_split(urls)
        say(clients=len(load.sockets))
        await serve_commands(load.run)
    finally:
        await load.close()


async def _serve_instance(db: str, name: str, commands: bool) -> None:
    from when_coordinator.hub import Hub  # noqa: PLC0415
    from when_coordinator.protocol import Phase  # noqa: PLC0415

    hub = Hub(db=db, instance_id=name, store_interval=STORE_INTERVAL, log_buffer=10_000)
    async with hub:
        connections = hub.state.connections

        def applied() -> int:
            return sum(c.messages for c in connections.values())

        async def sample(samples: list[tuple[float, int]], until: float) -> None:
            while time.monotonic() < until:
                samples.append((time.monotonic(), applied()))
                await asyncio.sleep(base.SAMPLE_EVERY)
            samples.append((time.monotonic(), applied()))

        issued: list[tuple[str, float]] = []

        async def command(wf: str) -> float:
            await hub.wait_for(lambda h: h.workflows[wf].phase is Phase.EXECUTION, TIMEOUT)
            started = time.perf_counter()
            issued.append((wf, time.monotonic()))
            await hub.pause(wf, "bench")
            await hub.wait_for(
                lambda h: h.workflows[wf].phase in (Phase.PAUSING, Phase.PAUSED), TIMEOUT
            )
            latency = time.perf_counter() - started
            await hub.wait_for(lambda h: h.workflows[wf].phase is Phase.PAUSED, TIMEOUT)
            await hub.resume(wf)
            return latency

        async def measure(cmd: dict[str, Any]) -> dict[str, Any]:
            start, end, clients = cmd["start"], cmd["end"], cmd["clients"]
            everyone = [f"wf-bench-{i}" for i in range(clients)]

            def running(h: Hub) -> bool:
                return all(h.workflows[wf].phase is Phase.EXECUTION for wf in everyone)

            await hub.wait_for(running, TIMEOUT)  # the one view: all 200, wherever they are
            samples: list[tuple[float, int]] = []
            sampler = asyncio.ensure_future(sample(samples, end + 1.0))
            begin = start + base.WARMUP
            cpu = asyncio.ensure_future(_cpu_between(begin, end))
            latencies = []
            if commands:  # the odd workflows: services held by the other instance
                targets = everyone[1::2]
                for k in range(int((end - begin) * base.COMMANDS_PER_SECOND)):
                    delay = begin + k / base.COMMANDS_PER_SECOND - time.monotonic()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    latencies.append(await command(targets[k % len(targets)]))
            await sampler
            health = hub.store_health() or {}
            return {
                "cpu": await cpu,
                "samples": samples,
                "latencies": latencies,
                "commands": issued,
                "writes": health.get("writes"),
            }

        say(url=hub.url)
        await serve_commands(measure)


async def _cpu_between(begin: float, end: float) -> float:
    """This process's CPU time (every thread) from ``begin`` to ``end``, as a share of one core."""
    await asyncio.sleep(max(0.0, begin - time.monotonic()))
    used = time.process_time()
    await asyncio.sleep(max(0.0, end - time.monotonic()))
    return (time.process_time() - used) / (end - begin)


def _measure(dbs: Sequence[str]) -> dict[str, Any]:
    """One run of the load on one instance per database URL (A sends the commands)."""
    children: list[Child] = []
    try:
        hubs = []
        for index, db in enumerate(dbs):
            name, role = "ab"[index], "commands" if index == 0 else "quiet"
            hubs.append(Child("bench_hub_postgres", "instance", db, name, role, timeout=TIMEOUT))
            children.append(hubs[-1])
        load = Child("bench_hub_postgres", "load", *(hub.hello["url"] for hub in hubs))
        children.append(load)
        start = time.monotonic() + 1.0
        end = start + base.WARMUP + base.WINDOW
        for hub in hubs:
            hub.send(cmd="measure", start=start, end=end, clients=base.CLIENTS)
        load.send(cmd="run", start=start, end=end)
        reports, sent = [hub.read() for hub in hubs], load.read()
    finally:
        for child in reversed(children):
            child.close()
    begin, stop = start + base.WARMUP, start + base.WARMUP + base.WINDOW
    offered = (base._at(sent["samples"], stop) - base._at(sent["samples"], begin)) / base.WINDOW
    applied = sum(
        (base._at(r["samples"], stop) - base._at(r["samples"], begin)) / base.WINDOW
        for r in reports
    )
    latencies = [x * 1000 for x in reports[0]["latencies"]]
    split = base._segments(reports[0]["commands"], reports[0]["latencies"], sent["pauses"])
    slow = sorted(split, reverse=True)[: max(1, len(split) // 100)]  # the p99 tail
    writes = sum(r["writes"] or 0 for r in reports) / len(reports) / (end - start + 1)
    cpu = sum(r["cpu"] for r in reports)
    return {
        "cpu": cpu,
        "cpu_per_msg": cpu / applied * 1e6 if applied else 0.0,
        "offered": offered,
        "applied": applied,
        "p50": statistics.median(latencies),
        "p99": percentile(latencies, 0.99),
        "commands": len(latencies),
        "writes": writes,
        "tail": [statistics.median(s[i] for s in slow) for i in (1, 2, 3)],
    }


SCALE_BATCHES = 150
SCALE_WORKFLOWS = 50
SCALE_LOGS = 50
"""One instance's store batch under figure 8's load: 5,000 msg/s, half progress (coalesced
into about 50 changed workflows a 20 ms batch) and half logs (50 a batch)."""


class _Host:
    """What ``PostgresBus._apply`` reads of its hub: the state, and no services of its own."""

    command_timeout = 10.0

    def __init__(self) -> None:
        from when_coordinator.hub.state import HubState  # noqa: PLC0415

        self.state = HubState(log_buffer=10_000)

    def _local_services(self) -> set[str]:
        return set()


def _scale(db: str) -> dict[str, float]:
    """The two rates behind the scale-out of docs/operations.md, with figure 8's batches:
    the database's rate of one writer's transactions (writers are serialised, so this is
    the fleet's), and the CPU one instance spends reading and applying another's rows."""
    from when_coordinator.hub.bus import PostgresBus  # noqa: PLC0415
    from when_coordinator.hub.model import WorkflowState  # noqa: PLC0415
    from when_coordinator.hub.oneview import _read  # noqa: PLC0415
    from when_coordinator.hub.pgstore import PostgresStore  # noqa: PLC0415
    from when_coordinator.hub.records import StoredLog  # noqa: PLC0415
    from when_coordinator.hub.store import StoreBatch, summary  # noqa: PLC0415
    from when_coordinator.protocol import LogEntry  # noqa: PLC0415

    writer, reader = PostgresStore(db, "scale-w"), PostgresStore(db, "scale-r")
    writer.open()
    reader.open()
    host = _Host()
    bus = PostgresBus(host, reader)  # type: ignore[arg-type]
    seq, wall, read_cpu, rows = reader.changes_since(0).seq, 0.0, 0.0, 0
    try:
        for n in range(SCALE_BATCHES):
            batch = StoreBatch()
            for i in range(SCALE_WORKFLOWS):
                workflow = WorkflowState(
                    f"wf-scale-{i}", service_id=f"svc-{i}", action_type="bench", stage="load"
                )
                workflow.progress, workflow.current_item, workflow.updated_at = n % 100, n, n
                batch.workflows[workflow.workflow_id] = summary(workflow)
            for i in range(SCALE_LOGS):
                entry = LogEntry.from_dict(
                    {
                        "timestamp": "2026-12-03T12:00:00.123456Z",
                        "level": "info",
                        "message": f"record {n}.{i}",
                        "workflow_id": f"wf-scale-{i}",
                        "fields": {"client": i, "n": n},
                    }
                )
                batch.logs.append(StoredLog(entry, f"svc-{i}", float(n)))
            started = time.perf_counter()
            writer.write(batch)
            wall += time.perf_counter() - started
            used = time.process_time()
            mirror, logs = _read(reader, seq)
            bus._apply(mirror, logs)
            read_cpu += time.process_time() - used
            seq, rows = mirror.seq, rows + len(mirror.workflows) + len(logs)
    finally:
        writer.close()
        reader.close()
    return {
        "tx_per_s": SCALE_BATCHES / wall,
        "rows_per_s": SCALE_BATCHES * (SCALE_WORKFLOWS + SCALE_LOGS) / wall,
        "mirror_us_per_row": read_cpu / rows * 1e6 if rows else 0.0,
        "rows": rows,
    }


HANDOFF_STATEMENTS = 300


async def _statements_through_a_thread(url: str, interval: float) -> list[float]:
    """Latencies (ms) of ``SELECT 1`` on a thread of its own (as the bus runs its statements)
    awaited from an event loop kept 60 % busy, beside another thread busy with Python work
    (as a store or mirror thread is at times), with the given switch interval."""
    import concurrent.futures  # noqa: PLC0415
    import threading  # noqa: PLC0415

    import psycopg  # noqa: PLC0415

    before = sys.getswitchinterval()
    sys.setswitchinterval(interval)
    stop = threading.Event()

    def busy() -> None:
        while not stop.is_set():
            sum(range(20_000))

    async def loop_work() -> None:
        while True:
            until = time.perf_counter() + 0.003
            while time.perf_counter() < until:
                pass
            await asyncio.sleep(0.002)

    executor = concurrent.futures.ThreadPoolExecutor(1)
    latencies: list[float] = []
    with psycopg.connect(url, autocommit=True) as conn:
        worker = threading.Thread(target=busy, daemon=True)
        worker.start()
        work = asyncio.ensure_future(loop_work())
        loop = asyncio.get_running_loop()
        try:
            for _ in range(HANDOFF_STATEMENTS):
                started = time.perf_counter()
                await loop.run_in_executor(executor, lambda: conn.execute("SELECT 1").fetchall())
                latencies.append((time.perf_counter() - started) * 1000)
                await asyncio.sleep(0.003)
        finally:
            work.cancel()
            stop.set()
            worker.join()
            executor.shutdown()
            sys.setswitchinterval(before)
    return latencies


def _handoff(db: str) -> dict[str, float]:
    """Why the bus shortens the switch interval (``bus.SWITCH_INTERVAL``): p99 of a statement
    through a thread, at the bus's interval and at the interpreter's default, alternating."""
    from when_coordinator.hub.bus import SWITCH_INTERVAL  # noqa: PLC0415

    runs: dict[float, list[float]] = {SWITCH_INTERVAL: [], 0.005: []}
    for _ in range(2):
        for interval, latencies in runs.items():
            latencies.extend(asyncio.run(_statements_through_a_thread(db, interval)))
    short, default = runs[SWITCH_INTERVAL], runs[0.005]
    return {
        "p50": statistics.median(short),
        "p50_default": statistics.median(default),
        "p99": percentile(short, 0.99),
        "p99_default": percentile(default, 0.99),
    }


def _figures() -> list[Figure]:
    sys.path.insert(0, str(ROOT))  # the tests package, for its support modules
    from tests.support.pgserver import PostgresServer, find_postgres_bin  # noqa: PLC0415

    bindir = find_postgres_bin()
    if bindir is None:
        return [Figure.info("[8] two instances on PostgreSQL: skipped (no server)", 0, "")]
    server = PostgresServer(bindir).start()
    try:
        db = server.new_database()
        pg = _measure([db, db])
        scale = _scale(server.new_database())
        handoff = _handoff(db)
    finally:
        server.stop()
    with tempfile.TemporaryDirectory(prefix="when-bench-") as tmp:
        solo = _measure([str(Path(tmp) / "hub.db")])
    return [
        Figure(
            f"[8] two instances on PostgreSQL: {base.CLIENTS} clients x {base.RATE:g} msg/s",
            pg["applied"],
            pg["offered"],
            "msg/s",
            pg["applied"] / pg["offered"] if pg["offered"] else 0.0,
            f">= {base.MIN_APPLIED_RATIO:g}x offered",
            pg["applied"] >= base.MIN_APPLIED_RATIO * pg["offered"],
        ),
        Figure.info(
            f"    cross-instance command latency p50 ({pg['commands']} pauses)",
            pg["p50"],
            "ms",
            solo["p50"],
        ),
        Figure(
            "[8] cross-instance command latency p99 (baseline: one SQLite hub)",
            pg["p99"],
            solo["p99"],
            "ms",
            pg["p99"] / solo["p99"] if solo["p99"] else None,
            f"< {MAX_CROSS_P99_MS:g} ms",
            pg["p99"] < MAX_CROSS_P99_MS,
        ),
        Figure.info(
            "    one SQLite hub, same load: applied msg/s",
            solo["applied"],
            "msg/s",
            solo["offered"],
        ),
        Figure.info(
            f"    store batches written per second, per instance ({STORE_INTERVAL * 1000:g} ms)",
            pg["writes"],
            "/s",
        ),
        Figure.info(
            "    instances' CPU per message applied (own + persist + mirror; one SQLite hub)",
            pg["cpu_per_msg"],
            "us/msg",
            solo["cpu_per_msg"],
        ),
        Figure.info("    instances' CPU in the window (share of one core, both)", pg["cpu"], "x"),
        Figure.info(
            f"    database: one writer's batches ({SCALE_WORKFLOWS} summaries + {SCALE_LOGS} logs)",
            scale["tx_per_s"],
            "tx/s",
        ),
        Figure.info(
            "    database: rows written per second, one writer", scale["rows_per_s"], "rows/s"
        ),
        Figure.info(
            "    mirror: CPU to read and apply another instance's row",
            scale["mirror_us_per_row"],
            "us/row",
        ),
        Figure.info(
            "    a statement via a thread, busy loop and thread: p50 (1 ms switch; 5 ms)",
            handoff["p50"],
            "ms",
            handoff["p50_default"],
        ),
        Figure.info(
            "    the same, p99 (1 ms switch interval; baseline the default 5 ms)",
            handoff["p99"],
            "ms",
            handoff["p99_default"],
        ),
        Figure.info(
            "    slowest 1 %: A asked until the service had it",
            pg["tail"][0],
            "ms",
            solo["tail"][0],
        ),
        Figure.info("    slowest 1 %: the service answering", pg["tail"][1], "ms", solo["tail"][1]),
        Figure.info(
            "    slowest 1 %: answer until A applied it", pg["tail"][2], "ms", solo["tail"][2]
        ),
    ]


def run() -> list[Figure]:
    return _figures()


def _main(argv: Sequence[str]) -> None:
    if len(argv) == 4 and argv[0] == "instance":
        asyncio.run(_serve_instance(argv[1], argv[2], argv[3] == "commands"))
    elif len(argv) >= 2 and argv[0] == "load":
        asyncio.run(_serve_load(argv[1:]))
    else:
        from .harness import format_table  # noqa: PLC0415

        print(format_table(run()))


if __name__ == "__main__":
    _main(sys.argv[1:])
