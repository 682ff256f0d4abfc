"""Several hub instances on one real PostgreSQL (issue 16): one view, commands across
instances, failover, a dropped LISTEN connection, retention, and clear start-up errors.

The server is the session's ``postgres_server`` (tests/support/pgserver.py); each test has a fresh
database (``pg_url``). Without PostgreSQL these tests skip (fail under ``CI=true``).
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest
from websockets.sync.client import ClientConnection, connect

from tests.support.faults import HubProcess, Proxy
from when_coordinator import Config, Coordinator, Phase, PhaseManager
from when_coordinator.cli import HubClient
from when_coordinator.hub import Hub, HubError, ThreadedHub
from when_coordinator.hub.bus import SWITCH_INTERVAL
from when_coordinator.hub.pgstore import (
    HEARTBEAT_SQL,
    RELEASE_COMMAND_SQL,
    SCHEMA_VERSION,
    PostgresStore,
    dumps,
    loads,
)
from when_coordinator.hub.records import StoredLog
from when_coordinator.hub.state import PhaseChange
from when_coordinator.hub.store import StoreBatch
from when_coordinator.protocol import LogEntry, Message, PausePayload, encode

TIMEOUT = 15.0


def start_hub(url: str, name: str, **options: Any) -> ThreadedHub:
    settings: dict[str, Any] = {"lease_timeout": 1.5, "store_interval": 0.05}
    settings.update(options)
    return ThreadedHub(Hub(port=0, db=url, instance_id=name, **settings))


@contextmanager
def hubs(url: str, count: int, **options: Any) -> Iterator[list[ThreadedHub]]:
    with ExitStack() as stack:
        yield [stack.enter_context(start_hub(url, f"hub-{i}", **options)) for i in range(count)]


class Service:
    """A real ``Coordinator`` with a phase manager, and an event per phase it reaches."""

    def __init__(self, url: str, name: str = "etl") -> None:
        self.phases = PhaseManager()
        self.reached: dict[tuple[str, str], threading.Event] = {}
        self._lock = threading.Lock()
        self.phases.on_phase_changed(self._on_phase)
        self.coordinator = Coordinator(
            Config(
                when_url=url,
                service_name=name,
                service_id=name,
                reconnect_initial_delay=0.05,
                reconnect_max_delay=0.3,
                close_timeout=5.0,
            ),
            phases=self.phases,
        )
        self.coordinator.connect()
        assert self.coordinator.wait_registered(TIMEOUT), "the service did not register"

    def _event(self, workflow_id: str, phase: str) -> threading.Event:
        with self._lock:
            return self.reached.setdefault((workflow_id, phase), threading.Event())

    def _on_phase(self, state: Any) -> None:
        self._event(state.workflow_id, state.phase.value).set()

    def wait(self, workflow_id: str, phase: str) -> None:
        assert self._event(workflow_id, phase).wait(TIMEOUT), f"{workflow_id} never {phase}"

    def start(self, workflow_id: str) -> None:
        self.phases.register_workflow(workflow_id, "", "")
        assert self.coordinator.send_workflow_created(workflow_id, action_type="job")
        for phase in (Phase.PRE_FLIGHT, Phase.PLANNING, Phase.EXECUTION):
            self.phases.transition_to(workflow_id, phase)

    def close(self) -> None:
        self.coordinator.close(timeout=5.0)


@contextmanager
def running(url: str) -> Iterator[Service]:
    """A service on the hub at ``url`` with workflow ``wf-1`` started, closed after."""
    service = Service(url)
    try:
        service.start("wf-1")
        yield service
    finally:
        service.close()


def api(http_url: str, path: str, method: str = "GET", **params: str) -> Any:
    return HubClient(http_url, None).request(method, path, params or None)


def phase_on(hub: ThreadedHub, workflow_id: str, phase: str) -> None:
    hub.wait_for(lambda h: h.workflows[workflow_id].phase == phase, TIMEOUT)


def test_a_pause_through_instance_b_reaches_the_service_on_a_and_both_show_it(
    pg_url: str,
) -> None:
    with hubs(pg_url, 3) as (a, b, c), running(a.url) as service:
        for hub in (a, b, c):  # every instance sees the workflow, and the service connected
            phase_on(hub, "wf-1", "execution")
            hub.wait_for(lambda h: h.services["etl"].connected, TIMEOUT)
        sent = api(b.http_url, "/v1/workflows/wf-1/pause", "POST", reason="db work")
        assert sent["service_id"] == "etl"
        service.wait("wf-1", "pausing")
        service.phases.complete_pause("wf-1")
        for hub in (a, b, c):
            phase_on(hub, "wf-1", "paused")
        for hub in (a, b):
            assert api(hub.http_url, "/v1/workflows/wf-1")["phase"] == "paused"
        # status answers across instances, through whichever holds the connection
        answer = c.status("wf-1", timeout=5.0)
        assert answer.phase == "paused"


def test_a_command_across_instances_and_the_answer_back_wait_for_no_store_batch(
    pg_url: str,
) -> None:
    # A batch every 60 s: once the setup's explicit flush is done, nothing below can have
    # come through one (the test's waits all end well within TIMEOUT < 60 s).
    with (
        hubs(pg_url, 2, store_interval=60.0) as (a, b),
        running(a.url) as service,
    ):
        phase_on(a, "wf-1", "execution")
        assert a.flush()  # B learns of the workflow and of the service on A
        phase_on(b, "wf-1", "execution")
        b.wait_for(lambda h: h.services["etl"].connected, TIMEOUT)
        writes = a.store_health()["writes"]  # type: ignore[index]
        b.pause("wf-1", "no batch")
        service.wait("wf-1", "pausing")  # the command reached the service on A
        phase_on(b, "wf-1", "pausing")  # and its answer is in B's view
        service.phases.complete_pause("wf-1")
        phase_on(b, "wf-1", "paused")
        assert b.status("wf-1", timeout=5.0).phase == "paused"  # the answer by NOTIFY
        assert a.store_health()["writes"] == writes  # type: ignore[index]
        # The batch that writes the same changes later applies them once, in order.
        mirrored = b.call(b.hub.bus_health)["workflows_mirrored"]  # type: ignore[index]
        assert a.flush()
        b.wait_for(lambda h: h.hub.bus_health()["workflows_mirrored"] > mirrored, TIMEOUT)  # type: ignore[index]
        history = [(c.from_phase, c.to_phase) for c in b.workflows["wf-1"].history]
        assert history[-3:] == [
            ("planning", "execution"),
            ("execution", "pausing"),
            ("pausing", "paused"),
        ]
        assert b.workflows["wf-1"].phase == "paused"


def test_a_command_given_back_by_an_instance_is_notified_again_and_claimed_where_its_service_is(
    pg_url: str,
) -> None:
    # No batch and no re-scan comes in this test's time: only the notification of the
    # release can bring the command to A, which holds the service.
    with hubs(pg_url, 2, store_interval=60.0) as (a, _b), running(a.url) as service:
        phase_on(a, "wf-1", "execution")
        pause = encode(Message.create(PausePayload(workflow_id="wf-1", reason="given back")))
        with psycopg.connect(pg_url, autocommit=True) as conn:
            row = conn.execute(
                "INSERT INTO when_commands (service_id, origin, message, delivered_by, "
                "delivered_at) VALUES ('etl', 'hub-1', %s, 'hub-1', now()) RETURNING id",
                (pause,),
            ).fetchone()
            assert row is not None
            conn.execute(RELEASE_COMMAND_SQL.encode(), (row[0],))
            service.wait("wf-1", "pausing")
            claimed = conn.execute(
                "SELECT delivered_by FROM when_commands WHERE id = %s", (row[0],)
            ).fetchone()
        assert claimed == ("hub-0",)


def test_a_service_on_an_instance_started_after_the_last_lease_round_is_reachable(
    pg_url: str,
) -> None:
    # Leases renewed every 10 s: A has not yet seen B's lease when B's service shows up.
    with hubs(pg_url, 2, lease_timeout=30.0) as (a, b), running(b.url) as service:
        phase_on(a, "wf-1", "execution")
        a.wait_for(lambda h: h.services["etl"].connected, TIMEOUT)
        a.pause("wf-1")
        service.wait("wf-1", "pausing")


def test_workflows_listed_through_either_instance_are_the_same(pg_url: str) -> None:
    with hubs(pg_url, 2) as (a, b):
        first, second = Service(a.url, "svc-a"), Service(b.url, "svc-b")
        try:
            first.start("wf-a")
            second.start("wf-b")
            for hub in (a, b):
                phase_on(hub, "wf-a", "execution")
                phase_on(hub, "wf-b", "execution")
            listings = []
            for hub in (a, b):
                result = subprocess.run(
                    [
                        sys.executable,
                        "-m",
                        "when_coordinator.cli",
                        "workflows",
                        "--hub",
                        hub.http_url,
                        "--json",
                    ],
                    capture_output=True,
                    text=True,
                    timeout=30,
                    check=False,
                )
                assert result.returncode == 0, result.stderr
                rows = json.loads(result.stdout)
                listings.append(sorted((w["workflow_id"], w["phase"]) for w in rows))
            assert listings[0] == listings[1] == [("wf-a", "execution"), ("wf-b", "execution")]
        finally:
            first.close()
            second.close()


def test_live_events_of_a_service_on_a_reach_an_operator_watching_b(pg_url: str) -> None:
    with hubs(pg_url, 2) as (a, b), running(a.url) as service:
        phase_on(b, "wf-1", "execution")
        with connect(b.operator_url) as ws:  # what the dashboard on B does
            ws.send(json.dumps({"id": 1, "op": "subscribe", "logs": True}))
            assert next_event(ws, "snapshot")
            assert service.coordinator.send_progress("wf-1", "", 42.0, "load", "halfway")
            update = next_event(ws, "workflow", lambda e: e["workflow"]["progress"] == 42.0)
            assert update["workflow"]["service_id"] == "etl"
            service.phases.pause("wf-1", "for a look")
            event = next_event(ws, "phase_changed")
            assert (event["workflow_id"], event["from"], event["to"]) == (
                "wf-1",
                "execution",
                "pausing",
            )
            service.coordinator.log_with_context("warn", "careful", "wf-1")
            assert next_event(ws, "log")["message"] == "careful"


def next_event(
    ws: ClientConnection, kind: str, where: Callable[[dict[str, Any]], bool] = lambda e: True
) -> dict[str, Any]:
    until = time.monotonic() + TIMEOUT
    while True:
        event: dict[str, Any] = json.loads(ws.recv(timeout=max(0.0, until - time.monotonic())))
        if event.get("event") == kind and where(event):
            return event


def test_a_dropped_listen_connection_delays_but_loses_no_command(pg_url: str) -> None:
    with hubs(pg_url, 2) as (a, b), running(a.url) as service:
        phase_on(b, "wf-1", "execution")
        b.wait_for(lambda h: h.services["etl"].connected, TIMEOUT)
        listens = a.call(a.hub.bus_health)["listens"]  # type: ignore[index]
        with psycopg.connect(pg_url, autocommit=True) as conn:
            # A's LISTEN connection is the one that ran LISTEN: kill every session of
            # A's listener and, at the same moment, send the command through B.
            killed = conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND query LIKE 'LISTEN%%' "
                "AND pid <> pg_backend_pid()"
            ).fetchall()
            assert killed, "no LISTEN connection found"
        b.pause("wf-1", "while A was deaf")
        service.wait("wf-1", "pausing")
        assert a.call(a.hub.bus_health)["listens"] > listens  # type: ignore[index]


def test_a_killed_instance_fails_over_in_order_with_commands_sent_meanwhile(
    pg_url: str, tmp_path: Path
) -> None:
    args = ["--lease-timeout", "1.5", "--ping-interval", "1"]
    a = HubProcess(tmp_path / "a", db=pg_url, extra_args=[*args, "--instance-id", "a"])
    b = HubProcess(tmp_path / "b", db=pg_url, extra_args=[*args, "--instance-id", "b"])
    for process in (a, b):
        process.workdir.mkdir()
    # A load balancer in front: new connections go to A, then (A dead) to B.
    with (
        a,
        b,
        Proxy(a.port) as balancer,
        running(balancer.url()) as service,
    ):
        for step in range(5):
            service.coordinator.send_checkpoint("wf-1", f"cp-{step}", "step")
        _poll(lambda: len(b.workflow("wf-1")["checkpoints"]) == 5, "B never saw it all")
        a.kill()
        # B still sees A's lease: the command is written, to be delivered by the holder.
        api(b.http_url, "/v1/workflows/wf-1/pause", "POST", reason="meanwhile")
        _poll(lambda: not etl(b)["connected"], "B never showed A's service disconnected")
        for step in range(5, 8):  # queued in the client while it cannot connect
            service.coordinator.send_checkpoint("wf-1", f"cp-{step}", "step")
        balancer.target_port = b.port
        _poll(lambda: etl(b)["connected"], "the service never reconnected to B")
        service.wait("wf-1", "pausing")  # the command sent meanwhile, delivered by B
        service.phases.complete_pause("wf-1")
        _poll(lambda: b.workflow("wf-1")["phase"] == "paused", "B never saw paused")
        workflow = b.workflow("wf-1")
        history = [(c["from"], c["to"]) for c in workflow["history"]]
        assert history == [
            ("pending", "pre-flight"),
            ("pre-flight", "planning"),
            ("planning", "execution"),
            ("execution", "pausing"),
            ("pausing", "paused"),
        ]
        checkpoints = [c["checkpoint_id"] for c in workflow["checkpoints"]]
        assert checkpoints == [f"cp-{i}" for i in range(8)]


def etl(hub: HubProcess) -> dict[str, Any]:
    services: list[dict[str, Any]] = hub.api("/v1/services")["services"]
    return next(s for s in services if s["service_id"] == "etl")


def _poll(predicate: Callable[[], object], what: str) -> None:
    until = time.monotonic() + TIMEOUT
    while True:
        try:
            if predicate():
                return
        except Exception:
            pass
        assert time.monotonic() < until, what
        time.sleep(0.05)


def test_unreachable_wrong_and_too_new_databases_fail_in_one_clear_line(pg_url: str) -> None:
    with pytest.raises(HubError, match="unreachable"):
        ThreadedHub(Hub(port=0, db="postgresql://nobody@127.0.0.1:1/none")).start()
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE when_meta (key TEXT PRIMARY KEY, value TEXT)")
        conn.execute(
            "INSERT INTO when_meta VALUES ('schema_version', %s)", (str(SCHEMA_VERSION + 1),)
        )
    with pytest.raises(HubError, match="newer than this hub"):
        ThreadedHub(Hub(port=0, db=pg_url)).start()


def test_the_schema_is_created_once_and_state_survives_a_restart(pg_url: str) -> None:
    with start_hub(pg_url, "one") as hub, running(hub.url):
        phase_on(hub, "wf-1", "execution")
        assert hub.flush()
    with start_hub(pg_url, "two") as hub:
        assert hub.workflows["wf-1"].phase == "execution"
        assert [c.to_phase.value for c in hub.workflows["wf-1"].history][-1] == "execution"


def test_retention_drops_old_logs_and_finished_workflows_by_age_and_count(pg_url: str) -> None:
    store = PostgresStore(pg_url, "x", log_limit=3, retention=3600.0)
    store.load()
    with (
        ThreadedHub(Hub(port=0, db=pg_url, log_buffer=3, store_interval=0.05)) as hub,
        running(hub.url) as service,
    ):
        service.start("wf-running")
        for i in range(10):
            service.coordinator.log_with_context("info", f"line {i}", "wf-1")
        service.phases.complete("wf-1")
        phase_on(hub, "wf-1", "completed")
        phase_on(hub, "wf-running", "execution")
        assert service.coordinator.flush(TIMEOUT)
        hub.wait_for(lambda h: len(h.logs_for("wf-1")) >= 3, TIMEOUT)
        assert hub.flush()
    store.prune()
    assert store.counts()["logs"] == 3  # by count: the newest log_limit
    assert store.counts()["workflows"] == 2  # finished within the hour: kept
    with psycopg.connect(pg_url, autocommit=True) as conn:
        finished: dict[str, bool] = dict(
            conn.execute(
                "SELECT workflow_id, finished_at IS NOT NULL FROM when_workflows"
            ).fetchall()
        )
        assert finished == {"wf-1": True, "wf-running": False}
        conn.execute("UPDATE when_logs SET created_at = now() - interval '2 hours'")
        conn.execute("UPDATE when_workflows SET finished_at = finished_at - interval '2 hours'")
    store.prune()
    counts = store.counts()
    store.close()
    assert counts["logs"] == 0
    assert counts["workflows"] == 1  # the running one, whatever its age
    with psycopg.connect(pg_url, autocommit=True) as conn:
        left = conn.execute("SELECT DISTINCT workflow_id FROM when_workflow_records").fetchall()
    assert left == [("wf-running",)]


def test_the_embedded_default_never_imports_psycopg(tmp_path: Path) -> None:
    code = (
        "import sys, asyncio\n"
        "from when_coordinator.hub import Hub\n"
        f"async def main():\n    async with Hub(port=0, db={str(tmp_path / 'h.db')!r}):\n"
        "        pass\n    async with Hub(port=0):\n        pass\n"
        "asyncio.run(main())\n"
        "assert 'psycopg' not in sys.modules, 'psycopg imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_records_beyond_the_limit_per_workflow_and_kind_are_pruned(pg_url: str) -> None:
    store = PostgresStore(pg_url, "x", record_limit=2)
    store.load()
    try:
        for i in range(5):
            change = PhaseChange(Phase.PLANNING, Phase.EXECUTION, f"r{i}", "", float(i), f"t{i}")
            document = {"workflow_id": "wf-1", "phase": "execution"}
            store.write(
                StoreBatch(workflows={"wf-1": document}, records=[("wf-1", "history", change)])
            )
        store.prune()
        assert store.counts()["workflow_records"] == 2
        history = store.load().workflows[0].history
        assert [c.reason for c in history] == ["r3", "r4"]
    finally:
        store.close()


def _change(n: int) -> PhaseChange:
    return PhaseChange(Phase.PLANNING, Phase.EXECUTION, f"r{n}", "", float(n), f"t{n}")


def _log(n: int) -> StoredLog:
    entry = {"timestamp": "2026-12-03T12:00:00Z", "level": "info", "message": f"line {n}"}
    return StoredLog(LogEntry.from_dict({**entry, "workflow_id": "wf-1"}), "svc", float(n))


def test_what_one_instance_writes_another_reads_once_and_in_order(pg_url: str) -> None:
    """A batch is one statement (``when_write_batch``) and a read one more (``CHANGES_SQL``):
    every part of a batch arrives, in order, with its owner and lease; the reader's own rows
    and rows already read do not, and a closing connection does not take over a service
    that another instance holds."""
    a, b = PostgresStore(pg_url, "a"), PostgresStore(pg_url, "b")
    a.load()
    b.load()
    try:
        a._conn().execute(HEARTBEAT_SQL, ("a", ""))
        b.write(StoreBatch(services={"held-by-b": {"service_id": "held-by-b", "connected": True}}))
        seen = b.changes_since(0).seq
        a.write(
            StoreBatch(
                services={
                    "svc": {"service_id": "svc", "connected": True},
                    "gone": {"service_id": "gone", "connected": True},
                    "held-by-b": {"service_id": "held-by-b", "connected": False},
                },
                workflows={"wf-1": {"workflow_id": "wf-1", "phase": "execution"}},
                records=[("wf-1", "history", _change(n)) for n in range(3)],
                logs=[_log(n) for n in range(3)],
            )
        )
        a.write(
            StoreBatch(
                services={"gone": None},
                workflows={"wf-1": {"workflow_id": "wf-1", "phase": "completed"}, "wf-0": None},
                resync={"wf-1": {"history": (_change(7), _change(8))}},
                logs=[_log(n) for n in range(3, 5)],
            )
        )
        mirror = b.changes_since(seen)
        assert [(owner, alive, d["service_id"]) for owner, alive, d in mirror.services] == [
            ("a", True, "svc")
        ]  # "gone" deleted; "held-by-b" kept by b, whose connection is alive
        assert mirror.workflows == [{"workflow_id": "wf-1", "phase": "completed"}]
        assert mirror.owners == {"wf-1": "a"}
        assert [(wf, kind, d["reason"]) for wf, kind, d in mirror.records] == [
            ("wf-1", "history", "r7"),
            ("wf-1", "history", "r8"),
        ]  # the resync replaced the records written before it
        assert [d["message"] for d in mirror.logs] == [f"line {n}" for n in range(5)]
        assert b.changes_since(mirror.seq).seq == mirror.seq
        assert not b.changes_since(mirror.seq).logs
        assert a.changes_since(0).services[0][2]["service_id"] == "held-by-b"
        with psycopg.connect(pg_url, autocommit=True) as conn:
            row = conn.execute(
                "SELECT instance_id, data->>'connected' FROM when_services "
                "WHERE service_id = 'held-by-b'"
            ).fetchone()
        assert row == ("b", "true")
    finally:
        a.close()
        b.close()


def test_a_database_at_the_first_schema_is_migrated_and_written(pg_url: str) -> None:
    from when_coordinator.hub.pgstore import _MIGRATIONS  # noqa: PLC0415 - the first schema

    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(_MIGRATIONS[0].encode())
        conn.execute("CREATE TABLE when_meta (key TEXT PRIMARY KEY, value TEXT)")
        conn.execute("INSERT INTO when_meta VALUES ('schema_version', '1')")
    store = PostgresStore(pg_url, "x")
    store.load()
    try:
        store.write(StoreBatch(workflows={"wf-1": {"workflow_id": "wf-1", "phase": "execution"}}))
        assert store.counts()["workflows"] == 1
    finally:
        store.close()
    with psycopg.connect(pg_url, autocommit=True) as conn:
        version = conn.execute("SELECT value FROM when_meta WHERE key = 'schema_version'")
        assert version.fetchone() == (str(SCHEMA_VERSION),)


def test_the_stores_json_reads_back_what_json_loads_reads_and_writes_what_it_reads() -> None:
    """msgspec reads and writes the documents; a number beyond a float (which ``jsonb``
    holds and msgspec refuses) still reads as ``json.loads`` reads it."""
    document = {"workflow_id": "wf-1", "progress": {"percent": 12.5}, "tags": ["a", "é"], "n": None}
    assert json.loads(dumps(document)) == document
    assert loads(dumps(document).encode()) == document
    assert loads(b'{"big": 1e400}') == {"big": float("inf")}
    with pytest.raises(json.JSONDecodeError, match="Expecting value"):
        loads(b'{"truncated": ')


def test_an_instance_on_the_bus_shortens_the_switch_interval_while_it_runs(
    pg_url: str, tmp_path: Path
) -> None:
    """Commands cross threads at every hop on the bus: a thread with an answer should not
    wait out the interpreter's default 5 ms for the GIL. A hub alone leaves it as it is."""
    before = sys.getswitchinterval()
    assert before > SWITCH_INTERVAL
    with ThreadedHub(Hub(port=0, db=str(tmp_path / "hub.db"))):
        assert sys.getswitchinterval() == before
    with hubs(pg_url, 1):
        assert sys.getswitchinterval() == SWITCH_INTERVAL
    assert sys.getswitchinterval() == before
    first, second = start_hub(pg_url, "hub-a").start(), start_hub(pg_url, "hub-b").start()
    first.close()  # the other one is still on the bus
    assert sys.getswitchinterval() == SWITCH_INTERVAL
    second.close()
    assert sys.getswitchinterval() == before


def test_an_instance_that_stops_leaves_no_thread_of_its_own_running(pg_url: str) -> None:
    """Its listener, bus, mirror and store threads end with it (an embedding application
    that starts and stops hubs must not collect threads, nor LISTEN connections)."""
    with hubs(pg_url, 1):
        assert {t.name for t in threading.enumerate()} >= {"when-hub-listen"}
    left = [t for t in threading.enumerate() if t.name.startswith("when-hub-")]
    for thread in left:
        thread.join(TIMEOUT)
    assert [t.name for t in left if t.is_alive()] == []
    with psycopg.connect(pg_url, autocommit=True) as conn:
        listening = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND query LIKE 'LISTEN%%' AND pid <> pg_backend_pid()"
        ).fetchone()
    assert listening == (0,)
