"""Reliability: the hub killed (SIGKILL) and restarted under a client that keeps streaming, and
a hub killed while it writes its SQLite store.

The hub runs as a real subprocess (``when-coordinator hub``); its state after a restart is read
through its operator HTTP API, its database with sqlite3.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import time
from contextlib import closing
from pathlib import Path

import pytest

from tests.support.faults import (
    Disconnects,
    HubProcess,
    Ledger,
    Sent,
    StatsWatch,
    check_in_order,
    phase_history,
    soak,
    stats_balanced,
    to_execution,
)
from tests.support.scripted_server import fast_config, wait_until
from when_coordinator import Coordinator
from when_coordinator.hub import HubStore
from when_coordinator.hub.testing import RawService, frame

SERVICE_ID = "svc-restart"
BUSY = [f"wf-busy-{i}" for i in range(6)]
IDLE = [f"wf-idle-{i}" for i in range(3)]
OUTBOX_BOUND = 2_000
LOGS_PER_ROUND = 10


def committed(db: Path, sql: str) -> int:
    """A count a reader sees now in the hub's database (WAL lets it read during writes)."""
    if not db.exists():
        return 0
    try:
        with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1)) as raw:
            return int(raw.execute(sql).fetchone()[0])
    except sqlite3.OperationalError:  # not created yet, or busy
        return 0


def stream_round(ledger: Ledger, r: int) -> None:
    """One round for every busy workflow: a pause cycle every other round, a checkpoint, an
    error every third round, progress, and many logs (the sheddable bulk)."""
    phases = ledger.coordinator.phases
    for wf in BUSY:
        if r % 2 == 0:
            cp = f"{wf}-cp{r}"
            phases.pause(wf, f"{wf} pause {r}")
            ledger.checkpoint(wf, cp)
            phases.complete_pause(wf, cp)
            phases.resume(wf, cp)
            phases.complete_resume(wf)
        if r % 3 == 0:
            ledger.error(wf, f"{wf} glitch {r}")
        ledger.progress(wf, float(r % 100), f"{wf} progress {r}")
        for i in range(LOGS_PER_ROUND):
            ledger.log(f"{wf} log {r}.{i}")


@pytest.mark.parametrize("persistent", [True, False], ids=["with-db", "without-db"])
@pytest.mark.parametrize("round_", soak(10))
def test_a_hub_killed_mid_stream_and_restarted_gets_every_accepted_state_message(
    tmp_path: Path, persistent: bool, round_: int
) -> None:
    db = tmp_path / "hub.db" if persistent else None
    hub = HubProcess(tmp_path, db=db).start()
    coordinator = Coordinator(
        fast_config(
            hub.url,
            service_name="restart-test",
            service_id=SERVICE_ID,
            outbox_max_messages=OUTBOX_BOUND,
            reconnect_max_delay=0.1,
        )
    )
    ledger = Ledger(coordinator)
    events = Disconnects(coordinator)
    try:
        coordinator.connect()
        assert coordinator.wait_registered(10)
        with StatsWatch(coordinator) as watch:
            # Idle workflows, delivered (and stored) before the storm: a restarted hub learns
            # them only from the client's replay after registering again.
            for wf in IDLE:
                to_execution(ledger, wf)
            coordinator.phases.pause(IDLE[1], "idle pause")
            coordinator.phases.complete_pause(IDLE[1], "idle-cp")
            assert coordinator.flush(10)
            if db is not None:
                wait_until(
                    lambda: committed(db, "SELECT COUNT(*) FROM workflows") >= len(IDLE),
                    10,
                    "the idle workflows stored",
                )
            for wf in BUSY:
                to_execution(ledger, wf)
            for r in range(10):
                stream_round(ledger, r)
            accepted_before_kill = len(ledger.snapshot())
            hub.kill()  # SIGKILL while the client is still sending what it just accepted

            events.wait("disconnected", 1)
            at_drop = events.stats[0]
            assert at_drop.dropped == 0
            assert stats_balanced(at_drop)
            assert at_drop.queued + at_drop.inflight > 0, "the kill was not mid-stream"
            # The ledger records every call; the outbox counts a progress that replaced a queued
            # one in ``coalesced``, not in ``delivered``. The acknowledged messages are therefore
            # at most the ledger's first delivered + coalesced entries (exactly that many when
            # every replaced progress came before the kill point).
            delivered_before_kill = min(at_drop.delivered + at_drop.coalesced, accepted_before_kill)
            for r in range(10, 40):  # while the hub is down: the outbox fills and sheds
                stream_round(ledger, r)
                assert stats_balanced(coordinator.stats())
            assert not coordinator.is_registered

            restarted_at = time.time()
            hub.restart()
            events.wait("registered", 2)
            assert coordinator.flush(30)
            for r in range(40, 50):
                stream_round(ledger, r)
            for wf in BUSY[:4]:
                coordinator.phases.complete(wf)
            coordinator.phases.fail(BUSY[4], "gave up")
            ledger.progress("wf-last", 100.0, "the end")
            assert coordinator.flush(30)
        watch.check()
        # Delivered means the hub's WebSocket layer has it; the hub applies frames in order,
        # so once it shows the last one it has applied everything before it.
        wait_until(
            lambda: "wf-last" in {w["workflow_id"] for w in hub.api("/v1/workflows")["workflows"]},
            10,
            "the hub to apply the last message",
        )

        stats = coordinator.stats()
        assert (stats.queued, stats.inflight) == (0, 0)
        assert stats.sent == stats.delivered + stats.dropped
        assert stats.connects == 2
        assert stats.dropped > 0, "the outage did not reach the outbox bound"
        assert set(stats.dropped_by_kind) <= {"log", "progress"}, stats.dropped_by_kind
        assert watch.max_queued_bytes <= coordinator.config.outbox_max_bytes

        entries = ledger.snapshot()
        # The killed hub acknowledged the first messages the client had queued, in order
        # (nothing was shed before the kill); everything after them must reach the new hub.
        required = entries[delivered_before_kill:]
        service = hub.api("/v1/services")["services"]
        assert [(s["service_id"], s["connected"]) for s in service] == [(SERVICE_ID, True)]
        for wf in BUSY + IDLE:
            doc = hub.workflow(wf)
            history = phase_history(doc)
            sent_phases = Ledger.of(entries, "phase_changed", wf)
            check_in_order(history, sent_phases, Ledger.of(required, "phase_changed", wf), wf)
            assert doc["phase"] == coordinator.phases.get_phase(wf).value, wf
            if db is not None:
                stored = phase_history(doc, before=restarted_at)
                assert stored == sent_phases[: len(stored)], f"{wf}: stored history not a prefix"
            checkpoints = [c["checkpoint_id"] for c in doc["checkpoints"]]
            sent_checkpoints = Ledger.of(entries, "checkpoint", wf)
            check_in_order(
                [c for c in checkpoints if c in set(sent_checkpoints)],
                sent_checkpoints,
                Ledger.of(required, "checkpoint", wf),
                f"{wf} checkpoints",
            )
            errors = [e["error"] for e in doc["errors"]]
            check_in_order(
                errors,
                Ledger.of(entries, "error", wf),
                Ledger.of(required, "error", wf),
                f"{wf} errors",
            )
            if wf in BUSY:
                assert doc["message"] == Ledger.of(entries, "progress", wf)[-1]
        # Without a database the new hub knows the idle workflows from the replay alone.
        if db is None:
            for wf in IDLE:
                assert (
                    phase_history(hub.workflow(wf)) == Ledger.of(entries, "phase_changed", wf)[-1:]
                )

        # Logs: every log queued after the killed hub's last acknowledgement arrives once,
        # except exactly those the outbox shed and counted. Logs leave in order and the outbox
        # sheds the oldest first, so the shed ones are the block right after the last log the
        # killed hub acknowledged, and every log after that block arrives.
        sent_logs = Ledger.of(entries, "log")
        held = [r["message"] for r in hub.api("/v1/logs", limit="100000")["logs"]]
        assert len(held) == len(set(held)), "a log arrived twice"
        arrived = set(held)
        first = len(sent_logs)
        while first > 0 and sent_logs[first - 1] in arrived:
            first -= 1
        shed = stats.dropped_by_kind.get("log", 0)
        acknowledged = first - shed
        assert not arrived & set(sent_logs[acknowledged:first]), "a shed log arrived"
        assert (
            len(Ledger.of(entries[: at_drop.delivered], "log"))
            <= acknowledged
            <= len(Ledger.of(entries[:delivered_before_kill], "log"))
        ), f"logs {acknowledged}..{first} are missing, {shed} were shed"
    finally:
        coordinator.close(2.0)
        hub.kill()


# ---------------------------------------------------------------------- the store


@pytest.mark.parametrize("round_", soak(20))
def test_a_hub_killed_while_storing_phase_history_restarts_from_a_consistent_prefix(
    tmp_path: Path,
    round_: int,
) -> None:
    """Strengthens tests/hub/test_hub_store.py (logs and progress) for workflow state: every stored
    workflow has its history, each history is a prefix of what was sent, and the whole
    database is the state after one prefix of the stream (one transaction per write)."""
    db = tmp_path / "hub.db"
    hub = HubProcess(tmp_path, db=db).start()
    workflows = [f"wf-{i}" for i in range(30)]
    sent: list[Sent] = []  # the global order of what the client wrote
    pad = "p" * 200  # larger documents: longer write transactions to be killed in

    def step(wf: str, r: int) -> tuple[str, str, str]:
        if r == 0:
            return ("", "pending", f"{wf} registered")
        cycle = ["pre-flight", "planning", "execution"]
        if r <= 3:
            return ((["pending", *cycle])[r - 1], cycle[r - 1], f"{wf} start {r} {pad}")
        loop = ["execution", "pausing", "paused", "resuming"]
        i = (r - 4) % 4
        return (loop[i], loop[(i + 1) % 4], f"{wf} step {r} {pad}")

    async def stream() -> int:
        client = await RawService.connect(hub.url, service_name="writer")
        await client.register("writer", service_id="writer-1")
        killed_at = -1
        try:
            for r in range(2_000):
                for n, wf in enumerate(workflows):
                    source, target, reason = step(wf, r)
                    change = {"workflow_id": wf, "from": source, "to": target, "reason": reason}
                    sent.append(Sent("phase_changed", wf, (source, target, reason)))
                    await client.send(frame("phase_changed", wf, change))
                    if n % 5 == 0:
                        text = f"{wf} log {r}"
                        sent.append(Sent("log", wf, text))
                        entry = {"level": "info", "message": text, "workflow_id": wf}
                        await client.send(frame("log", payload=entry))
                if killed_at < 0 and r >= 20 and committed(db, "SELECT COUNT(*) FROM logs") >= 200:
                    assert hub.process is not None
                    hub.process.kill()  # SIGKILL while the hub receives and writes
                    killed_at = r
                if killed_at >= 0 and r > killed_at + 5:
                    break
                # Paced to about 3,600 frames a second, within the hub's default rate limit:
                # a throttled frame would be a gap in the stream, not the fault under test.
                await asyncio.sleep(0.01)
        except Exception:  # the hub is gone: the stream ends here
            pass
        with contextlib.suppress(Exception):
            await client.close()
        return killed_at

    try:
        killed_at = asyncio.run(stream())
        assert killed_at >= 0, "the hub never stored enough to be killed"
        hub.kill()

        with closing(sqlite3.connect(db)) as raw:
            assert raw.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        store = HubStore(db)
        snapshot = store.load()
        store.close()
        assert store.skipped == 0
        assert snapshot.workflows, "nothing was stored"
        stored = {
            w.workflow_id: [
                ("" if c.from_phase is None else c.from_phase.value, c.to_phase.value, c.reason)
                for c in w.history
            ]
            for w in snapshot.workflows
        }
        for workflow in snapshot.workflows:
            history = stored[workflow.workflow_id]
            assert history, f"{workflow.workflow_id} was stored without its history"
            expected = Ledger.of(sent, "phase_changed", workflow.workflow_id)
            assert history == expected[: len(history)], workflow.workflow_id
            assert workflow.phase.value == history[-1][1]
        # One moment of the stream: some prefix sent[:m] explains every row at once.
        logs = [record.message for record in snapshot.logs]
        low, high = 0, len(sent)
        position: dict[tuple[str, str], list[int]] = {}
        for i, item in enumerate(sent):
            position.setdefault((item.kind, item.workflow_id), []).append(i)
        counts = {("phase_changed", wf): len(stored.get(wf, [])) for wf in workflows}
        for wf in workflows:
            counts[("log", wf)] = sum(1 for m in logs if m.startswith(f"{wf} log "))
        for key, count in counts.items():
            places = position.get(key, [])
            if count:
                low = max(low, places[count - 1] + 1)
            if count < len(places):
                high = min(high, places[count])
        assert low <= high, "the database mixes two moments of the stream"
        assert logs == Ledger.of(sent[:low], "log"), "stored logs are not that prefix's logs"

        # The restarted hub serves exactly what was stored, and keeps working.
        hub.restart()
        for wf, history in stored.items():
            served = [(h["from"], h["to"], h["reason"]) for h in hub.workflow(wf)["history"]]
            assert served == history, wf

        async def carry_on() -> None:
            client = await RawService.connect(hub.url, service_name="writer")
            await client.register("writer", service_id="writer-1")
            wf = snapshot.workflows[0].workflow_id
            change = {"workflow_id": wf, "from": stored[wf][-1][1], "to": "failed"}
            await client.send(frame("phase_changed", wf, change))
            await client.close()

        asyncio.run(carry_on())
        wf = snapshot.workflows[0].workflow_id
        wait_until(lambda: hub.workflow(wf)["phase"] == "failed", 10, "the hub to apply it")
        assert json.dumps(hub.api("/v1/workflows"))
    finally:
        hub.kill()
