"""SQLite persistence: a restarted hub keeps services, workflows, phase history and logs."""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from when_coordinator.hub import Health, Hub, HubStore
from when_coordinator.hub.testing import RawService, frame
from when_coordinator.protocol import Phase


async def send_workload(hub: Hub, service_id: str) -> None:
    client = await RawService.connect(hub.url, service_name="keeper")
    await client.register("keeper", service_id=service_id, version="2.0.1")
    for message in (
        frame("workflow_created", "wf-p", {"workflow_id": "wf-p"}),
        frame("workflow_created", "wf-c", {"workflow_id": "wf-c", "parent_workflow_id": "wf-p"}),
        frame("phase_changed", "wf-p", {"workflow_id": "wf-p", "from": "", "to": "pending"}),
        frame("phase_changed", "wf-p", {"workflow_id": "wf-p", "from": "pending", "to": "failed"}),
        frame(
            "checkpoint", "wf-c", {"workflow_id": "wf-c", "checkpoint_id": "cp-7", "reason": "r"}
        ),
        frame("progress", "wf-c", {"workflow_id": "wf-c", "percent": 33.5, "stage": "copy"}),
        frame("log", payload={"level": "info", "message": "one", "workflow_id": "wf-c"}),
        frame("log_batch", payload={"logs": [{"level": "warn", "message": "two"}]}),
    ):
        await client.send(message)
    await hub.wait_for(lambda h: len(h.logs) == 2)
    await client.close()


def test_a_restarted_hub_keeps_services_workflows_history_and_logs(tmp_path: Path) -> None:
    db = tmp_path / "hub.db"

    async def first_run() -> None:
        async with Hub(db=db) as hub:
            await send_workload(hub, "keeper-1")
            anonymous = await RawService.connect(hub.url, service_name="")
            assert (await anonymous.register("anon"))["payload"]["service_id"] == "svc-1"
            await anonymous.close()
            await hub.wait_for(lambda h: not h.services["svc-1"].connected)

    async def second_run() -> None:
        async with Hub(db=db) as hub:
            assert set(hub.services) == {"keeper-1", "svc-1"}
            keeper = hub.services["keeper-1"]
            assert (keeper.version, keeper.health, keeper.connected) == (
                "2.0.1",
                Health.DISCONNECTED,
                False,
            )
            parent, child = hub.workflows["wf-p"], hub.workflows["wf-c"]
            assert parent.phase is Phase.FAILED
            assert [(c.from_phase, c.to_phase) for c in parent.history] == [
                (None, Phase.PENDING),
                (Phase.PENDING, Phase.FAILED),
            ]
            assert parent.children == ("wf-c",)
            assert (child.progress, child.stage, child.checkpoint_id) == (33.5, "copy", "cp-7")
            assert [r.message for r in hub.logs] == ["one", "two"]
            assert [r.message for r in hub.logs_for("wf-c")] == ["one"]
            # A new anonymous service does not take an id a previous run handed out.
            newcomer = await RawService.connect(hub.url, service_name="")
            assert (await newcomer.register("new"))["payload"]["service_id"] == "svc-2"
            # The known service comes back and owns its workflows again.
            again = await RawService.connect(hub.url, service_name="keeper")
            await again.register("keeper", service_id="keeper-1")
            change = {"workflow_id": "wf-c", "from": "pending", "to": "pre-flight"}
            await again.send(frame("phase_changed", "wf-c", change))
            await hub.wait_for(lambda h: h.workflows["wf-c"].phase is Phase.PRE_FLIGHT)
            await hub.cancel("wf-c")
            await again.expect("cancel")
            await newcomer.close()
            await again.close()

    asyncio.run(first_run())
    asyncio.run(second_run())
    store = HubStore(db)
    assert store.counts() == {"services": 3, "workflows": 2, "workflow_records": 4, "logs": 2}
    store.close()


def test_flush_writes_while_running_and_unreadable_rows_are_skipped(tmp_path: Path) -> None:
    db = tmp_path / "hub.db"

    async def run() -> None:
        async with Hub(db=db, store_interval=60) as hub:
            await send_workload(hub, "keeper-1")
            await hub.flush()
            counts = await asyncio.to_thread(lambda: HubStore(db).counts())
            assert counts == {"services": 1, "workflows": 2, "workflow_records": 3, "logs": 2}

    asyncio.run(run())
    with closing(sqlite3.connect(db)) as raw, raw:
        raw.execute("INSERT INTO workflows (workflow_id, data) VALUES ('bad', '{not json')")
        raw.execute(
            """INSERT INTO workflows VALUES ('odd', '{"workflow_id": "odd", "phase": "x"}')"""
        )

    async def restart() -> None:
        async with Hub(db=db) as hub:
            assert set(hub.workflows) == {"wf-p", "wf-c"}

    asyncio.run(restart())
    store = HubStore(db)
    assert len(store.load().workflows) == 2
    assert store.skipped == 2
    store.close()


def committed_logs(db: Path) -> int:
    """Log rows a reader sees now (WAL mode lets it read while the hub writes)."""
    if not db.exists():
        return 0
    try:
        with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1)) as raw:
            return int(raw.execute("SELECT COUNT(*) FROM logs").fetchone()[0])
    except sqlite3.OperationalError:  # tables not created yet
        return 0


def test_a_hub_killed_while_writing_leaves_a_consistent_database(tmp_path: Path) -> None:
    db = tmp_path / "hub.db"
    command = [sys.executable, "-m", "when_coordinator.cli", "hub", "--port", "0", "--db", str(db)]
    hub = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert hub.stdout is not None
        match = re.search(r"listening on (ws://\S+)", hub.stdout.readline())
        assert match, "the hub did not print its URL"
        url = match.group(1)

        async def hammer() -> None:
            client = await RawService.connect(url, service_name="busy")
            await client.register("busy", service_id="busy-1")
            killed_at = None
            for i in range(50_000):
                wf = f"wf-{i % 50}"
                try:
                    await client.send(
                        frame("progress", wf, {"workflow_id": wf, "percent": i % 100})
                    )
                    entry = {"level": "info", "message": f"line {i}", "workflow_id": wf}
                    await client.send(frame("log", payload=entry))
                except Exception:
                    break  # the hub is gone
                if killed_at is None and i % 200 == 0 and committed_logs(db) >= 1_000:
                    hub.send_signal(signal.SIGKILL)  # while it keeps receiving and writing
                    killed_at = i
            assert killed_at is not None, "the hub never committed 1000 log rows"
            await client.close()

        asyncio.run(hammer())
    finally:
        hub.kill()
        hub.wait(10)

    with closing(sqlite3.connect(db)) as raw:
        assert raw.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    store = HubStore(db)
    snapshot = store.load()
    assert store.skipped == 0
    assert [s.service_id for s in snapshot.services] == ["busy-1"]
    assert len(snapshot.logs) >= 1_000
    assert all(json.dumps(w.as_dict()) for w in snapshot.workflows)

    async def restart() -> None:
        async with Hub(db=db) as restarted:
            assert restarted.services["busy-1"].health is Health.DISCONNECTED
            assert len(restarted.workflows) == len(snapshot.workflows)

    asyncio.run(restart())
    store.close()
    assert os.path.getsize(db) > 0


# ---------------------------------------------------------------------- issue 12, item 15


def healthz(hub: Hub) -> tuple[int, dict[str, Any]]:
    """``GET /healthz`` over HTTP, as a load balancer's readiness probe asks it."""
    try:
        with urllib.request.urlopen(f"{hub.http_url}/healthz", timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_a_failed_write_is_kept_retried_and_reported_not_dropped(tmp_path: Path) -> None:
    """The disk fills up (SQLite's ``max_page_count``: a real SQLITE_FULL): the hub keeps
    the failed batch, reports the store in ``/healthz``, and once space is freed the
    ``completed`` it had acknowledged reaches the file and survives a restart."""
    db = tmp_path / "hub.db"

    async def first_run() -> None:
        async with Hub(db=db, db_max_bytes=256 * 1024, store_interval=0.05) as hub:
            client = await RawService.connect(hub.url, service_name="disk")
            await client.register("disk", service_id="disk-1")
            start = {"workflow_id": "wf-1", "from": "planning", "to": "execution"}
            await client.send(frame("phase_changed", "wf-1", start))
            await hub.wait_for(lambda h: "wf-1" in h.workflows)
            assert await hub.flush()
            assert not hub.logs
            assert (await asyncio.to_thread(healthz, hub))[0] == 200
            # Fill the file with logs until a write fails.
            for i in range(200):
                entry = {"level": "info", "message": f"{i} " + "x" * 20_000}
                await client.send(frame("log", payload=entry))
                await hub.wait_for(functools.partial(has_logs, count=i + 1))
                if not await hub.flush():
                    break
            else:
                raise AssertionError("the store never filled up")
            done = [("execution", "completing"), ("completing", "completed")]
            for source, target in done:
                change = {"workflow_id": "wf-1", "from": source, "to": target}
                await client.send(frame("phase_changed", "wf-1", change))
            await hub.wait_for(lambda h: h.workflows["wf-1"].phase is Phase.COMPLETED)
            assert not await hub.flush()  # still full: kept, not dropped
            status, body = await asyncio.to_thread(healthz, hub)
            assert status == 503
            assert body["status"] == "store failing"
            store = body["store"]
            assert store["ok"] is False
            assert store["failed_writes"] >= 2
            assert "full" in store["last_error"]
            assert store["pending"] > 0
            # An operator frees space; the retry loop writes what was kept.
            await asyncio.to_thread(delete_logs, db)
            await hub.wait_for(lambda h: (h.store_health() or {}).get("ok"), timeout=15)
            assert (await asyncio.to_thread(healthz, hub))[0] == 200
            assert (hub.store_health() or {})["retries"] >= 1
            await client.close()

    async def second_run() -> None:
        async with Hub(db=db) as hub:
            workflow = hub.workflows["wf-1"]
            assert workflow.phase is Phase.COMPLETED
            assert [c.to_phase.value for c in workflow.history] == [
                "execution",
                "completing",
                "completed",
            ]

    asyncio.run(first_run())
    asyncio.run(second_run())


def has_logs(hub: Hub, count: int) -> bool:
    return len(hub.logs) >= count


def delete_logs(db: Path) -> None:
    with closing(sqlite3.connect(db, timeout=10)) as raw, raw:
        raw.execute("DELETE FROM logs")


@pytest.mark.parametrize("row", ["null", "[]", '"s"', "7", "[1, 2]"])
def test_a_valid_json_row_that_is_not_an_object_is_skipped_and_logged(
    tmp_path: Path, row: str, caplog: pytest.LogCaptureFixture
) -> None:
    db = tmp_path / "hub.db"

    async def first_run() -> None:
        async with Hub(db=db) as hub:
            await send_workload(hub, "keeper-1")

    asyncio.run(first_run())
    with closing(sqlite3.connect(db)) as raw, raw:
        raw.execute("INSERT INTO services VALUES ('odd', ?)", (row,))
        raw.execute("INSERT INTO workflows VALUES ('odd', ?)", (row,))
        tables = {name for (name,) in raw.execute("SELECT name FROM sqlite_master")}
        if "workflow_records" in tables:  # (schema 2)
            raw.execute(
                "INSERT INTO workflow_records (workflow_id, kind, data) "
                "VALUES ('wf-p', 'history', ?)",
                (row,),
            )
        raw.execute("INSERT INTO logs (workflow_id, data) VALUES ('', ?)", (row,))

    async def restart() -> None:
        async with Hub(db=db) as hub:
            assert set(hub.workflows) == {"wf-p", "wf-c"}
            assert set(hub.services) == {"keeper-1"}
            assert len(hub.logs) == 2
            assert len(hub.workflows["wf-p"].history) == 2

    caplog.set_level(logging.WARNING, logger="when_coordinator")
    asyncio.run(restart())
    skipped = [
        r.getMessage() for r in caplog.records if "skipped an unreadable row" in r.getMessage()
    ]
    assert len(skipped) == 4, skipped
    assert all("where an object belongs" in text for text in skipped)


def without_root_override(command: list[str]) -> list[str]:
    """Root writes any file whatever its mode: without ``CAP_DAC_OVERRIDE`` it does not."""
    if os.geteuid() != 0:
        return command
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root without setpriv: a read-only file is writable")
    return [setpriv, "--bounding-set", "-dac_override,-dac_read_search", *command]


@pytest.mark.parametrize("folder_writable", [True, False], ids=["file", "file-and-folder"])
def test_a_read_only_database_file_refuses_to_start_with_one_clear_line(
    folder_writable: bool,
) -> None:
    folder = Path(tempfile.mkdtemp(prefix="when-ro-"))
    try:
        db = folder / "hub.db"

        async def make() -> None:
            async with Hub(db=db) as hub:
                await send_workload(hub, "keeper-1")

        asyncio.run(make())
        db.chmod(0o444)
        if not folder_writable:
            folder.chmod(0o555)  # no new -wal or -shm file either
        command = [sys.executable, "-m", "when_coordinator.cli", "hub", "--port", "0"]
        result = subprocess.run(
            without_root_override([*command, "--db", str(db)]),
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert result.returncode == 1
        assert result.stdout == ""
        lines = result.stderr.splitlines()
        assert len(lines) == 1, result.stderr
        assert lines[0].startswith(f"when-coordinator hub: error: cannot use the hub database {db}")
        assert "read-only" in lines[0]
    finally:
        folder.chmod(0o755)
        shutil.rmtree(folder)


# ---------------------------------------------------------------------- issue 12, item 13


def test_a_batch_appends_what_changed_instead_of_rewriting_the_workflow(tmp_path: Path) -> None:
    """A workflow's row stays a small summary however long its history grows; each
    transition, checkpoint and error is one appended row, the newest ``record_limit`` kept."""
    db = tmp_path / "hub.db"

    async def run() -> None:
        async with Hub(db=db, store_interval=60) as hub:
            client = await RawService.connect(hub.url, service_name="long")
            await client.register("long", service_id="long-1")
            phases = ["execution", "pausing", "paused", "resuming"]
            for i in range(1_200):
                source, target = phases[i % 4], phases[(i + 1) % 4]
                change = {"workflow_id": "wf-1", "from": source, "to": target}
                change["reason"] = f"step {i} " + "r" * 1_000
                await client.send(frame("phase_changed", "wf-1", change))
                if i % 300 == 299:
                    await hub.wait_for(functools.partial(has_history, count=i + 1))
                    assert await hub.flush()
            await client.close()

    asyncio.run(run())
    with closing(sqlite3.connect(db)) as raw:
        (summary,) = raw.execute("SELECT data FROM workflows WHERE workflow_id = 'wf-1'").fetchone()
        rows = raw.execute(
            "SELECT data FROM workflow_records WHERE workflow_id = 'wf-1' ORDER BY id"
        ).fetchall()
    assert len(summary) < 8_000, len(summary)
    assert "history" not in json.loads(summary)
    assert len(rows) == 1_000  # HubStore.record_limit, the newest
    assert json.loads(rows[-1][0])["reason"].startswith("step 1199 ")
    assert json.loads(rows[0][0])["reason"].startswith("step 200 ")


def has_history(hub: Hub, count: int) -> bool:
    return hub.workflows["wf-1"].history[-1].reason.startswith(f"step {count - 1} ")


def test_a_schema_1_database_is_migrated_to_summary_rows_and_records(tmp_path: Path) -> None:
    db = tmp_path / "hub.db"
    history = [
        {"from": "", "to": "pending", "reason": "", "at": 1.0},
        {"from": "pending", "to": "failed", "reason": "boom", "at": 2.0},
    ]
    document = {
        "workflow_id": "wf-old",
        "service_id": "old-1",
        "phase": "failed",
        "progress": 40,
        "history": history,
        "checkpoints": [{"checkpoint_id": "cp-1", "reason": "r", "state": {"row": 7}}],
        "errors": [{"error": "boom", "recoverable": False}],
        "anomalies": ["one"],
    }
    with closing(sqlite3.connect(db)) as raw, raw:  # what a schema 1 hub left behind
        raw.executescript(
            """
            CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
            CREATE TABLE services (service_id TEXT PRIMARY KEY, data TEXT NOT NULL);
            CREATE TABLE workflows (workflow_id TEXT PRIMARY KEY, data TEXT NOT NULL);
            CREATE TABLE logs (id INTEGER PRIMARY KEY AUTOINCREMENT,
                               workflow_id TEXT NOT NULL DEFAULT '', data TEXT NOT NULL);
            INSERT INTO meta VALUES ('schema_version', '1');
            INSERT INTO workflows VALUES ('bad', '{not json');
            """
        )
        raw.execute("INSERT INTO workflows VALUES ('wf-old', ?)", (json.dumps(document),))

    async def run() -> None:
        async with Hub(db=db) as hub:
            workflow = hub.workflows["wf-old"]
            assert (workflow.phase, workflow.progress, workflow.anomalies) == (
                Phase.FAILED,
                40.0,
                ("one",),
            )
            assert [c.reason for c in workflow.history] == ["", "boom"]
            assert workflow.checkpoints[0].state == {"row": 7}
            assert workflow.errors[0].error == "boom"
            assert set(hub.workflows) == {"wf-old"}

    asyncio.run(run())
    with closing(sqlite3.connect(db)) as raw:
        assert raw.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() == (
            "2",
        )
        (data,) = raw.execute("SELECT data FROM workflows WHERE workflow_id = 'wf-old'").fetchone()
        kinds = raw.execute("SELECT kind FROM workflow_records ORDER BY id").fetchall()
    assert "history" not in json.loads(data)
    assert [k for (k,) in kinds] == ["history", "history", "checkpoints", "errors"]
    asyncio.run(run())  # and it opens again as schema 2


# Rows exactly as the hand-written record classes (before the msgspec ``records.py``) wrote them.
OLD_RECORDS: dict[str, list[dict[str, Any]]] = json.loads(
    '{"history": [{"from": "", "to": "pending", "reason": "", "checkpoint_id": "", "at": 1.5, '
    '"timestamp": "2026-01-01T00:00:00.000000001Z"}, {"from": "pending", "to": "execution", '
    '"reason": "go", "checkpoint_id": "cp-0", "at": 2.5, "timestamp": "2026-01-01T00:00:01Z"}], '
    '"checkpoints": [{"checkpoint_id": "cp-1", "reason": "half way", "at": 3.0, '
    '"timestamp": "2026-01-01T00:00:02Z", "state": {"row": 7}}, {"checkpoint_id": "cp-2", '
    '"reason": "", "at": 3.5, "timestamp": ""}], "errors": [{"error": "disk full", '
    '"recoverable": true, "action_id": "act-1", "at": 4.0, "timestamp": "2026-01-01T00:00:03Z"}]}'
)
OLD_LOG: dict[str, Any] = json.loads(
    '{"service_id": "svc-lit", "at": 5.0, "timestamp": "2026-01-01T00:00:04Z", "level": "warn", '
    '"message": "slow", "trace_id": "abababababababababababababababab", "workflow_id": "wf-lit", '
    '"fields": {"rows": 3}, "source_file": "etl.py", "source_line": 12}'
)


def test_records_written_by_the_previous_record_classes_load_and_are_written_alike(
    tmp_path: Path,
) -> None:
    """The records are msgspec Structs now; a database the hand-written classes filled still
    loads, and what the hub writes and serves has the same shape as before."""
    db = tmp_path / "hub.db"

    async def create() -> None:
        async with Hub(db=db):
            pass  # the current schema, empty

    asyncio.run(create())
    summary = {"workflow_id": "wf-lit", "service_id": "svc-lit", "phase": "execution"}
    with closing(sqlite3.connect(db)) as raw, raw:
        raw.execute("INSERT INTO workflows VALUES ('wf-lit', ?)", (json.dumps(summary),))
        for kind, rows in OLD_RECORDS.items():
            for row in rows:
                raw.execute(
                    "INSERT INTO workflow_records (workflow_id, kind, data) VALUES (?, ?, ?)",
                    ("wf-lit", kind, json.dumps(row)),
                )
        raw.execute(
            "INSERT INTO logs (workflow_id, data) VALUES ('wf-lit', ?)", (json.dumps(OLD_LOG),)
        )

    async def load() -> None:
        async with Hub(db=db) as hub:
            workflow = hub.workflows["wf-lit"]
            assert [(c.from_phase, c.to_phase) for c in workflow.history] == [
                (None, Phase.PENDING),
                (Phase.PENDING, Phase.EXECUTION),
            ]
            assert workflow.checkpoints[0].state == {"row": 7}
            assert workflow.checkpoints[1].state is None
            assert workflow.errors[0].recoverable is True
            assert [c.as_dict() for c in workflow.history] == OLD_RECORDS["history"]
            assert [c.as_dict() for c in workflow.checkpoints] == OLD_RECORDS["checkpoints"]
            assert [e.as_dict() for e in workflow.errors] == OLD_RECORDS["errors"]
            (log,) = hub.logs_for("wf-lit")
            assert (log.service_id, log.level, log.entry.fields) == ("svc-lit", "warn", {"rows": 3})
            assert log.as_dict() == OLD_LOG

    asyncio.run(load())
