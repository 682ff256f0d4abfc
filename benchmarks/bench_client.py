"""The ``Coordinator``'s delivery cost, beside raw ``websockets`` doing the same on the wire.

Three comparisons, each measured in one run against the same kind of server:

1. ``send_progress`` throughput (to distinct workflows, so that none is coalesced): messages
   per second from the first call until the server has counted all of them, beside a raw
   ``websockets`` client sending the same number of pre-encoded ``progress`` frames. Target:
   at least 0.6x the raw throughput (that is, at most 1/0.6 the cost per message), although
   ours builds, encodes and acknowledges every message on its own thread while the
   application thread only enqueues.
2. Logging throughput: records per second from ``logging`` through ``CoordinatorLogHandler``
   and a ``LogForwarder`` (batches of 100) until the server has counted every entry, beside
   raw ``websockets`` sending the same number of pre-encoded ``log`` frames (one per record).
   Same target. The raw cost of moving the same entries as pre-encoded batches is shown for
   information.
3. Ping-to-pong latency: the server sends a JSON ``ping`` and times the ``pong``, beside the
   same server timing a raw client that echoes the frame back; p50 and p99.

The server runs in its own process (``python -m benchmarks.bench_client server``), so that it
does not compete with the measured client for the GIL. It is driven in band: a ``bench_count``
frame arms a counter that answers ``bench_done`` once it has seen the expected number of
markers; a ``bench_ping`` frame makes it time round trips and answer ``bench_result``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import statistics
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import ServerConnection, serve

from when_coordinator import Config, Coordinator, CoordinatorLogHandler, LogForwarder, Message
from when_coordinator.protocol import (
    LogBatchPayload,
    LogEntry,
    LogLevel,
    LogPayload,
    ProgressPayload,
    encode,
    format_timestamp,
)

from .harness import Child, Figure, format_table, say

MESSAGES = 20_000
RECORDS = 20_000
LOG_BATCH = 100
ROUNDS = 3
PINGS = 2_000
MIN_THROUGHPUT_RATIO = 0.6
TIMEOUT = 30.0
PROGRESS_MARKER = '"type":"progress"'
LOG_MARKER = '"level":'


# ---------------------------------------------------------------------- the server (child process)


class _BenchServer:
    """Counts markers in what it receives and times round trips, on command."""

    def __init__(self) -> None:
        self.marker = ""
        self.target = 0
        self.count = 0
        self.waiter: asyncio.Future[float] | None = None
        self.waiting_for = ""
        self.tasks: set[asyncio.Task[None]] = set()

    async def handle(self, ws: ServerConnection) -> None:
        async for data in ws:
            text = data if isinstance(data, str) else data.decode()
            waiter = self.waiter
            if waiter is not None and not waiter.done() and self.waiting_for in text:
                waiter.set_result(time.perf_counter())
                continue
            if self.target:
                self.count += text.count(self.marker)
                if self.count >= self.target:
                    self.target = 0
                    await ws.send(_control("bench_done", count=self.count))
                continue
            message = json.loads(text)
            if message["type"] == "register":
                await ws.send(_control("registered", service_id="bench-service"))
            else:
                await self.command(ws, message)

    async def command(self, ws: ServerConnection, message: dict[str, Any]) -> None:
        payload = message.get("payload", {})
        if message["type"] == "bench_count":
            self.marker, self.count, self.target = payload["marker"], 0, payload["target"]
            await ws.send(_control("bench_ready"))
        elif message["type"] == "bench_ping":
            task = asyncio.get_running_loop().create_task(self.pings(ws, payload["count"]))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def pings(self, ws: ServerConnection, count: int) -> None:
        loop = asyncio.get_running_loop()
        rtts: list[float] = []
        for i in range(count):
            self.waiting_for = f'"lat-{i}"'
            self.waiter = loop.create_future()
            frame = json.dumps(
                {"id": f"lat-{i}", "type": "ping", "timestamp": format_timestamp()},
                separators=(",", ":"),
            )
            started = time.perf_counter()
            await ws.send(frame)
            rtts.append(await asyncio.wait_for(self.waiter, TIMEOUT) - started)
        self.waiter = None
        await ws.send(_control("bench_result", rtts=rtts))


def _control(message_type: str, **payload: Any) -> str:
    return json.dumps({"id": f"ctl-{message_type}", "type": message_type, "payload": payload})


async def _serve() -> None:
    server = _BenchServer()
    async with serve(
        server.handle, "127.0.0.1", 0, compression=None, max_size=None, ping_interval=None
    ) as ws_server:
        port = ws_server.sockets[0].getsockname()[1]
        say(url=f"ws://127.0.0.1:{port}/v1/coordination")
        # Serve until the parent closes our stdin.
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)


# ---------------------------------------------------------------------- our client


class _Ours:
    """A connected ``Coordinator`` plus the in-band replies of the bench server."""

    def __init__(self, url: str) -> None:
        self.coordinator = Coordinator(
            Config(
                when_url=url,
                service_name="bench-client",
                outbox_max_messages=10 * max(MESSAGES, RECORDS),
                outbox_max_bytes=512 * 1024 * 1024,
            )
        )
        self.replies: dict[str, threading.Event] = {}
        self.payloads: dict[str, Any] = {}
        for kind in ("bench_ready", "bench_done", "bench_result"):
            self.replies[kind] = threading.Event()
            self.coordinator.on_message(kind, self._reply)
        self.coordinator.connect()
        if not self.coordinator.wait_registered(10):
            raise RuntimeError("the coordinator did not register with the bench server")

    def _reply(self, message: Message) -> None:
        self.payloads[str(message.type)] = message.payload
        self.replies[str(message.type)].set()

    def command(self, message_type: str, **payload: Any) -> None:
        for event in self.replies.values():
            event.clear()
        self.coordinator.send(Message(type=message_type, payload=payload))

    def wait(self, kind: str) -> Any:
        if not self.replies[kind].wait(TIMEOUT):
            raise RuntimeError(f"no {kind} from the bench server: {self.coordinator.stats()}")
        return self.payloads[kind]

    def timed(self, marker: str, target: int, produce: Callable[[], None]) -> float:
        """Seconds from the start of ``produce()`` until the server counted ``target``."""
        self.command("bench_count", marker=marker, target=target)
        self.wait("bench_ready")
        started = time.perf_counter()
        produce()
        self.wait("bench_done")
        elapsed = time.perf_counter() - started
        stats = self.coordinator.stats()
        if stats.dropped:
            raise RuntimeError(f"the client dropped messages: {stats}")
        return elapsed

    def close(self) -> None:
        self.coordinator.close(5.0)


def _progress_frames(count: int) -> list[str]:
    return [
        encode(Message.create(ProgressPayload(f"wf-{i}", i % 100, "act", "load", "rows")))
        for i in range(count)
    ]


def _log_frames(count: int) -> list[str]:
    entries = [_entry(i) for i in range(count)]
    return [encode(Message.create(LogPayload(entry))) for entry in entries]


def _entry(i: int) -> LogEntry:
    return LogEntry(
        timestamp=format_timestamp(),
        level=LogLevel.INFO,
        message=f"loaded batch {i}",
        fields={"rows": i},
        source_file=__file__,
        source_line=1,
    )


def _batch_frames(count: int) -> list[str]:
    frames = []
    for start in range(0, count, LOG_BATCH):
        batch = tuple(_entry(i) for i in range(start, min(start + LOG_BATCH, count)))
        frames.append(encode(Message.create(LogBatchPayload(batch))))
    return frames


# ---------------------------------------------------------------------- raw websockets


class _Raw:
    """A plain ``websockets`` client on its own loop, sending pre-encoded frames."""

    def __init__(self, url: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.ws: ClientConnection = self.loop.run_until_complete(
            connect(url, compression=None, max_size=None)
        )

    def timed(self, marker: str, target: int, frames: Sequence[str]) -> float:
        async def go() -> float:
            await self.ws.send(_control("bench_count", marker=marker, target=target))
            await self._expect("bench_ready")
            started = time.perf_counter()
            for frame in frames:
                await self.ws.send(frame)
            await self._expect("bench_done")
            return time.perf_counter() - started

        return self.loop.run_until_complete(asyncio.wait_for(go(), TIMEOUT))

    def echo_pings(self, count: int) -> list[float]:
        async def go() -> list[float]:
            await self.ws.send(_control("bench_ping", count=count))
            async for data in self.ws:
                if '"type": "bench_result"' in str(data):
                    rtts: list[float] = json.loads(data)["payload"]["rtts"]
                    return rtts
                await self.ws.send(data)
            raise RuntimeError("the bench server closed the connection")

        return self.loop.run_until_complete(asyncio.wait_for(go(), TIMEOUT))

    async def _expect(self, kind: str) -> None:
        data = await self.ws.recv()
        if f'"type": "{kind}"' not in str(data):
            raise RuntimeError(f"expected {kind}, got {data!r}")

    def close(self) -> None:
        self.loop.run_until_complete(self.ws.close())
        self.loop.close()


# ---------------------------------------------------------------------- measuring


def _us(seconds: float) -> float:
    return seconds * 1e6


def _throughput(
    name: str, ours: list[float], raw: list[float], count: int, what: str
) -> list[Figure]:
    ours_cost = statistics.median(ours) / count
    raw_cost = statistics.median(raw) / count
    return [
        Figure.versus(
            f"{name} (cost)",
            _us(ours_cost),
            _us(raw_cost),
            "us/msg",
            max_ratio=1 / MIN_THROUGHPUT_RATIO,
            what=what,
        ),
        Figure.info(f"{name} (throughput)", 1 / ours_cost, "msg/s", 1 / raw_cost),
    ]


def _percentile(values: Sequence[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def run() -> list[Figure]:
    server = Child("bench_client", "server")
    url: str = server.hello["url"]
    ours = _Ours(url)
    raw = _Raw(url)
    logger = logging.getLogger("benchmarks.client.app")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    forwarder = LogForwarder(ours.coordinator, buffer_size=LOG_BATCH, flush_interval=1.0)
    logger.addHandler(CoordinatorLogHandler(forwarder))
    try:
        progress_frames = _progress_frames(MESSAGES)
        log_frames = _log_frames(RECORDS)
        batch_frames = _batch_frames(RECORDS)
        send = ours.coordinator.send_progress

        def produce_progress() -> None:
            for i in range(MESSAGES):
                # A workflow each: updates of one workflow replace each other while queued
                # (coalesced), and this figure is the cost of a message that is delivered.
                send(f"wf-{i}", "act", i % 100, "load", "rows")

        def produce_logs() -> None:
            for i in range(RECORDS):
                logger.info("loaded batch %d", i, extra={"rows": i})
            forwarder.flush()

        timings: dict[str, list[float]] = {k: [] for k in ("p", "p_raw", "l", "l_raw", "b_raw")}
        for _ in range(ROUNDS):  # alternate, so drift hits both sides alike
            timings["p"].append(ours.timed(PROGRESS_MARKER, MESSAGES, produce_progress))
            timings["p_raw"].append(raw.timed(PROGRESS_MARKER, MESSAGES, progress_frames))
            timings["l"].append(ours.timed(LOG_MARKER, RECORDS, produce_logs))
            timings["l_raw"].append(raw.timed(LOG_MARKER, RECORDS, log_frames))
            timings["b_raw"].append(raw.timed(LOG_MARKER, RECORDS, batch_frames))

        ours.command("bench_ping", count=PINGS)
        ours_rtts: list[float] = ours.wait("bench_result")["rtts"]
        raw_rtts = raw.echo_pings(PINGS)

        figures = _throughput(
            "send_progress to server",
            timings["p"],
            timings["p_raw"],
            MESSAGES,
            "raw websockets (throughput >= 0.6x)",
        )
        figures += _throughput(
            "logging to server (batched)",
            timings["l"],
            timings["l_raw"],
            RECORDS,
            "raw websockets, a frame per record (throughput >= 0.6x)",
        )
        figures.append(
            Figure.info(
                "raw websockets, pre-encoded batches",
                _us(statistics.median(timings["b_raw"]) / RECORDS),
                "us/record",
            )
        )
        for label, fraction in (("p50", 0.5), ("p99", 0.99)):
            figures.append(
                Figure.info(
                    f"ping-to-pong latency {label}",
                    _us(_percentile(ours_rtts, fraction)),
                    "us",
                    _us(_percentile(raw_rtts, fraction)),
                )
            )
        return figures
    finally:
        forwarder.stop()
        raw.close()
        ours.close()
        server.close()


def _main(argv: Sequence[str]) -> None:
    if list(argv) == ["server"]:
        asyncio.run(_serve())
        return
    print(format_table(run()))


if __name__ == "__main__":
    _main(sys.argv[1:])
