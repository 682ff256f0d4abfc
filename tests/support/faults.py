"""Fault injection for the reliability tests (tests/reliability/).

- ``HubProcess``: the real hub as a subprocess (``when-coordinator hub``) that a test can
  SIGKILL, SIGSTOP and restart on the same port, with its stderr kept in a file.
- ``Proxy``: a TCP proxy on loopback between a client and a hub that can black-hole both
  directions without closing (a half-open path), stall the client-to-hub direction (a hub
  that stops reading), and terminate TLS (``wss://`` in front of the plain hub, as docs/hub.md
  recommends).
- ``StatsWatch``: observes ``Coordinator.stats()`` from another thread for the whole of a test
  and records every observation that breaks ``sent == delivered + dropped + queued + inflight``.
- ``Ledger`` and ``check_in_order``: what a client accepted, in order, and whether a hub holds
  it in that order, once.
- ``fork_run``: run a function in an ``os.fork()`` child and get its JSON result back;
  ``spawned_workflow`` and ``forked_workflow``: ``multiprocessing`` child targets.
- ``handshake_status``: the HTTP status of a hand-written WebSocket upgrade request.
- ``transcript_frames``: the frames of the reference client transcript (shared/wire).
- ``soak``: parameters for a test that repeats under ``make soak``.

Everything listens on 127.0.0.1 only. Waits are on events or bounded polls with deadlines.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import select
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.support.loop_thread import LoopThread
from when_coordinator import Coordinator, CoordinatorStats
from when_coordinator.cli import HubClient

__all__ = [
    "TRANSCRIPT",
    "HubProcess",
    "Ledger",
    "Proxy",
    "Sent",
    "StatsWatch",
    "check_in_order",
    "fork_run",
    "forked_workflow",
    "free_port",
    "handshake_status",
    "percentile",
    "soak",
    "spawned_workflow",
    "stats_balanced",
    "transcript_frames",
]

TRANSCRIPT = (
    Path(__file__).resolve().parents[3] / "shared" / "wire" / "reference-client-transcript.jsonl"
)


def transcript_frames(direction: str) -> list[dict[str, Any]]:
    """The JSON frames of the reference transcript: ``in`` (client to hub) or ``out``."""
    frames: list[dict[str, Any]] = []
    for line in TRANSCRIPT.read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        if record["dir"] == direction:
            frames.append(json.loads(record["frame"]))
    return frames


def soak(rounds: int) -> list[Any]:
    """Parameters for a test that runs once by default and ``rounds`` times in all under
    ``make soak`` (``pytest -m soak``): the extra rounds carry the ``soak`` marker."""
    return [
        pytest.param(0, id="once"),
        *(pytest.param(n, id=f"soak-{n}", marks=pytest.mark.soak) for n in range(1, rounds)),
    ]


def free_port() -> int:
    """A loopback port nothing listens on (at the moment of asking)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def percentile(values: list[float], fraction: float) -> float:
    """The value below which ``fraction`` of ``values`` lie (nearest rank)."""
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))
    return ordered[index]


def stats_balanced(stats: CoordinatorStats) -> bool:
    """The accounting invariant ``Coordinator.stats()`` promises at every observation."""
    return stats.sent == stats.delivered + stats.dropped + stats.queued + stats.inflight


# --------------------------------------------------------------------------- the hub process


class HubProcess:
    """``when-coordinator hub`` in a subprocess, restartable on the same port.

    The first start takes a free port (``--port 0``); ``restart()`` and later ``start()`` calls
    reuse it, so clients re-dial the same URL. stderr of every run is appended to one file
    (``stderr_text()``), stdout is read for the "listening on" line.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        db: Path | str | None = None,
        token: str | None = None,
        log_level: str = "info",
        ping_interval: float | None = None,
        env: dict[str, str] | None = None,
        extra_args: list[str] | None = None,
    ) -> None:
        self.workdir = workdir
        self.extra_args = extra_args or []
        self.db = db
        self.token = token
        self.log_level = log_level
        self.ping_interval = ping_interval
        self.port = 0
        self.url = ""
        self.process: subprocess.Popen[bytes] | None = None
        self.stderr_path = workdir / "hub-stderr.log"
        self.starts = 0
        self._env = env

    def command(self) -> list[str]:
        args = [sys.executable, "-m", "when_coordinator.cli", "hub", "--port", str(self.port)]
        if self.db is not None:
            args += ["--db", str(self.db)]
        if self.token is not None:
            args += ["--token", self.token]
        if self.ping_interval is not None:
            args += ["--ping-interval", str(self.ping_interval)]
        return [*args, *self.extra_args, "--log-level", self.log_level]

    def start(self, timeout: float = 30.0) -> HubProcess:
        if self.process is not None and self.process.poll() is None:
            raise RuntimeError("the hub process is already running")
        env = dict(os.environ if self._env is None else self._env)
        env.pop("WHEN_AUTH_TOKEN", None)
        env.pop("WHEN_HUB_URL", None)
        with self.stderr_path.open("ab") as stderr:
            self.process = subprocess.Popen(
                self.command(), stdout=subprocess.PIPE, stderr=stderr, env=env
            )
        self.starts += 1
        line = _read_line(self.process, timeout)
        match = re.search(r"listening on (ws://\S+)", line)
        if match is None:
            self.kill()
            raise RuntimeError(f"the hub did not start: {line!r}\n{self.stderr_text()}")
        self.url = match.group(1)
        self.port = int(self.url.rsplit(":", 1)[1].split("/", 1)[0])
        return self

    def restart(self, timeout: float = 30.0) -> HubProcess:
        """Start again on the same port (after ``kill()`` or ``stop()``)."""
        return self.start(timeout)

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL and reap: no handler runs, nothing is flushed."""
        process = self.process
        if process is None:
            return
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGCONT)  # a stopped process must be able to die
            process.kill()
        process.wait(30)
        if process.stdout is not None:
            process.stdout.close()

    def freeze(self) -> None:
        """SIGSTOP: the hub stops reading and answering, its sockets stay open."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM (a clean shutdown that flushes the store) and reap; the exit code."""
        process = self.process
        assert process is not None
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        try:
            code = process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise
        if process.stdout is not None:
            process.stdout.close()
        return code

    def api(self, path: str, **params: str) -> Any:
        """GET from the operator HTTP API."""
        return HubClient(self.http_url, self.token).request("GET", path, params or None)

    def workflow(self, workflow_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self.api(f"/v1/workflows/{workflow_id}", logs="0")
        return result

    def stderr_text(self) -> str:
        if not self.stderr_path.exists():
            return ""
        return self.stderr_path.read_text(encoding="utf-8", errors="replace")

    def __enter__(self) -> HubProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.kill()


def _read_line(process: subprocess.Popen[bytes], timeout: float) -> str:
    """One line of the process's stdout, within ``timeout`` (never blocks past it)."""
    assert process.stdout is not None
    fd = process.stdout.fileno()
    deadline = time.monotonic() + timeout
    data = b""
    while b"\n" not in data:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        ready, _, _ = select.select([fd], [], [], remaining)
        if not ready:
            continue
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        data += chunk
    return data.decode("utf-8", "replace")


# --------------------------------------------------------------------------- the proxy


@dataclass
class _Link:
    """One proxied connection."""

    number: int
    blackholed: bool
    muted: bool = False
    transports: list[asyncio.WriteTransport] = field(default_factory=list)
    upstream_bytes: int = 0


class Proxy(LoopThread):
    """A TCP proxy on loopback, on its own thread, in front of ``127.0.0.1:target_port``.

    ``mute()``: open connections lose everything the hub sends back, and only that.
    ``blackhole()``: every open connection, and every new one until ``restore()``, stops
    forwarding in both directions without being closed (what a dead NAT entry or a pulled
    cable looks like to both ends). Connections black-holed once stay so: their streams have
    lost bytes. ``stall()``: stop reading what clients send (TCP back-pressure reaches them),
    until ``resume()``. ``tls``: terminate TLS with this server context (counting failed
    handshakes in ``tls_failures``) and forward plain bytes.
    """

    thread_name = "fault-proxy"
    poll = 0.05  # byte counts are not notified

    def __init__(self, target_port: int, *, tls: ssl.SSLContext | None = None) -> None:
        self.target_port = target_port
        self.tls = tls
        self.port = 0
        self.accepted = 0
        self.forwarded = 0
        self.tls_failures = 0
        self.tls_errors: list[str] = []
        self.links: list[_Link] = []
        self._blackholed = False
        super().__init__()
        self._flowing: asyncio.Event | None = None

    def url(self, path: str = "/v1/coordination") -> str:
        scheme = "wss" if self.tls is not None else "ws"
        return f"{scheme}://127.0.0.1:{self.port}{path}"

    # ------------------------------------------------------------------ faults

    def _on_loop(self, fn: Callable[[], None]) -> None:
        assert self._loop is not None
        done = threading.Event()

        def run() -> None:
            try:
                fn()
            finally:
                done.set()

        self._loop.call_soon_threadsafe(run)
        if not done.wait(10):
            raise RuntimeError("the proxy's loop did not answer")

    def blackhole(self) -> None:
        def go() -> None:
            self._blackholed = True
            for link in self.links:
                link.blackholed = True

        self._on_loop(go)

    def mute(self) -> None:
        """Open connections stop carrying anything from the hub back to the client (its
        acknowledgements are lost); what the client sends still arrives."""

        def go() -> None:
            for link in self.links:
                link.muted = True

        self._on_loop(go)

    def restore(self) -> None:
        """New connections are forwarded again (black-holed ones stay dead)."""

        def go() -> None:
            self._blackholed = False

        self._on_loop(go)

    def stall(self) -> None:
        def go() -> None:
            assert self._flowing is not None
            self._flowing.clear()

        self._on_loop(go)

    def resume(self) -> None:
        def go() -> None:
            assert self._flowing is not None
            self._flowing.set()

        self._on_loop(go)

    def upstream_bytes(self) -> int:
        """Bytes forwarded from clients to the hub so far, over all connections."""
        with self._cond:
            return sum(link.upstream_bytes for link in self.links)

    # ------------------------------------------------------------------ the loop

    async def _main(self, started: threading.Event) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self._flowing = asyncio.Event()
        self._flowing.set()
        server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = int(server.sockets[0].getsockname()[1])
        started.set()
        async with server:
            await self._stop.wait()
            for link in self.links:
                for transport in link.transports:
                    transport.abort()

    def _bump(self, name: str) -> None:
        with self._cond:
            setattr(self, name, getattr(self, name) + 1)
            self._cond.notify_all()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        link = _Link(len(self.links) + 1, self._blackholed, transports=[writer.transport])
        with self._cond:
            self.links.append(link)
        self._bump("accepted")
        try:
            if self.tls is not None:
                try:
                    if sys.version_info < (3, 11):
                        raise RuntimeError("TLS termination in the proxy needs Python 3.11")
                    await writer.start_tls(self.tls, ssl_handshake_timeout=5.0)
                except (ssl.SSLError, OSError, asyncio.TimeoutError) as exc:
                    with self._cond:
                        self.tls_errors.append(f"{type(exc).__name__}: {exc}")
                    self._bump("tls_failures")
                    return
                link.transports = [writer.transport]
            if link.blackholed:
                await self._sink(reader)
                return
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
            link.transports.append(up_writer.transport)
            self._bump("forwarded")
            pumps = [
                asyncio.ensure_future(self._pump(reader, up_writer, link, upstream=True)),
                asyncio.ensure_future(self._pump(up_reader, writer, link, upstream=False)),
            ]
            done, _ = await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
            if link.blackholed and pumps[0] not in done:
                # The hub ended a black-holed path: the client must not learn it; hold its
                # side open until it gives up by itself.
                await asyncio.wait([pumps[0]])
            for pump in pumps:
                pump.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            for transport in link.transports:
                transport.abort()

    async def _sink(self, reader: asyncio.StreamReader) -> None:
        """Read and discard until the client goes away."""
        with contextlib.suppress(OSError):
            while await reader.read(65536):
                pass

    async def _pump(
        self,
        source: asyncio.StreamReader,
        target: asyncio.StreamWriter,
        link: _Link,
        *,
        upstream: bool,
    ) -> None:
        assert self._flowing is not None
        with contextlib.suppress(OSError):
            while True:
                if upstream:
                    await self._flowing.wait()
                data = await source.read(65536)
                if not data:
                    return
                if upstream:
                    await self._flowing.wait()  # a read that was under way when stalled
                if link.blackholed or (link.muted and not upstream):
                    continue
                if upstream:
                    with self._cond:
                        link.upstream_bytes += len(data)
                target.write(data)
                await target.drain()


# --------------------------------------------------------------------------- stats


class StatsWatch:
    """Samples ``coordinator.stats()`` on a thread until stopped; keeps the broken ones.

    Use as a context manager around the part of a test where the client is busy; ``check()``
    asserts every observation balanced. The loop is bounded by ``max_samples``.
    """

    def __init__(self, coordinator: Coordinator, max_samples: int = 2_000_000) -> None:
        self.coordinator = coordinator
        self.max_samples = max_samples
        self.samples = 0
        self.broken: list[CoordinatorStats] = []
        self.max_queued_bytes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="stats-watch", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set() and self.samples < self.max_samples:
            stats = self.coordinator.stats()
            self.samples += 1
            self.max_queued_bytes = max(self.max_queued_bytes, stats.queued_bytes)
            if not stats_balanced(stats) and len(self.broken) < 10:
                self.broken.append(stats)
            self._stop.wait(0.0005)

    def __enter__(self) -> StatsWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def check(self) -> None:
        assert self.samples > 0
        assert not self.broken, f"unbalanced stats observed: {self.broken[0]}"


# --------------------------------------------------------------------------- fork


def fork_run(work: Callable[[], Any], timeout: float = 20.0) -> tuple[int, Any, float]:
    """Run ``work()`` in an ``os.fork()`` child; its exit code, JSON result and run time.

    The child never returns into the caller (``os._exit``). A child that does not finish in
    ``timeout`` is killed and reported as a hang (AssertionError): a deadlock is a failure.
    """
    read_end, write_end = os.pipe()
    started = time.monotonic()
    pid = os.fork()
    if pid == 0:  # the child
        code = 0
        try:
            os.close(read_end)
            os.write(write_end, json.dumps(work()).encode())
        except BaseException as exc:
            with contextlib.suppress(BaseException):
                os.write(write_end, json.dumps({"error": repr(exc)}).encode())
            code = 1
        finally:
            os._exit(code)
    os.close(write_end)
    data = b""
    try:
        deadline = started + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                raise AssertionError(f"the forked child hung for {timeout} s")
            ready, _, _ = select.select([read_end], [], [], remaining)
            if not ready:
                continue
            chunk = os.read(read_end, 65536)
            if not chunk:
                break
            data += chunk
    finally:
        os.close(read_end)
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() >= deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise AssertionError("the forked child did not exit")
        pause.wait(0.005)
    return (
        os.waitstatus_to_exitcode(status),
        json.loads(data or b"null"),
        (time.monotonic() - started),
    )


# --------------------------------------------------------------------------- what was sent


@dataclass(frozen=True)
class Sent:
    """One message a client accepted: its kind, workflow and a key unique to it.

    Keys: ``phase_changed`` (from, to, reason, checkpoint id); ``checkpoint`` its id; ``error``
    its text; ``progress`` and ``log`` their message; ``workflow_created`` the workflow id.
    """

    kind: str
    workflow_id: str
    key: Any


class Ledger:
    """Sends through a coordinator and records, in order, every message it accepted.

    Phase transitions are recorded by a phase listener, which runs right after the
    coordinator's own (both under the phase manager's lock), so with one producer thread the
    ledger's order is the outbox's order.
    """

    def __init__(self, coordinator: Coordinator) -> None:
        self.coordinator = coordinator
        self.entries: list[Sent] = []
        self._lock = threading.Lock()
        coordinator.phases.on_phase_changed(self._on_phase)

    def _add(self, sent: Sent) -> None:
        with self._lock:
            self.entries.append(sent)

    def _on_phase(self, state: Any) -> None:
        previous = state.previous_phase.value if state.previous_phase is not None else ""
        key = (previous, state.phase.value, state.reason, state.checkpoint_id)
        self._add(Sent("phase_changed", state.workflow_id, key))

    def created(self, workflow_id: str) -> None:
        if self.coordinator.send_workflow_created(workflow_id, action_type="job"):
            self._add(Sent("workflow_created", workflow_id, workflow_id))

    def checkpoint(self, workflow_id: str, checkpoint_id: str) -> None:
        if self.coordinator.send_checkpoint(workflow_id, checkpoint_id, "safe point"):
            self._add(Sent("checkpoint", workflow_id, checkpoint_id))

    def error(self, workflow_id: str, text: str) -> None:
        if self.coordinator.send_error(workflow_id, "act", text, recoverable=True):
            self._add(Sent("error", workflow_id, text))

    def progress(self, workflow_id: str, percent: float, message: str) -> None:
        if self.coordinator.send_progress(workflow_id, "act", percent, "stage", message):
            self._add(Sent("progress", workflow_id, message))

    def log(self, message: str) -> None:
        if self.coordinator.log_info(message):
            self._add(Sent("log", "", message))

    def snapshot(self) -> list[Sent]:
        with self._lock:
            return list(self.entries)

    @staticmethod
    def of(entries: list[Sent], kind: str, workflow_id: str | None = None) -> list[Any]:
        return [
            e.key
            for e in entries
            if e.kind == kind and (workflow_id is None or e.workflow_id == workflow_id)
        ]


def check_in_order(got: list[Any], expected: list[Any], required: list[Any], what: str) -> None:
    """``got`` (what a hub holds, oldest first) is items of ``expected`` in their order, each
    at most once, and holds every item of ``required``.

    ``expected`` items must be unique. (A client resends what the hub had not acknowledged:
    at least once on the wire; the hub recognises the resend, so once in its records.)
    """
    index = {item: i for i, item in enumerate(expected)}
    assert len(index) == len(expected), f"{what}: expected items are not unique"
    unknown = [item for item in got if item not in index]
    assert not unknown, f"{what}: the hub holds what was never sent: {unknown[:3]}"
    positions = [index[item] for item in got]
    assert positions == sorted(positions), f"{what}: out of order: {got}"
    assert len(set(positions)) == len(positions), f"{what}: applied twice: {got}"
    missing = [item for item in required if item not in set(got)]
    assert not missing, f"{what}: {len(missing)} missing, first {missing[:3]}"


# --------------------------------------------------------------------------- handshakes


def handshake_status(url: str, authorization: str | None, timeout: float = 5.0) -> int:
    """The HTTP status a WebSocket upgrade request to ``url`` gets (101 when accepted).

    Written by hand, so that nothing (no client library) logs the ``Authorization`` value.
    """
    rest = url.split("://", 1)[1]
    hostport, _, path = rest.partition("/")
    host, _, port = hostport.rpartition(":")
    lines = [
        f"GET /{path} HTTP/1.1",
        f"Host: {hostport}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version: 13",
        "X-Service-Name: handshake-probe",
    ]
    if authorization is not None:
        lines.append(f"Authorization: {authorization}")
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        head = b""
        while b"\r\n" not in head:
            chunk = sock.recv(4096)
            if not chunk:
                break
            head += chunk
    status = head.split(b"\r\n", 1)[0].split()
    return int(status[1]) if len(status) >= 2 else 0


# --------------------------------------------------------------------------- child processes


def spawned_workflow(number: int, results: Any) -> None:
    """A ``multiprocessing`` spawn child: the coordinator comes from the environment
    (``WHEN_URL``), one workflow runs, and the process exits without ``close()``."""
    from when_coordinator import workflow  # noqa: PLC0415 - in the child

    with workflow("spawned", workflow_id=f"wf-spawn-{number}") as wf:
        wf.progress(50, "half", f"spawned {number}")
    results.put({"number": number, "pid": os.getpid()})


def forked_workflow(number: int, connect: bool, results: Any) -> None:
    """A ``multiprocessing`` fork child using the coordinator it inherited as the default.

    Quiet (``connect`` False): its workflow runs locally, its messages are dropped. Otherwise
    it ``connect()``s a connection of its own and closes it (a fork child's exit skips the
    exit handlers, so it must).
    """
    from when_coordinator import workflow  # noqa: PLC0415 - in the child
    from when_coordinator.otel.tracking import get_coordinator  # noqa: PLC0415

    coordinator = get_coordinator()
    if connect:
        coordinator.connect()
        coordinator.wait_registered(10)
    with workflow("forked", workflow_id=f"wf-fork-{number}") as wf:
        wf.progress(50, "half", f"forked {number}")
    flushed = coordinator.flush(5) if connect else None
    stats = coordinator.stats()
    coordinator.close(2.0)
    results.put(
        {
            "number": number,
            "pid": os.getpid(),
            "flushed": flushed,
            "dropped": dict(stats.drop_reasons),
            "instance_id": coordinator.config.instance_id,
        }
    )


def to_execution(ledger: Ledger, workflow_id: str) -> None:
    """Register ``workflow_id`` with the ledger and take it through to execution."""
    phases = ledger.coordinator.phases
    phases.register_workflow(workflow_id)
    ledger.created(workflow_id)
    phases.transition_to(workflow_id, "pre-flight", f"{workflow_id} checks")
    phases.transition_to(workflow_id, "planning", f"{workflow_id} plans")
    phases.transition_to(workflow_id, "execution", f"{workflow_id} runs")


class Disconnects:
    """Stats as they were when each connection ended (taken on the client's thread)."""

    def __init__(self, coordinator: Coordinator) -> None:
        self.coordinator = coordinator
        self.stats: list[CoordinatorStats] = []
        self.registered = 0
        self._cond = threading.Condition()
        coordinator.on_disconnected(self._on_disconnected)
        coordinator.on_registered(self._on_registered)

    def _on_disconnected(self) -> None:
        with self._cond:
            self.stats.append(self.coordinator.stats())
            self._cond.notify_all()

    def _on_registered(self, _payload: object) -> None:
        with self._cond:
            self.registered += 1
            self._cond.notify_all()

    def wait(self, what: str, count: int, timeout: float = 30.0) -> None:
        def reached() -> bool:
            return (len(self.stats) if what == "disconnected" else self.registered) >= count

        with self._cond:
            assert self._cond.wait_for(reached, timeout), f"{what} did not reach {count}"


def phase_history(doc: dict[str, Any], *, before: float | None = None) -> list[Any]:
    """A workflow document's phase changes (optionally those before ``before``), compared as
    tuples."""
    return [
        (h["from"], h["to"], h["reason"], h["checkpoint_id"])
        for h in doc["history"]
        if before is None or h["at"] < before
    ]
