"""The connection: handshake, ``register``, reconnecting after any failure, backoff, keepalive
against a silent peer, TLS and bearer tokens. Real sockets on loopback throughout."""

from __future__ import annotations

import logging
import random
import re
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme

from tests.support.scripted_server import Frame, RawServer, ScriptedServer, fast_config, wait_until
from when_coordinator import Config, ConfigError, Coordinator, PhaseManager
from when_coordinator.client.connection import backoff_delays, handshake_headers
from when_coordinator.client.core import CONTROL_LIMIT as _CONTROL_LIMIT
from when_coordinator.hub import Hub, ThreadedHub
from when_coordinator.protocol import RegisteredPayload, parse_timestamp

ID_SHAPE = re.compile(r"msg-[a-z0-9]{12}-\d{1,6}")


class Events:
    """Counts the client's connection callbacks and lets a test wait for the n-th one."""

    def __init__(self, coordinator: Coordinator) -> None:
        self._cond = threading.Condition()
        self.connected = 0
        self.disconnected = 0
        self.registered: list[RegisteredPayload] = []
        coordinator.on_connected(lambda: self._bump("connected"))
        coordinator.on_disconnected(lambda: self._bump("disconnected"))
        coordinator.on_registered(self._on_registered)

    def _bump(self, name: str) -> None:
        with self._cond:
            setattr(self, name, getattr(self, name) + 1)
            self._cond.notify_all()

    def _on_registered(self, payload: RegisteredPayload) -> None:
        with self._cond:
            self.registered.append(payload)
            self._cond.notify_all()

    def wait(self, name: str, count: int, timeout: float = 10.0) -> None:
        with self._cond:
            ok = self._cond.wait_for(lambda: getattr(self, name) >= count, timeout)
        assert ok, f"{name} did not reach {count} (is {getattr(self, name)})"

    def wait_registered(self, count: int, timeout: float = 10.0) -> None:
        with self._cond:
            ok = self._cond.wait_for(lambda: len(self.registered) >= count, timeout)
        assert ok, f"registered did not arrive {count} times"


def closed_port() -> int:
    """A loopback port nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def join_client_thread(coordinator: Coordinator, timeout: float) -> None:
    thread = coordinator._thread
    assert thread is not None
    thread.join(timeout)
    assert not thread.is_alive(), "the client thread is still running"


# ---------------------------------------------------------------------- handshake and register


def test_minimal_handshake_and_register_payload() -> None:
    with ScriptedServer() as server:
        config = fast_config(server.url, instance_id="inst-1")
        with Coordinator(config) as coordinator:
            assert coordinator.wait_registered(5)
            server.wait_count("register", 1)
            headers = server.connections[0].headers
            assert headers["X-Service-Name"] == "test-service"
            assert "X-Service-ID" not in headers
            assert "Authorization" not in headers
            first = server.snapshot()[0]
            assert first.type == "register"
            assert first.message is not None
            assert ID_SHAPE.fullmatch(first.message.id)
            assert first.message.workflow_id == ""
            assert "workflow_id" not in first.text.split('"payload"')[0]
            assert first.message.timestamp.endswith("Z")
            parse_timestamp(first.message.timestamp)
            assert first.payload.to_dict() == {
                "service_name": "test-service",
                "instance_id": "inst-1",
                "capabilities": None,
                "protocol_version": "1.0",
            }
            assert '"capabilities":null' in first.text


def test_full_handshake_and_register_payload() -> None:
    with ScriptedServer(token="tok-abc") as server:
        config = fast_config(
            server.url,
            service_name="billing",
            service_id="svc-configured",
            instance_id="inst-2",
            capabilities=("etl", "reports"),
            version="2.1.0",
            protocol_version="1.0",
            schema_version=3,
            auth_token="tok-abc",
        )
        with Coordinator(config) as coordinator:
            assert coordinator.wait_registered(5)
            headers = server.connections[0].headers
            assert headers["X-Service-Name"] == "billing"
            assert headers["X-Service-ID"] == "svc-configured"
            assert headers["Authorization"] == "Bearer tok-abc"
            register = server.wait_count("register", 1)[0]
            assert register.payload.to_dict() == {
                "service_name": "billing",
                "service_id": "svc-configured",
                "instance_id": "inst-2",
                "capabilities": ["etl", "reports"],
                "version": "2.1.0",
                "protocol_version": "1.0",
                "schema_version": 3,
            }
            assert '"schema_version":3' in register.text  # an integer, not 3.0


def test_handshake_headers_function() -> None:
    assert handshake_headers(Config(service_name="a")) == {"X-Service-Name": "a"}
    assert handshake_headers(Config(service_name="a", service_id="b", auth_token="t")) == {
        "X-Service-Name": "a",
        "X-Service-ID": "b",
        "Authorization": "Bearer t",
    }


def test_register_is_first_on_every_connection_and_carries_the_assigned_id() -> None:
    with ScriptedServer(service_id="svc-from-hub") as server:
        coordinator = Coordinator(fast_config(server.url))
        events = Events(coordinator)
        for i in range(20):  # queued before the first connection
            coordinator.send_progress("wf-1", "act", float(i))
        coordinator.connect()
        events.wait_registered(1)
        assert events.registered[0].service_id == "svc-from-hub"
        assert coordinator.service_id == "svc-from-hub"
        assert coordinator.is_registered
        server.close_connection(1001)
        events.wait_registered(2)
        for i in range(5):
            coordinator.send_progress("wf-1", "act", 50.0 + i)
        assert coordinator.flush(5)
        server.barrier()
        for number in (1, 2):
            mine = [f for f in server.snapshot() if f.connection == number]
            assert mine[0].type == "register", [f.type for f in mine[:3]]
            assert sum(1 for f in mine if f.type == "register") == 1
        first, second = server.of_type("register")
        assert "service_id" not in first.payload
        assert second.payload["service_id"] == "svc-from-hub"
        assert "X-Service-ID" not in server.connections[1].headers  # only a configured id
        coordinator.close()


# ---------------------------------------------------------------------- reconnecting


def drive_before(phases: PhaseManager, workflows: list[str]) -> None:
    for wf in workflows:
        phases.register_workflow(wf)
        phases.transition_to(wf, "pre-flight", f"{wf} checks")
        phases.transition_to(wf, "planning", f"{wf} plans")
        phases.transition_to(wf, "execution", f"{wf} runs")


def drive_during(phases: PhaseManager, workflows: list[str]) -> None:
    for wf in workflows:
        phases.pause(wf, f"{wf} pause")
        phases.complete_pause(wf, f"{wf}-cp")
        phases.resume(wf, f"{wf}-cp")
        phases.complete_resume(wf)
        phases.complete(wf)


def expected_transitions(wf: str) -> list[tuple[str, str, str, str]]:
    cp = f"{wf}-cp"
    return [
        ("pending", "pre-flight", f"{wf} checks", ""),
        ("pre-flight", "planning", f"{wf} plans", ""),
        ("planning", "execution", f"{wf} runs", ""),
        ("execution", "pausing", f"{wf} pause", ""),
        ("pausing", "paused", f"{wf} pause", cp),
        ("paused", "resuming", "resume requested", cp),
        ("resuming", "execution", "resumed", cp),
        ("execution", "completing", "completing", cp),
        ("completing", "completed", "completed successfully", cp),
    ]


def transitions(frames: list[Frame], wf: str) -> list[tuple[str, str, str, str]]:
    return [
        (
            f.payload["from"],
            f.payload["to"],
            f.payload.get("reason", ""),
            f.payload.get("checkpoint_id", ""),
        )
        for f in frames
        if f.type == "phase_changed" and f.payload["workflow_id"] == wf
    ]


@pytest.mark.parametrize("how", ["close", "abort", "restart"])
def test_reconnects_after_a_drop_and_delivers_what_was_queued_in_order(how: str) -> None:
    with ScriptedServer() as server:
        # A longer first delay makes sure what follows the drop is queued while disconnected.
        coordinator = Coordinator(
            fast_config(server.url, reconnect_initial_delay=0.3, reconnect_max_delay=0.3)
        )
        events = Events(coordinator)
        coordinator.connect()
        events.wait_registered(1)
        workflows = [f"wf-{i}" for i in range(4)]
        drive_before(coordinator.phases, workflows)
        assert coordinator.flush(5)

        if how == "close":
            server.close_connection(1001)
        elif how == "abort":
            server.abort_connection()
        else:
            server.stop()
        events.wait("disconnected", 1)
        assert not coordinator.is_connected
        drive_during(coordinator.phases, workflows)
        coordinator.log_info("logged while away")
        stats = coordinator.stats()
        assert stats.queued == len(workflows) * 6 + 1
        assert stats.dropped == 0
        if how == "restart":
            server.start(server.port)

        events.wait("connected", 2)
        events.wait_registered(2)
        assert coordinator.flush(10)
        server.barrier()
        frames = server.snapshot()
        for wf in workflows:
            assert transitions(frames, wf) == expected_transitions(wf), wf
            after = [f for f in frames if f.type == "phase_changed" and f.workflow_id == wf]
            assert all(f.connection == 2 for f in after[3:])  # the queued ones, after reconnect
        assert [f.payload["message"] for f in frames if f.type == "log"] == ["logged while away"]
        stats = coordinator.stats()
        assert stats.reconnects == 1
        assert stats.connects == 2
        assert stats.sent == stats.delivered
        assert events.disconnected == 1
        coordinator.close()
    assert events.disconnected == 2


def test_no_transition_is_lost_when_the_connection_drops_under_load() -> None:
    with ScriptedServer() as server:
        coordinator = Coordinator(fast_config(server.url))
        events = Events(coordinator)
        coordinator.connect()
        events.wait_registered(1)
        phases = coordinator.phases
        workflows = [f"wf-{i}" for i in range(4)]
        cycles = 150
        for wf in workflows:
            phases.register_workflow(wf)
            phases.transition_to(wf, "pre-flight")
            phases.transition_to(wf, "planning")
            phases.transition_to(wf, "execution")

        def drive(wf: str) -> None:
            for i in range(cycles):
                phases.pause(wf, f"pause {i}")
                phases.complete_pause(wf, f"cp-{i}")
                phases.resume(wf, f"cp-{i}")
                phases.complete_resume(wf)

        drivers = [threading.Thread(target=drive, args=(wf,)) for wf in workflows]
        for thread in drivers:
            thread.start()
        server.wait_for(lambda s: s.count("phase_changed") >= 200, 10, "traffic")
        server.abort_connection(1)
        for thread in drivers:
            thread.join(30)
        events.wait_registered(2)
        assert coordinator.flush(10)
        server.barrier()
        frames = server.snapshot()
        for wf in workflows:
            seen: set[str] = set()
            got: list[tuple[str, str, str, str]] = []
            for f in frames:
                if f.type != "phase_changed" or f.workflow_id != wf or f.message is None:
                    continue
                if f.message.id in seen:
                    continue  # resent after the drop: same message, same id
                seen.add(f.message.id)
                step = transitions([f], wf)[0]
                if got and got[-1] == step:
                    continue  # the re-assertion after ``registered``
                got.append(step)
            expected = [
                ("pending", "pre-flight", "", ""),
                ("pre-flight", "planning", "", ""),
                ("planning", "execution", "", ""),
            ]
            prior = ""
            for i in range(cycles):
                expected += [
                    ("execution", "pausing", f"pause {i}", prior),
                    ("pausing", "paused", f"pause {i}", f"cp-{i}"),
                    ("paused", "resuming", "resume requested", f"cp-{i}"),
                    ("resuming", "execution", "resumed", f"cp-{i}"),
                ]
                prior = f"cp-{i}"
            assert got == expected, wf
        stats = coordinator.stats()
        assert stats.dropped == 0
        assert stats.sent == stats.delivered
        coordinator.close()


def test_backoff_delays_grow_by_the_factor_up_to_the_cap_with_jitter() -> None:
    config = Config(
        reconnect_initial_delay=0.5, reconnect_backoff_factor=3.0, reconnect_max_delay=10.0
    )
    nominal = [0.5, 1.5, 4.5, 10.0, 10.0, 10.0]

    class Fixed(random.Random):
        def __init__(self, value: float) -> None:
            super().__init__()
            self.value = value

        def random(self) -> float:
            return self.value

    for value, factor in ((0.0, 0.8), (0.5, 0.9)):
        delays = backoff_delays(config, Fixed(value))
        got = [next(delays) for _ in nominal]
        assert got == pytest.approx([n * factor for n in nominal])
    rng = random.Random(1234)
    delays = backoff_delays(config, rng)
    for n in nominal + [10.0] * 100:
        delay = next(delays)
        assert 0.8 * n <= delay <= n
    spread = {round(next(backoff_delays(Config())), 6) for _ in range(50)}
    assert len(spread) > 1  # real jitter by default
    assert all(0.8 <= d <= 1.0 for d in spread)


def test_default_backoff_follows_the_reference() -> None:
    delays = backoff_delays(Config(), random.Random(7))
    got = [next(delays) for _ in range(8)]
    for delay, nominal in zip(got, [1, 2, 4, 8, 16, 30, 30, 30], strict=True):
        assert 0.8 * nominal <= delay <= nominal


def test_gives_up_after_max_attempts_consecutive_failures(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="when_coordinator")
    coordinator = Coordinator(
        fast_config(f"ws://127.0.0.1:{closed_port()}/x", reconnect_max_attempts=3)
    )
    coordinator.send_progress("wf", "act", 5.0)
    coordinator.connect()
    join_client_thread(coordinator, 10)
    stats = coordinator.stats()
    assert stats.connect_failures == 3
    assert stats.connects == 0
    assert stats.dropped_by_kind == {"progress": 1}
    assert stats.drop_reasons == {"gave up reconnecting": 1}
    assert any("giving up" in r.getMessage() for r in caplog.records)
    dial_warnings = [r for r in caplog.records if "cannot connect" in r.getMessage()]
    assert len(dial_warnings) == 1  # rate-limited, not one per attempt
    assert coordinator.flush(1) is True  # nothing left to wait for
    coordinator.close()


def test_the_attempt_count_resets_after_a_successful_connection() -> None:
    server = ScriptedServer()
    server.start()
    port = server.port
    server.stop()
    coordinator = Coordinator(
        fast_config(
            f"ws://127.0.0.1:{port}/v1/coordination",
            reconnect_max_attempts=3,
            reconnect_initial_delay=0.25,
            reconnect_backoff_factor=1.0,
            reconnect_max_delay=0.25,
        )
    )
    events = Events(coordinator)
    try:
        coordinator.connect()
        wait_until(lambda: coordinator.stats().connect_failures >= 1, 5, "a first failure")
        server.start(port)
        events.wait_registered(1)
        before = coordinator.stats().connect_failures
        assert 1 <= before < 3
        server.stop()
        join_client_thread(coordinator, 10)
        assert coordinator.stats().connect_failures == before + 3
    finally:
        server.stop()
        coordinator.close()


# ---------------------------------------------------------------------- keepalive


def test_a_silent_peer_is_detected_and_redialled() -> None:
    ping_interval, pong_timeout = 0.2, 0.3
    with RawServer("silent") as raw:
        coordinator = Coordinator(
            fast_config(raw.url, ping_interval=ping_interval, pong_timeout=pong_timeout)
        )
        events = Events(coordinator)
        coordinator.connect()
        events.wait("connected", 1, 5)
        upgraded_at = time.monotonic()
        # Dead once a ping goes unanswered for pong_timeout (plus at most pong_timeout more
        # waiting for the dead peer to close, as websockets does).
        events.wait("disconnected", 1, ping_interval + 2 * pong_timeout + 1.0)
        detected = time.monotonic() - upgraded_at
        assert detected >= ping_interval + pong_timeout - 0.05  # not before the pong was due
        events.wait("connected", 2, 1.0)  # dialled again, and the upgrade completed
        # The server counts the upgrade once its response is written, which may come just
        # after the client has read it.
        wait_until(lambda: raw.upgraded >= 2, 2.0, "the server to count the second upgrade")
        assert raw.accept_times[1] - upgraded_at < ping_interval + 2 * pong_timeout + 1.0
        assert not coordinator.is_registered  # the silent peer never answered register
    coordinator.close(0.5)


def test_a_live_hub_keeps_the_connection_with_short_ping_settings() -> None:
    with ScriptedServer() as server:
        coordinator = Coordinator(fast_config(server.url, ping_interval=0.05, pong_timeout=0.2))
        lost = threading.Event()
        coordinator.on_disconnected(lost.set)
        coordinator.connect()
        assert coordinator.wait_registered(5)
        assert not lost.wait(1.0)  # about twenty pings answered in that time
        assert coordinator.stats().connects == 1
        coordinator.close()


# ---------------------------------------------------------------------- TLS and tokens


@dataclass
class Tls:
    server_context: ssl.SSLContext
    ca_file: str


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Tls:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(context)
    path = tmp_path_factory.mktemp("tls") / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return Tls(context, str(path))


def test_wss_with_the_test_ca_works_and_sends_the_bearer_token(tls: Tls) -> None:
    with ScriptedServer(ssl=tls.server_context, token="tls-token-1") as server:
        assert server.url.startswith("wss://")
        config = fast_config(server.url, ca_file=tls.ca_file, auth_token="tls-token-1")
        with Coordinator(config) as coordinator:
            assert coordinator.wait_registered(5)
            coordinator.send_progress("wf-tls", "act", 42.0)
            assert coordinator.flush(5)
            server.barrier()
            assert server.connections[0].headers["Authorization"] == "Bearer tls-token-1"
            assert [f.payload["percent"] for f in server.of_type("progress")] == [42]


def test_wss_without_the_ca_fails_and_sends_nothing(tls: Tls) -> None:
    with ScriptedServer(ssl=tls.server_context) as server:
        coordinator = Coordinator(fast_config(server.url, reconnect_max_attempts=3))
        coordinator.send_progress("wf", "act", 1.0)
        coordinator.connect()
        join_client_thread(coordinator, 10)
        assert coordinator.stats().connect_failures == 3
        assert coordinator.stats().connects == 0
        assert server.connections == []
        assert server.frames == []
        coordinator.close()


def test_wss_puts_nothing_in_clear_on_the_wire(tls: Tls) -> None:
    with RawServer("record") as raw:
        url = f"wss://127.0.0.1:{raw.port}/v1/coordination"
        config = fast_config(
            url,
            ca_file=tls.ca_file,
            auth_token="clear-text-token",
            open_timeout=0.5,
            reconnect_max_attempts=1,
        )
        coordinator = Coordinator(config)
        coordinator.send_progress("wf-secret", "act", 1.0)
        coordinator.connect()
        raw.wait_for(lambda r: len(r.all_bytes()) > 0, 5, "a client hello")
        join_client_thread(coordinator, 10)
        sent = raw.all_bytes()
        assert sent[:1] == b"\x16"  # a TLS handshake record
        for clear in (b"GET ", b"Upgrade", b"X-Service-Name", b"clear-text-token", b"wf-secret"):
            assert clear not in sent
        coordinator.close()


def test_a_wrong_token_is_refused_and_never_logged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    token = "wrong-token-7f3a9c"
    with ScriptedServer(token="right-token") as server:
        config = fast_config(server.url, auth_token=token, reconnect_max_attempts=2)
        coordinator = Coordinator(config)
        coordinator.connect()
        join_client_thread(coordinator, 10)
        assert server.rejected_handshakes == 2
        assert coordinator.stats().connect_failures == 2
        assert server.connections == []
        coordinator.close()
    assert any("401" in r.getMessage() for r in caplog.records)
    assert_not_logged(caplog, token)
    assert token not in repr(coordinator.config)


def test_a_right_token_is_never_logged_even_at_debug(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    token = "right-token-4be1"
    with ScriptedServer(token=token) as server:
        with Coordinator(fast_config(server.url, auth_token=token)) as coordinator:
            assert coordinator.wait_registered(5)
        assert server.connections[0].headers["Authorization"] == f"Bearer {token}"
    assert any(r.name.startswith("websockets") for r in caplog.records)  # debug was on
    assert_not_logged(caplog, token)


def assert_not_logged(caplog: pytest.LogCaptureFixture, secret: str) -> None:
    formatter = logging.Formatter()
    for record in caplog.records:
        assert secret not in record.getMessage(), record.name
        if record.exc_info:
            assert secret not in formatter.formatException(record.exc_info)
    assert secret not in caplog.text


def test_tls_settings_are_checked_when_the_client_is_made(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="wss://"):
        Coordinator(Config(when_url="ws://127.0.0.1:1/x", ca_file=str(tmp_path / "ca.pem")))
    with pytest.raises(ConfigError, match="TLS"):
        Coordinator(Config(when_url="wss://127.0.0.1:1/x", ca_file=str(tmp_path / "missing.pem")))


def test_a_url_without_the_hub_path_is_pointed_out_once(caplog: pytest.LogCaptureFixture) -> None:
    """``ws://host:port`` meets a hub that answers 404: say where the endpoint usually is,
    once, however many times the client retries."""
    caplog.set_level(logging.WARNING, "when_coordinator")
    with ThreadedHub(Hub(port=0)) as hub:
        base = hub.url.removesuffix("/v1/coordination")
        coordinator = Coordinator(fast_config(base, reconnect_max_delay=0.05))
        coordinator.connect()
        wait_until(lambda: coordinator.stats().connect_failures >= 5, 10, "five failed attempts")
        coordinator.close(0.5)
    messages = [r.getMessage() for r in caplog.records]
    no_path = [m for m in messages if "has no path" in m]
    not_found = [m for m in messages if "HTTP 404 to the WebSocket upgrade" in m]
    assert len(no_path) == 1
    assert len(not_found) == 1
    assert "/v1/coordination" in no_path[0]
    assert "/v1/coordination" in not_found[0]


def test_a_hub_that_pings_and_never_reads_is_a_dead_peer_and_replies_stay_bounded() -> None:
    """1.29 M queued pongs (867 MB) once: now the replies waiting to be written are bounded,
    and a peer that leaves them unread for ``pong_timeout`` is dropped and re-dialled."""
    pong_timeout = 0.5
    with RawServer("ping-flood", max_pings=150_000) as raw:
        coordinator = Coordinator(fast_config(raw.url, pong_timeout=pong_timeout))
        events = Events(coordinator)
        most = 0
        stop = threading.Event()

        def watch() -> None:  # the reply queue, as often as the GIL lets us look
            nonlocal most
            while not stop.is_set():
                most = max(most, len(coordinator._control))
                stop.wait(0.001)

        watcher = threading.Thread(target=watch)
        watcher.start()
        try:
            coordinator.connect()
            events.wait("disconnected", 1, 20)
            events.wait("connected", 2, 5)  # dialled again
        finally:
            stop.set()
            watcher.join(5)
        stats = coordinator.stats()
        assert stats.inbound_dropped["not answered: hub not reading"] > 0
        assert stats.received > 4 * _CONTROL_LIMIT  # many more pings than replies ever queued
        assert most <= _CONTROL_LIMIT
        coordinator.close(0.5)
