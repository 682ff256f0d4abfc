"""Reliability on a bad network path, through a fault-injecting proxy in front of the real hub:
a half-open connection (both directions black-holed, nothing closed), a hub that stops
reading, and ``wss://`` through a TLS-terminating proxy with trusted and untrusted
certificates."""

from __future__ import annotations

import gc
import logging
import ssl
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme
from opentelemetry.sdk.trace import TracerProvider

from tests.support.faults import (
    Ledger,
    Proxy,
    StatsWatch,
    check_in_order,
    percentile,
    soak,
    stats_balanced,
)
from tests.support.scripted_server import fast_config, wait_until
from when_coordinator import Coordinator, workflow
from when_coordinator.hub import Hub, ThreadedHub


def drive_to_execution(ledger: Ledger, workflow_id: str) -> None:
    phases = ledger.coordinator.phases
    phases.register_workflow(workflow_id)
    ledger.created(workflow_id)
    for phase in ("pre-flight", "planning", "execution"):
        phases.transition_to(workflow_id, phase, f"{workflow_id} to {phase}")


def wait_applied(hub: ThreadedHub, ledger: Ledger, workflow_id: str, message: str) -> None:
    """Send a last progress and wait until the hub applied it: the hub applies a connection's
    frames in order, so everything sent before it is applied too."""
    ledger.progress(workflow_id, 100.0, message)
    hub.wait_for(
        lambda h: (
            workflow_id in h.hub.workflows and h.hub.workflows[workflow_id].message == message
        ),
        15,
    )


def check_state_delivered(hub: ThreadedHub, ledger: Ledger, workflows: list[str]) -> None:
    """Every state message the client accepted is at the hub, in order, at least once."""
    entries = ledger.snapshot()
    known = hub.workflows
    for wf in workflows:
        state = known[wf]
        history = [
            (
                c.from_phase.value if c.from_phase else "",
                c.to_phase.value,
                c.reason,
                c.checkpoint_id,
            )
            for c in state.history
        ]
        sent = Ledger.of(entries, "phase_changed", wf)
        check_in_order(history, sent, sent, wf)
        sent_checkpoints = Ledger.of(entries, "checkpoint", wf)
        held = [c.checkpoint_id for c in state.checkpoints if c.checkpoint_id in sent_checkpoints]
        check_in_order(held, sent_checkpoints, sent_checkpoints, f"{wf} checkpoints")
        errors = [e.error for e in state.errors]
        sent_errors = Ledger.of(entries, "error", wf)
        check_in_order(errors, sent_errors, sent_errors, f"{wf} errors")
        assert state.phase is ledger.coordinator.phases.get_phase(wf)


class Connection:
    """When the client's connections end and how many registrations it got."""

    def __init__(self, coordinator: Coordinator) -> None:
        self.lost: list[float] = []
        self.registered = 0
        self._cond = threading.Condition()
        coordinator.on_disconnected(self._lost)
        coordinator.on_registered(self._registered)

    def _lost(self) -> None:
        with self._cond:
            self.lost.append(time.monotonic())
            self._cond.notify_all()

    def _registered(self, _payload: object) -> None:
        with self._cond:
            self.registered += 1
            self._cond.notify_all()

    def wait_registered(self, count: int, timeout: float) -> None:
        with self._cond:
            assert self._cond.wait_for(lambda: self.registered >= count, timeout), (
                f"not registered {count} times within {timeout} s"
            )


# ---------------------------------------------------------------------- half-open


@pytest.mark.parametrize("traffic", [False, True], ids=["quiet", "sending"])
@pytest.mark.parametrize("round_", soak(10))
def test_a_half_open_connection_is_noticed_within_the_pong_timeout_and_recovered(
    traffic: bool,
    round_: int,
) -> None:
    ping_interval, pong_timeout, open_timeout = 0.4, 0.6, 1.0
    with ThreadedHub(Hub(port=0)) as hub, Proxy(hub.port) as proxy:
        coordinator = Coordinator(
            fast_config(
                proxy.url(),
                service_name="half-open",
                ping_interval=ping_interval,
                pong_timeout=pong_timeout,
                open_timeout=open_timeout,
                reconnect_max_delay=0.2,
            )
        )
        ledger = Ledger(coordinator)
        connection = Connection(coordinator)
        workflows = [f"wf-{i}" for i in range(4)]
        try:
            coordinator.connect()
            connection.wait_registered(1, 10)
            with StatsWatch(coordinator) as watch:
                for wf in workflows:
                    drive_to_execution(ledger, wf)
                wait_applied(hub, ledger, "wf-marker", "before the black hole")

                proxy.blackhole()  # both directions, nothing closed: a half-open path
                cut = time.monotonic()
                if traffic:
                    ledger.progress(workflows[0], 5.0, "into the void")
                wait_until(lambda: not coordinator.is_connected, 10, "the client to notice")
                noticed = time.monotonic() - cut
                # While the path is dead: workflow state keeps being accepted and queued, and
                # the client keeps re-dialling (each new connection black-holed as well).
                for i, wf in enumerate(workflows):
                    phases = coordinator.phases
                    phases.pause(wf, f"{wf} pause while cut off")
                    ledger.checkpoint(wf, f"{wf}-cp")
                    phases.complete_pause(wf, f"{wf}-cp")
                    phases.resume(wf, f"{wf}-cp")
                    phases.complete_resume(wf)
                    ledger.error(wf, f"{wf} hiccup {i}")
                proxy.wait_for(lambda p: p.accepted >= 2, 10)
                assert not coordinator.is_registered
                assert coordinator.stats().queued > 0

                proxy.restore()  # the path returns: new connections are forwarded again
                back = time.monotonic()
                connection.wait_registered(2, open_timeout + 5.0)
                recovered = time.monotonic() - back
                for wf in workflows:
                    coordinator.phases.complete(wf)
                wait_applied(hub, ledger, "wf-marker", "after the black hole")
                assert coordinator.flush(10)
            watch.check()

            # Dead past pong_timeout after the last sign of life: a quiet connection is
            # pinged every ping_interval; a sending one is checked right after it sends.
            limit = pong_timeout if traffic else ping_interval + pong_timeout
            assert noticed <= limit + 0.3, f"noticed after {noticed:.2f} s (limit {limit} s)"
            assert recovered <= open_timeout + 1.0, f"recovered after {recovered:.2f} s"
            check_state_delivered(hub, ledger, workflows)
            stats = coordinator.stats()
            assert stats.dropped == 0
            assert stats.sent == stats.delivered
            assert (stats.queued, stats.inflight) == (0, 0)
            assert stats.connect_failures >= 1  # the dials that met the black hole
        finally:
            coordinator.close(1.0)


@pytest.mark.parametrize("round_", soak(10))
def test_state_resent_after_lost_acknowledgements_is_applied_once(round_: int) -> None:
    """The hub gets every message but its acknowledgements are lost: the client declares the
    connection dead, reconnects and sends everything again with the same ids and timestamps.
    The hub applies each transition, checkpoint and error once."""
    with ThreadedHub(Hub(port=0)) as hub, Proxy(hub.port) as proxy:
        coordinator = Coordinator(
            fast_config(proxy.url(), service_name="resender", ping_interval=0.3, pong_timeout=0.5)
        )
        ledger = Ledger(coordinator)
        connection = Connection(coordinator)
        workflows = [f"wf-{i}" for i in range(3)]
        try:
            coordinator.connect()
            connection.wait_registered(1, 10)
            for wf in workflows:
                drive_to_execution(ledger, wf)
            wait_applied(hub, ledger, "wf-marker", "acknowledged")
            assert coordinator.flush(5)

            proxy.mute()
            phases = coordinator.phases
            for wf in workflows:
                phases.pause(wf, f"{wf} pause")
                ledger.checkpoint(wf, f"{wf}-cp")
                phases.complete_pause(wf, f"{wf}-cp")
                phases.resume(wf, f"{wf}-cp")
                phases.complete_resume(wf)
                ledger.error(wf, f"{wf} hiccup")
            wait_applied(hub, ledger, "wf-marker", "never acknowledged")
            connection.wait_registered(2, 10)  # dead past pong_timeout, then a new connection
            for wf in workflows:
                phases.complete(wf)
            wait_applied(hub, ledger, "wf-marker", "acknowledged again")
            assert coordinator.flush(5)
        finally:
            coordinator.close(1.0)

        entries = ledger.snapshot()
        received = [r.message for r in hub.received if r.message.type == "phase_changed"]
        assert len(received) > len(Ledger.of(entries, "phase_changed"))  # resent, arrived twice
        known = hub.workflows
        for wf in workflows:
            state = known[wf]
            history = [
                (
                    c.from_phase.value if c.from_phase else "",
                    c.to_phase.value,
                    c.reason,
                    c.checkpoint_id,
                )
                for c in state.history
            ]
            assert history == Ledger.of(entries, "phase_changed", wf), wf
            checkpoints = [c.checkpoint_id for c in state.checkpoints]
            assert checkpoints == Ledger.of(entries, "checkpoint", wf), wf
            assert [e.error for e in state.errors] == Ledger.of(entries, "error", wf), wf
            assert state.phase.value == "completed"


# ---------------------------------------------------------------------- a hub that stops reading


def timed_calls(coordinator: Coordinator, calls: int, report: object) -> list[int]:
    """Durations (ns) of ``calls`` application calls, alternating ``send_progress`` and
    ``wf.progress``; the stats are checked every 100 calls."""
    wf = report
    durations: list[int] = []
    bound = coordinator.config.outbox_max_bytes
    for i in range(calls):
        started = time.perf_counter_ns()
        if i % 2:
            # Many workflows: one workflow's updates would replace each other while queued.
            coordinator.send_progress(f"wf-{i % 4000}", "act", i % 100, "load", "m" * 120)
        else:
            wf.progress(i % 100, "load", "m" * 120)  # type: ignore[attr-defined]
        durations.append(time.perf_counter_ns() - started)
        if i % 100 == 0:
            stats = coordinator.stats()
            assert stats.queued_bytes <= bound
            assert stats_balanced(stats)
    return durations


@pytest.mark.parametrize("round_", soak(5))
def test_a_hub_that_stops_reading_never_blocks_the_caller_and_memory_stays_bounded(
    round_: int,
) -> None:
    """Non-blocking is a correctness property here, not a benchmark: calls that only enqueue
    stay in the microseconds whether the hub reads or not (bounds are generous)."""
    bound = 256 * 1024
    # Tens of thousands of calls: the hub's flood protection, not under test here, would
    # throttle the backlog that arrives when the hub reads again.
    unlimited = Hub(port=0, rate_limit=1e9, rate_burst=10**9, flood_close_after=None)
    with ThreadedHub(unlimited) as hub, Proxy(hub.port) as proxy:
        coordinator = Coordinator(
            fast_config(
                proxy.url(),
                service_name="slow-hub",
                outbox_max_messages=4_000,
                outbox_max_bytes=bound,
                ping_interval=30.0,  # a stalled hub is slow, not dead, for this test
                pong_timeout=30.0,
            )
        )
        provider = TracerProvider()
        try:
            coordinator.connect()
            assert coordinator.wait_registered(10)
            with StatsWatch(coordinator) as watch:
                with workflow("slow", coordinator=coordinator, tracer_provider=provider) as wf:
                    gc.collect()
                    gc.disable()  # a collection pause is not the client blocking
                    try:
                        flowing = timed_calls(coordinator, 10_000, wf)
                        proxy.stall()
                        before = coordinator.stats()
                        upstream = proxy.upstream_bytes()
                        stalled = timed_calls(coordinator, 30_000, wf)
                        during = coordinator.stats()
                    finally:
                        gc.enable()
                    assert proxy.upstream_bytes() == upstream  # the hub really got nothing
                    proxy.resume()
                    wf_id = wf.id
                assert coordinator.flush(30)
            watch.check()
            wait_applied(hub, Ledger(coordinator), "wf-marker", "the end")
        finally:
            coordinator.close(1.0)
            provider.shutdown()

    for name, durations in (("flowing", flowing), ("stalled", stalled)):
        p99 = percentile([d / 1e6 for d in durations], 0.99)
        worst = max(durations) / 1e6
        assert p99 < 1.0, f"{name}: p99 {p99:.3f} ms"
        # A call that waited for the stalled hub would wait until resume(), after the loop:
        # seconds, not the tens of milliseconds a busy two-core machine may deschedule a thread.
        assert worst < 500.0, f"{name}: slowest call {worst:.1f} ms"
    # The stall was real: the outbox filled and shed progress, counted, within its bounds.
    assert during.dropped > before.dropped
    assert set(during.dropped_by_kind) <= {"progress"}
    assert watch.max_queued_bytes <= bound
    final = coordinator.stats()
    assert final.sent == final.delivered + final.dropped
    assert final.dropped_by_kind.get("phase_changed", 0) == 0, final.drop_reasons
    states = hub.workflows
    assert states[wf_id].phase.value == "completed"
    # Shedding drops the oldest progress first: the newest of the stalled calls all arrive.
    for i in range(30_000 - 399, 30_000, 2):
        assert states[f"wf-{i % 4000}"].progress == i % 100, i


# ---------------------------------------------------------------------- TLS


@dataclass
class Pki:
    ca_file: str
    trusted: ssl.SSLContext
    unknown_ca: ssl.SSLContext
    wrong_host: ssl.SSLContext


def server_context(cert: trustme.LeafCert) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(context)
    return context


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    ca, stranger = trustme.CA(), trustme.CA()
    path: Path = tmp_path_factory.mktemp("pki") / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return Pki(
        ca_file=str(path),
        trusted=server_context(ca.issue_cert("127.0.0.1", "localhost")),
        unknown_ca=server_context(stranger.issue_cert("127.0.0.1", "localhost")),
        wrong_host=server_context(ca.issue_cert("hub.example.org")),
    )


needs_start_tls = pytest.mark.skipif(
    sys.version_info < (3, 11), reason="the TLS-terminating proxy needs StreamWriter.start_tls"
)


@needs_start_tls
def test_wss_through_a_tls_terminating_proxy_registers_and_delivers(pki: Pki) -> None:
    with ThreadedHub(Hub(port=0)) as hub, Proxy(hub.port, tls=pki.trusted) as proxy:
        assert proxy.url().startswith("wss://")
        coordinator = Coordinator(fast_config(proxy.url(), ca_file=pki.ca_file))
        ledger = Ledger(coordinator)
        try:
            coordinator.connect()
            assert coordinator.wait_registered(10)
            drive_to_execution(ledger, "wf-tls")
            coordinator.phases.complete("wf-tls")
            wait_applied(hub, ledger, "wf-tls-marker", "over TLS")
            check_state_delivered(hub, ledger, ["wf-tls"])
            assert proxy.tls_failures == 0
            assert proxy.forwarded == 1
        finally:
            coordinator.close(1.0)


@needs_start_tls
@pytest.mark.parametrize("case", ["unknown-ca", "wrong-host"])
def test_an_untrusted_certificate_fails_clearly_and_never_falls_back_to_plaintext(
    pki: Pki, case: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="when_coordinator")
    context = pki.unknown_ca if case == "unknown-ca" else pki.wrong_host
    with ThreadedHub(Hub(port=0)) as hub, Proxy(hub.port, tls=context) as proxy:
        coordinator = Coordinator(
            fast_config(proxy.url(), ca_file=pki.ca_file, reconnect_max_attempts=3)
        )
        coordinator.send_progress("wf-secret", "act", 1.0)
        coordinator.connect()
        thread = coordinator._thread
        assert thread is not None
        thread.join(15)  # it gives up after three failed attempts
        assert not thread.is_alive()
        stats = coordinator.stats()
        coordinator.close(0.5)
        assert (stats.connect_failures, stats.connects, stats.registered) == (3, 0, False)
        assert stats.drop_reasons == {"gave up reconnecting": 1}
        # Every attempt was TLS, refused by the client's verification: the proxy saw the
        # client's alert, never a plaintext HTTP request, and forwarded nothing to the hub.
        proxy.wait_for(lambda p: p.tls_failures == 3, 5)
        assert proxy.accepted == 3
        assert proxy.forwarded == 0
        assert all("HTTP_REQUEST" not in error for error in proxy.tls_errors), proxy.tls_errors
        assert hub.connections == {}
    failures = [r.getMessage() for r in caplog.records if "cannot connect" in r.getMessage()]
    assert failures, "the failure was not logged"
    assert "certificate verify failed" in failures[0].lower(), failures[0]
    if case == "wrong-host":
        assert "mismatch" in failures[0].lower(), failures[0]
