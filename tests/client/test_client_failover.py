"""Failover: several hub URLs in ``when_url``, tried in turn on failure.

Real hubs on loopback: reference hubs on threads (``ThreadedHub(Hub(...))``) and, for the kill,
``when-coordinator hub`` subprocesses (``faults.HubProcess``) killed with SIGKILL.
"""

from __future__ import annotations

import logging
import re
import socket
import subprocess
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

from tests.support.faults import (
    Disconnects,
    HubProcess,
    Ledger,
    StatsWatch,
    check_in_order,
    free_port,
    phase_history,
    stats_balanced,
    to_execution,
)
from tests.support.programs import require_program
from tests.support.scripted_server import fast_config, wait_until
from when_coordinator import Config, ConfigError, Coordinator
from when_coordinator.cli import HubClient
from when_coordinator.hub import Hub, ThreadedHub

PATH = "/v1/coordination"
ROOT = Path(__file__).resolve().parents[2]


def dead_url() -> str:
    """A coordination URL on a loopback port nothing listens on: every dial is refused."""
    return f"ws://127.0.0.1:{free_port()}{PATH}"


def hub_api(url: str, path: str, **params: str) -> Any:
    """GET from the operator HTTP API of the hub serving ``url`` (thread or process)."""
    return HubClient(url).request("GET", path, params or None)


# ---------------------------------------------------------------------- configuration


def test_when_url_lists_several_urls_and_each_one_is_checked() -> None:
    config = Config(when_url=f" ws://a:1{PATH}, wss://b:2{PATH} ,")
    assert config.urls == (f"ws://a:1{PATH}", f"wss://b:2{PATH}")
    assert config.enabled
    assert not Config(when_url=" , ").enabled

    with pytest.raises(ConfigError, match=r"when_url entry 'http://b:2/x'.*ws:// or wss://"):
        Config(when_url="ws://a:1/x,http://b:2/x")
    with pytest.raises(ConfigError, match=r"when_url entry 'ws://b:port/x'.*invalid port"):
        Config(when_url="ws://a:1/x, ws://b:port/x")
    with pytest.raises(ConfigError, match=r"twice"):
        Config(when_url="ws://a:1/x,ws://a:1/x")
    # The error names the bad URL without the credentials it may carry.
    with pytest.raises(ConfigError) as raised:
        Config(when_url="ws://a:1/x,http://user:s3cret@b:2/x?token=s3cret")
    assert "s3cret" not in str(raised.value)
    assert "'http://b:2/x'" in str(raised.value)


def test_when_url_from_the_environment_names_the_variable_and_the_bad_url() -> None:
    env = {"WHEN_URL": f"ws://a:1{PATH},ws://b:2{PATH}"}
    assert Config.from_env(env).urls == (f"ws://a:1{PATH}", f"ws://b:2{PATH}")
    with pytest.raises(ConfigError, match=r"'ftp://b:2/x'.*\(set by WHEN_URL\)"):
        Config.from_env({"WHEN_URL": "ws://a:1/x,ftp://b:2/x"})


def test_tls_files_need_every_url_to_be_wss(tmp_path: Path) -> None:
    """A ``ws://`` URL beside ``wss://`` ones would be a plaintext fallback on failover."""
    config = Config(when_url=f"wss://a:1{PATH},ws://b:2{PATH}", ca_file=str(tmp_path / "ca.pem"))
    with pytest.raises(ConfigError, match=rf"wss://.*'ws://b:2{PATH}'"):
        Coordinator(config)


def test_the_path_hint_is_given_for_each_url_without_a_path(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, "when_coordinator")
    with_path, without = dead_url(), dead_url().removesuffix(PATH)
    coordinator = Coordinator(fast_config(f"{with_path},{without}"))
    coordinator.connect()
    coordinator.close(0.1)
    hints = [r.getMessage() for r in caplog.records if "has no path" in r.getMessage()]
    assert len(hints) == 1
    assert without in hints[0]


# ---------------------------------------------------------------------- rotating


def test_the_client_reaches_the_second_hub_when_the_first_is_down_at_start(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, "when_coordinator")
    down = dead_url()
    with ThreadedHub(Hub(port=0)) as hub:
        coordinator = Coordinator(fast_config(f"{down},{hub.url}", service_id="svc-start"))
        try:
            coordinator.connect()
            assert coordinator.wait_registered(10)
            stats = coordinator.stats()
            assert stats.url == hub.url
            assert stats.connect_failures >= 1
            assert stats.connects == 1
            hub.wait_for(lambda h: "svc-start" in h.services)
        finally:
            coordinator.close(2.0)
    assert coordinator.stats().url == ""
    messages = [r.getMessage() for r in caplog.records]
    assert any(f"cannot connect to the hub at {down}" in m for m in messages)
    assert any(f"connected to the hub at {hub.url} (URL 2 of 2)" in m for m in messages)


def test_attempts_count_across_urls_and_every_url_is_tried(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """``reconnect_max_attempts`` counts every dial, whichever URL it went to."""
    caplog.set_level(logging.WARNING, "when_coordinator")
    first, second = dead_url(), dead_url()
    coordinator = Coordinator(
        fast_config(f"{first},{second}", reconnect_max_attempts=4, reconnect_max_delay=0.05)
    )
    gave_up = "giving up on the hub after 4 failed attempts"
    try:
        coordinator.connect()
        wait_until(lambda: gave_up in caplog.text, 10, "the client to give up")
        assert coordinator.stats().connect_failures == 4
    finally:
        coordinator.close(0.5)
    dialled = [r.getMessage() for r in caplog.records if "cannot connect" in r.getMessage()]
    assert any(first in m and second not in m for m in dialled)
    assert any(second in m and first not in m for m in dialled)


def test_stats_show_the_url_without_credentials() -> None:
    with ThreadedHub(Hub(port=0)) as hub:
        url = hub.url.replace("ws://", "ws://user:s3cret@") + "?token=s3cret"
        coordinator = Coordinator(fast_config(f"{dead_url()},{url}"))
        try:
            coordinator.connect()
            assert coordinator.wait_registered(10)
            assert coordinator.stats().url == hub.url
        finally:
            coordinator.close(2.0)


def test_one_url_redials_the_same_hub_as_before() -> None:
    """A list of one: the hub restarted on the same port gets the client back."""
    port = free_port()
    with ThreadedHub(Hub(port=port)) as hub:
        coordinator = Coordinator(fast_config(hub.url))
        events = Disconnects(coordinator)
        coordinator.connect()
        events.wait("registered", 1)
        assert coordinator.stats().url == hub.url
    try:
        events.wait("disconnected", 1)
        with ThreadedHub(Hub(port=port)) as again:
            events.wait("registered", 2)
            assert coordinator.stats().url == again.url
            assert coordinator.stats().connects == 2
    finally:
        coordinator.close(2.0)


# ---------------------------------------------------------------------- failing over mid-run

WORKFLOWS = [f"wf-fo-{i}" for i in range(4)]
IDLE = "wf-fo-idle"


def stream(ledger: Ledger, r: int) -> None:
    """One round of state and bulk for every workflow: a pause cycle, progress, logs."""
    phases = ledger.coordinator.phases
    for wf in WORKFLOWS:
        cp = f"{wf}-cp{r}"
        phases.pause(wf, f"{wf} pause {r}")
        ledger.checkpoint(wf, cp)
        phases.complete_pause(wf, cp)
        phases.resume(wf, cp)
        phases.complete_resume(wf)
        ledger.progress(wf, float(r), f"{wf} progress {r}")
        for i in range(5):
            ledger.log(f"{wf} log {r}.{i}")


class Hubs:
    """Two hubs, ``a`` and ``b``: threads closed cleanly, or processes killed (SIGKILL)."""

    def __init__(self, kind: str, tmp_path: Path, stack: ExitStack) -> None:
        self.kind = kind
        self.urls: list[str] = []
        self._stop: list[Callable[[], None]] = []
        for name in ("a", "b"):
            if kind == "process":
                workdir = tmp_path / name
                workdir.mkdir()
                process = stack.enter_context(HubProcess(workdir))
                self.urls.append(process.url)
                self._stop.append(process.kill)
            else:
                threaded = stack.enter_context(ThreadedHub(Hub(port=0)))
                self.urls.append(threaded.url)
                self._stop.append(threaded.close)

    def stop_a(self) -> None:
        self._stop[0]()


@pytest.fixture(params=["thread", "process"], ids=["closed", "killed"])
def hubs(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Hubs]:
    with ExitStack() as stack:
        yield Hubs(str(request.param), tmp_path, stack)


def test_the_connected_hub_gone_mid_run_the_client_moves_to_the_other_and_loses_nothing(
    hubs: Hubs,
) -> None:
    """Hub ``a`` goes away (closed, or SIGKILLed) while the client streams: the client dials
    ``b``, registers, replays its live workflows and delivers everything ``a`` had not
    acknowledged, each workflow's transitions in order."""
    a, b = hubs.urls
    coordinator = Coordinator(
        fast_config(f"{a},{b}", service_name="failover-test", service_id="svc-failover")
    )
    ledger = Ledger(coordinator)
    events = Disconnects(coordinator)
    try:
        coordinator.connect()
        events.wait("registered", 1)
        assert coordinator.stats().url == a
        with StatsWatch(coordinator) as watch:
            to_execution(ledger, IDLE)  # delivered to ``a`` only: ``b`` learns it by replay
            assert coordinator.flush(10)
            for wf in WORKFLOWS:
                to_execution(ledger, wf)
            for r in range(5):
                stream(ledger, r)
            hubs.stop_a()  # while the client is still sending what it just accepted

            events.wait("disconnected", 1)
            at_drop = events.stats[0]
            assert at_drop.dropped == 0
            assert stats_balanced(at_drop)
            for r in range(5, 10):  # queued while no hub is connected
                stream(ledger, r)
            events.wait("registered", 2)
            assert coordinator.stats().url == b
            for wf in WORKFLOWS[:2]:
                coordinator.phases.complete(wf)
            ledger.progress("wf-fo-last", 100.0, "the end")
            assert coordinator.flush(30)
        watch.check()
        wait_until(
            lambda: (
                "wf-fo-last" in {w["workflow_id"] for w in hub_api(b, "/v1/workflows")["workflows"]}
            ),
            10,
            "hub b to apply the last message",
        )

        stats = coordinator.stats()
        assert (stats.queued, stats.inflight, stats.dropped) == (0, 0, 0)
        assert stats.connects == 2
        services = hub_api(b, "/v1/services")["services"]
        assert [(s["service_id"], s["connected"]) for s in services] == [("svc-failover", True)]

        entries = ledger.snapshot()
        required = entries[at_drop.delivered :]  # all that ``a`` had not acknowledged
        for wf in [*WORKFLOWS, IDLE]:
            doc = hub_api(b, f"/v1/workflows/{wf}", logs="0")
            sent = Ledger.of(entries, "phase_changed", wf)
            history = phase_history(doc)
            check_in_order(history, sent, Ledger.of(required, "phase_changed", wf), wf)
            assert doc["phase"] == coordinator.phases.get_phase(wf).value, wf
            checkpoints = [c["checkpoint_id"] for c in doc["checkpoints"]]
            check_in_order(
                checkpoints,
                Ledger.of(entries, "checkpoint", wf),
                Ledger.of(required, "checkpoint", wf),
                f"{wf} checkpoints",
            )
        # The idle workflow reached ``b`` by the replay alone: its current state, once.
        assert phase_history(hub_api(b, f"/v1/workflows/{IDLE}", logs="0")) == [
            Ledger.of(entries, "phase_changed", IDLE)[-1]
        ]
        required_logs = Ledger.of(required, "log")
        held = [r["message"] for r in hub_api(b, "/v1/logs", limit="100000")["logs"]]
        arrived = [m for m in held if m in set(required_logs)]
        assert sorted(arrived) == sorted(required_logs)
    finally:
        coordinator.close(2.0)


# ---------------------------------------------------------------------- behind a load balancer


def documented_haproxy_config(listen: int, servers: list[int]) -> str:
    """The HAProxy sample of docs/operations.md, on loopback, without TLS."""
    page = (ROOT / "docs" / "operations.md").read_text(encoding="utf-8")
    blocks = re.findall(r"^```[^\n]*\n(.*?)^```", page, re.S | re.M)
    sample = next(b for b in blocks if "frontend when_hub" in b)
    sample = re.sub(r"bind \S+ ssl crt \S+", f"bind 127.0.0.1:{listen}", sample)
    sample = re.sub(r"\n    server .*", "", sample)
    return sample + "".join(f"    server hub{i} 127.0.0.1:{p}\n" for i, p in enumerate(servers))


def accepts(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(1.0)
        return probe.connect_ex(("127.0.0.1", port)) == 0


def test_the_documented_haproxy_configuration_moves_a_client_off_a_killed_hub(
    tmp_path: Path,
) -> None:
    """One load-balancer URL: the hub process behind it is SIGKILLed, the client re-dials the
    same URL and registers on the other instance (the sample's health check on /healthz)."""
    haproxy = require_program("haproxy", "haproxy")
    processes = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        processes.append(HubProcess(tmp_path / name))
    with ExitStack() as stack:
        for process in processes:
            stack.enter_context(process)
        listen = free_port()
        config = tmp_path / "haproxy.cfg"
        config.write_text(documented_haproxy_config(listen, [p.port for p in processes]))
        balancer = subprocess.Popen(
            [haproxy, "-db", "-f", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        stack.callback(balancer.wait, 10)
        stack.callback(balancer.kill)
        wait_until(lambda: accepts(listen), 10, "haproxy to listen")

        url = f"ws://127.0.0.1:{listen}{PATH}"
        coordinator = Coordinator(fast_config(url, service_id="svc-lb"))
        stack.callback(coordinator.close, 2.0)
        events = Disconnects(coordinator)
        coordinator.connect()
        events.wait("registered", 1)
        coordinator.phases.register_workflow("wf-lb")
        assert coordinator.flush(10)

        def holder() -> HubProcess | None:
            for process in processes:
                if process.running:
                    services = process.api("/v1/services")["services"]
                    if [(s["service_id"], s["connected"]) for s in services] == [("svc-lb", True)]:
                        return process
            return None

        wait_until(lambda: holder() is not None, 10, "a hub to hold the service")
        first = holder()
        assert first is not None
        first.kill()
        events.wait("registered", 2)
        coordinator.phases.transition_to("wf-lb", "pre-flight", "after the failover")
        assert coordinator.flush(10)
        other = next(p for p in processes if p is not first)
        wait_until(lambda: holder() is other, 10, "the other hub to hold the service")
        assert other.workflow("wf-lb")["phase"] == "pre-flight"
        assert coordinator.stats().url == url
