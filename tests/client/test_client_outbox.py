"""The outbox: the shedding policy as pure unit tests, then the same guarantees end to end
through a ``Coordinator`` and a real loopback server."""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import Counter
from typing import Any

import pytest

from tests.support.scripted_server import RawServer, ScriptedServer, fast_config
from when_coordinator import Coordinator, LogEntry, MessageType
from when_coordinator.client.outbox import (
    LANE_LOG,
    LANE_PROGRESS,
    LANE_STATE,
    Entry,
    Outbox,
    lane_of,
)
from when_coordinator.protocol import ProgressPayload

STATE = MessageType.WORKFLOW_CREATED
PROGRESS = MessageType.PROGRESS
LOG = MessageType.LOG


class Maker:
    """Entries with recognisable bodies: ``(kind, n)``, and for progress what
    ``send_progress`` queues, with ``n`` as its percent (``label`` reads either)."""

    def __init__(self) -> None:
        self.n = 0

    def __call__(
        self,
        kind: MessageType,
        wf: str = "wf",
        size: int = 10,
        phase_seq: int = -1,
        stage: str = "",
        action_id: str = "",
    ) -> Entry:
        self.n += 1
        body: Any = (str(kind), self.n)  # not a real body: the outbox never looks inside
        if kind is PROGRESS:
            body = ProgressPayload(wf, float(self.n), action_id, stage)
        return Entry(kind, wf, body, size, time.time_ns(), phase_seq)


def label(body: Any) -> tuple[Any, int]:
    if isinstance(body, ProgressPayload):
        return ("progress", int(body.percent))
    assert isinstance(body, tuple)
    return (body[0], body[1])


def bodies(outbox: Outbox) -> list[tuple[str, int]]:
    return [label(entry.body) for entry in outbox]


def drain(outbox: Outbox) -> list[Entry]:
    taken = []
    while (entry := outbox.take()) is not None:
        taken.append(entry)
    return taken


def check_accounting(outbox: Outbox) -> None:
    dropped = sum(outbox.dropped.values())
    assert outbox.accepted == outbox.delivered + dropped + outbox.queued + outbox.inflight
    assert dropped == outbox.dropped_total == sum(outbox.drop_reasons.values())
    assert outbox.queued + outbox.inflight <= outbox.max_messages
    assert outbox.bytes <= outbox.max_bytes


# ---------------------------------------------------------------------- pure policy


def test_lanes() -> None:
    assert lane_of(MessageType.LOG) == lane_of(MessageType.LOG_BATCH) == LANE_LOG
    assert lane_of(MessageType.PROGRESS) == LANE_PROGRESS
    for kind in ("workflow_created", "phase_changed", "checkpoint", "error", "something_else"):
        assert lane_of(kind) == LANE_STATE


def test_take_returns_entries_in_the_order_they_were_put_across_lanes() -> None:
    make, outbox = Maker(), Outbox(100, 10_000)
    entries = [make(kind) for kind in (LOG, STATE, PROGRESS, LOG, STATE, PROGRESS)]
    for entry in entries:
        assert outbox.put(entry) is True
    assert [e.body for e in drain(outbox)] == [e.body for e in entries]
    assert outbox.take() is None
    check_accounting(outbox)


def test_the_count_bound_sheds_the_oldest_log_first() -> None:
    make, outbox = Maker(), Outbox(3, 10_000)
    for _ in range(5):
        assert outbox.put(make(LOG)) is True  # a newer log displaces the oldest
    assert bodies(outbox) == [("log", 3), ("log", 4), ("log", 5)]
    assert outbox.dropped == {"log": 2}
    assert outbox.drop_reasons == {"outbox full": 2}
    check_accounting(outbox)


def test_the_byte_bound_sheds_as_many_as_needed() -> None:
    make, outbox = Maker(), Outbox(100, 1000)
    for _ in range(3):
        outbox.put(make(LOG, size=300))
    assert outbox.bytes == 900
    outbox.put(make(STATE, size=700))  # needs two logs to go
    assert bodies(outbox) == [("log", 3), ("workflow_created", 4)]
    assert outbox.bytes == 1000
    assert outbox.dropped == {"log": 2}
    check_accounting(outbox)


def test_an_entry_larger_than_the_byte_bound_is_dropped_itself() -> None:
    make, outbox = Maker(), Outbox(100, 1000)
    outbox.put(make(LOG, size=10))
    assert outbox.put(make(STATE, size=1001)) is False
    assert bodies(outbox) == [("log", 1)]
    assert outbox.dropped == {"workflow_created": 1}
    assert outbox.drop_reasons == {"larger than the outbox byte bound": 1}
    check_accounting(outbox)


def test_logs_go_before_progress_and_progress_before_workflow_state() -> None:
    make, outbox = Maker(), Outbox(6, 10_000)
    for kind in (STATE, LOG, PROGRESS, LOG, STATE, PROGRESS):
        outbox.put(make(kind, wf=f"wf{make.n}"))
    # Six more workflow-state messages: both logs go, then both progress, then the oldest state.
    for _ in range(6):
        assert outbox.put(make(STATE, wf=f"wf{make.n}")) is True
    assert outbox.dropped == {"log": 2, "progress": 2, "workflow_created": 2}
    assert bodies(outbox) == [("workflow_created", n) for n in range(7, 13)]
    check_accounting(outbox)


def test_an_incoming_log_is_dropped_when_only_progress_and_state_are_left() -> None:
    make, outbox = Maker(), Outbox(2, 10_000)
    outbox.put(make(STATE))
    outbox.put(make(PROGRESS))
    assert outbox.put(make(LOG)) is False
    assert outbox.put(make(MessageType.LOG_BATCH)) is False
    assert bodies(outbox) == [("workflow_created", 1), ("progress", 2)]
    assert outbox.dropped == {"log": 1, "log_batch": 1}
    check_accounting(outbox)


def test_progress_replaces_its_workflows_queued_progress_where_it_stands() -> None:
    make, outbox = Maker(), Outbox(10, 10_000)
    outbox.put(make(PROGRESS, wf="a"))  # 1
    outbox.put(make(PROGRESS, wf="b"))  # 2
    outbox.put(make(STATE, wf="c"))  # 3, another workflow's state: no barrier for "a"
    assert outbox.put(make(PROGRESS, wf="a")) is True  # 4 replaces 1
    assert outbox.put(make(PROGRESS, wf="b")) is True  # 5 replaces 2
    assert outbox.put(make(PROGRESS, wf="a")) is True  # 6 replaces 4
    expected = [("progress", 6), ("progress", 5), ("workflow_created", 3)]
    assert bodies(outbox) == expected
    assert (outbox.accepted, outbox.coalesced, outbox.dropped_total) == (3, 3, 0)
    assert [label(e.body) for e in drain(outbox)] == expected
    check_accounting(outbox)


def test_progress_is_not_moved_ahead_of_its_workflows_state() -> None:
    """A phase change queued after a progress of the same workflow is a barrier: the next
    progress is queued behind it, so the hub sees the transition before the new progress."""
    make, outbox = Maker(), Outbox(10, 10_000)
    outbox.put(make(PROGRESS, wf="a"))  # 1
    outbox.put(make(MessageType.PHASE_CHANGED, wf="a", phase_seq=1))  # 2
    outbox.put(make(PROGRESS, wf="a"))  # 3: behind 2, not into 1
    outbox.put(make(PROGRESS, wf="a"))  # 4 replaces 3
    assert bodies(outbox) == [("progress", 1), ("phase_changed", 2), ("progress", 4)]
    assert outbox.coalesced == 1
    taken = drain(outbox)  # 1, 2 and 4 in flight: nothing queued to replace
    outbox.put(make(PROGRESS, wf="a"))  # 5
    assert [label(e.body) for e in taken] == [
        ("progress", 1),
        ("phase_changed", 2),
        ("progress", 4),
    ]
    assert bodies(outbox) == [("progress", 5)]
    assert outbox.coalesced == 1
    check_accounting(outbox)


def test_requeued_entries_keep_the_order_rule_and_are_never_rewritten() -> None:
    make, outbox = Maker(), Outbox(10, 10_000)
    outbox.put(make(PROGRESS, wf="a"))  # 1
    outbox.put(make(MessageType.PHASE_CHANGED, wf="a", phase_seq=1))  # 2
    drain(outbox)
    outbox.requeue()  # both back at the front, 2 still after 1
    outbox.put(make(PROGRESS, wf="a"))  # 3: must stay behind 2
    assert bodies(outbox) == [("progress", 1), ("phase_changed", 2), ("progress", 3)]
    outbox.put(make(PROGRESS, wf="b"))  # 4
    for entry in drain(outbox):
        entry.frame = f'{{"sent": {label(entry.body)[1]}}}'  # as if encoded and sent
    outbox.requeue()
    # 5 does not merge into the requeued 4: the hub may have 4 already, and a resend must be
    # the same frame. It queues behind, and later updates merge into it instead.
    outbox.put(make(PROGRESS, wf="b"))  # 5
    outbox.put(make(PROGRESS, wf="b"))  # 6 replaces 5
    assert bodies(outbox) == [
        ("progress", 1),
        ("phase_changed", 2),
        ("progress", 3),
        ("progress", 4),
        ("progress", 6),
    ]
    assert [e.frame for e in outbox if e.workflow_id == "b"] == ['{"sent": 4}', None]
    assert outbox.coalesced == 1
    check_accounting(outbox)


def test_a_merge_keeps_the_stage_and_action_a_newer_update_leaves_out() -> None:
    """The hub keeps a workflow's stage and action when an update has none: a merge does the
    same, so the hub ends where the two updates would have left it."""
    make, outbox = Maker(), Outbox(10, 10_000)
    outbox.put(make(PROGRESS, wf="a", stage="extract", action_id="act-1"))  # 1
    outbox.put(make(PROGRESS, wf="a"))  # 2: no stage, no action
    outbox.put(make(PROGRESS, wf="a", stage="load"))  # 3: a new stage, no action
    (entry,) = list(outbox)
    assert entry.body == ProgressPayload("a", 3.0, "act-1", "load")


def test_only_queued_send_progress_updates_of_a_named_workflow_merge() -> None:
    make, outbox = Maker(), Outbox(10, 10_000)
    outbox.put(make(PROGRESS, wf=""))  # a ready-made Message's envelope may name none
    outbox.put(make(PROGRESS, wf=""))
    message: Any = ("message", 0)
    ready_made = Entry(PROGRESS, "wf", message, 10, time.time_ns())
    outbox.put(ready_made)  # send(Message): its own id and payload, kept as they are
    outbox.put(make(PROGRESS, wf="wf"))
    assert bodies(outbox) == [("progress", 1), ("progress", 2), ("message", 0), ("progress", 3)]
    assert outbox.coalesced == 0
    check_accounting(outbox)


def test_a_replacement_counts_its_own_size_and_respects_the_byte_bound() -> None:
    make, outbox = Maker(), Outbox(10, 100)
    outbox.put(make(PROGRESS, wf="a", size=30))  # 1
    outbox.put(make(LOG, size=40))  # 2
    outbox.put(make(PROGRESS, wf="a", size=50))  # 3 replaces 1: 50 + 40 fits
    assert outbox.bytes == 90
    assert outbox.coalesced == 1
    # 70 + 40 does not fit: the bound is enforced as for any new entry (logs first, then the
    # superseded progress itself, both counted), and the newest progress stays.
    outbox.put(make(PROGRESS, wf="a", size=70))  # 4
    assert outbox.bytes == 70
    assert outbox.dropped == {"log": 1, "progress": 1}
    assert bodies(outbox) == [("progress", 4)]
    check_accounting(outbox)


def test_progress_of_a_new_workflow_sheds_the_oldest_progress() -> None:
    make, outbox = Maker(), Outbox(3, 10_000)
    outbox.put(make(PROGRESS, wf="a"))
    outbox.put(make(STATE, wf="a"))
    outbox.put(make(PROGRESS, wf="b"))
    assert outbox.put(make(PROGRESS, wf="c")) is True
    assert bodies(outbox) == [("workflow_created", 2), ("progress", 3), ("progress", 4)]
    assert outbox.drop_reasons == {"outbox full": 1}
    check_accounting(outbox)


def test_progress_never_displaces_workflow_state() -> None:
    make, outbox = Maker(), Outbox(2, 10_000)
    outbox.put(make(STATE))
    outbox.put(make(MessageType.PHASE_CHANGED, phase_seq=1))
    assert outbox.put(make(PROGRESS)) is False
    assert outbox.put(make(LOG)) is False
    assert bodies(outbox) == [("workflow_created", 1), ("phase_changed", 2)]
    assert outbox.dropped == {"progress": 1, "log": 1}
    check_accounting(outbox)


def test_workflow_state_is_shed_oldest_first_only_when_nothing_else_is_left() -> None:
    make, outbox = Maker(), Outbox(3, 10_000)
    for _ in range(5):
        assert outbox.put(make(MessageType.CHECKPOINT)) is True
    assert bodies(outbox) == [("checkpoint", 3), ("checkpoint", 4), ("checkpoint", 5)]
    assert outbox.dropped == {"checkpoint": 2}
    check_accounting(outbox)


def test_in_flight_entries_count_against_the_bounds_and_are_never_shed() -> None:
    make, outbox = Maker(), Outbox(2, 10_000)
    outbox.put(make(LOG))
    outbox.put(make(LOG))
    assert len(drain(outbox)) == 2
    assert outbox.inflight == 2
    assert outbox.queued == 0
    assert outbox.put(make(STATE)) is False  # nothing queued to shed
    assert outbox.dropped == {"workflow_created": 1}
    outbox.confirm(1)
    assert outbox.delivered == 1
    assert outbox.put(make(STATE)) is True
    check_accounting(outbox)


def test_confirm_delivers_and_requeue_puts_unacknowledged_entries_back_in_order() -> None:
    make, outbox = Maker(), Outbox(100, 10_000)
    for kind in (STATE, PROGRESS, LOG, STATE):
        outbox.put(make(kind))
    first = drain(outbox)
    assert [label(e.body)[1] for e in first] == [1, 2, 3, 4]
    outbox.confirm(1)
    outbox.put(make(STATE))  # 5, queued while 2..4 are in flight
    assert outbox.requeue() == 3
    assert outbox.inflight == 0
    again = drain(outbox)
    assert [label(e.body)[1] for e in again] == [2, 3, 4, 5]
    assert again[0] is first[1]  # the same entries, so a resend keeps the encoded text
    outbox.confirm(10)  # more than in flight: only what is there
    assert outbox.delivered == 5
    assert outbox.pending == 0
    check_accounting(outbox)


def test_phase_pending_follows_a_transition_until_it_is_delivered_or_dropped() -> None:
    make, outbox = Maker(), Outbox(2, 10_000)
    outbox.put(make(MessageType.PHASE_CHANGED, wf="a", phase_seq=3))
    assert outbox.phase_pending("a", 3)
    assert not outbox.phase_pending("a", 2)
    assert not outbox.phase_pending("b", 3)
    drain(outbox)
    assert outbox.phase_pending("a", 3)  # in flight is still pending
    outbox.requeue()
    assert outbox.phase_pending("a", 3)
    drain(outbox)
    outbox.confirm(1)
    assert not outbox.phase_pending("a", 3)
    outbox.put(make(MessageType.PHASE_CHANGED, wf="b", phase_seq=1))
    outbox.put(make(STATE))
    outbox.put(make(STATE))  # sheds the phase_changed of "b"
    assert not outbox.phase_pending("b", 1)
    check_accounting(outbox)


def test_clear_and_reject_are_counted() -> None:
    make, outbox = Maker(), Outbox(10, 10_000)
    for kind in (STATE, PROGRESS, LOG):
        outbox.put(make(kind))
    drain(outbox)
    outbox.put(make(PROGRESS))
    outbox.reject(MessageType.ERROR, "not sending: closed")
    outbox.clear("coordinator closed")
    assert outbox.pending == 0
    assert outbox.bytes == 0
    assert outbox.dropped == {"workflow_created": 1, "progress": 2, "log": 1, "error": 1}
    assert outbox.drop_reasons == {"coordinator closed": 4, "not sending: closed": 1}
    check_accounting(outbox)


def test_the_wakeup_fires_once_when_an_entry_arrives_for_a_waiting_consumer() -> None:
    make, outbox = Maker(), Outbox(10, 10_000)
    calls: list[int] = []
    outbox.set_wakeup(lambda: calls.append(1))
    outbox.put(make(LOG))
    assert calls == []  # nobody was waiting
    drain(outbox)  # ends with an empty take(), which arms the wakeup
    outbox.put(make(LOG))
    outbox.put(make(LOG))
    assert calls == [1]


def test_puts_with_wakeups_held_wake_a_waiting_consumer_once_after_the_last() -> None:
    """The parts of one log export: the client's thread is woken when all are queued, not
    at the first (it would send that one alone and come back for the rest)."""
    make, outbox = Maker(), Outbox(10, 10_000)
    woken_with: list[int] = []
    outbox.set_wakeup(lambda: woken_with.append(outbox.pending))
    drain(outbox)  # the consumer waits
    with outbox.wakeups_held():
        with outbox.wakeups_held():  # nested (two threads at once): the outer one wakes
            outbox.put(make(LOG))
        outbox.put(make(LOG))
        outbox.put(make(LOG))
        assert woken_with == []
    assert woken_with == [3]
    with outbox.wakeups_held():
        pass  # nothing was queued: the consumer, no longer waiting, is not woken again
    assert woken_with == [3]


@pytest.mark.parametrize("seed", range(12))
def test_random_operations_keep_every_message_accounted_for(seed: int) -> None:
    rng = random.Random(seed)
    make, outbox = Maker(), Outbox(rng.randint(1, 30), rng.randint(50, 2000))
    kinds = [STATE, MessageType.PHASE_CHANGED, PROGRESS, LOG, MessageType.LOG_BATCH]
    taken: list[Entry] = []
    for _ in range(2000):
        op = rng.random()
        if op < 0.6:
            kind = rng.choice(kinds)
            outbox.put(make(kind, wf=f"wf{rng.randint(0, 3)}", size=rng.randint(1, 120)))
        elif op < 0.8:
            if (entry := outbox.take()) is not None:
                taken.append(entry)
        elif op < 0.9:
            outbox.confirm(rng.randint(0, 3))
        else:
            outbox.requeue()
        check_accounting(outbox)
    outbox.requeue()
    delivered_before = outbox.delivered
    left = drain(outbox)
    outbox.confirm(len(left))
    assert outbox.delivered == delivered_before + len(left)
    assert outbox.pending == 0
    check_accounting(outbox)


@pytest.mark.parametrize("seed", range(40))
def test_coalescing_never_moves_progress_ahead_of_its_workflows_state(seed: int) -> None:
    """Random puts, takes, acknowledgements and requeues: in the order messages first leave
    the outbox, no workflow's progress carries a value newer than a state message that
    leaves after it, state messages leave in order, and the newest progress of each workflow
    that was never shed is the last one to leave."""
    rng = random.Random(seed)
    make, outbox = Maker(), Outbox(10_000, 10**9)  # no shedding: order alone is under test
    first_out: dict[str, list[tuple[str, int]]] = {}
    seen: set[int] = set()
    newest_progress: dict[str, int] = {}

    def take_one() -> None:
        entry = outbox.take()
        if entry is not None and label(entry.body)[1] not in seen:
            seen.add(label(entry.body)[1])
            first_out.setdefault(entry.workflow_id, []).append(label(entry.body))

    for _ in range(3000):
        op = rng.random()
        wf = f"wf{rng.randint(0, 2)}"
        if op < 0.35:
            outbox.put(make(PROGRESS, wf=wf))
            newest_progress[wf] = make.n
        elif op < 0.5:
            outbox.put(make(MessageType.PHASE_CHANGED, wf=wf, phase_seq=make.n))
        elif op < 0.85:
            take_one()
        elif op < 0.95:
            outbox.confirm(rng.randint(0, 3))
        else:
            outbox.requeue()
    while outbox.queued:
        take_one()
    assert outbox.coalesced > 0
    for wf, sent in first_out.items():
        states = [n for kind, n in sent if kind == "phase_changed"]
        assert states == sorted(states), wf
        for index, (kind, n) in enumerate(sent):
            if kind == "progress":
                later_states = [m for k, m in sent[index + 1 :] if k == "phase_changed"]
                assert all(n < m for m in later_states), (wf, n, later_states)
        progress = [n for kind, n in sent if kind == "progress"]
        assert progress[-1] == newest_progress[wf], wf
    check_accounting(outbox)


def test_concurrent_producers_lose_nothing_unaccounted() -> None:
    outbox = Outbox(500, 1_000_000)
    threads = 8
    per_thread = 2000
    start = threading.Barrier(threads + 2, timeout=10)  # producers, consumer, test
    consumed: list[Entry] = []
    stop = threading.Event()

    def produce(t: int) -> None:
        start.wait()
        for i in range(per_thread):
            kind = (STATE, PROGRESS, LOG)[i % 3]
            body: Any = (t, i)
            outbox.put(Entry(kind, f"wf{t}", body, 20, 0))

    def consume() -> None:
        start.wait()
        while not stop.is_set() or outbox.queued:
            entry = outbox.take()
            if entry is not None:
                consumed.append(entry)
                outbox.confirm(1)

    workers = [threading.Thread(target=produce, args=(t,)) for t in range(threads)]
    consumer = threading.Thread(target=consume)
    for thread in [*workers, consumer]:
        thread.start()
    start.wait()
    for thread in workers:
        thread.join(30)
    stop.set()
    consumer.join(30)
    assert outbox.accepted == threads * per_thread
    assert outbox.delivered == len(consumed)
    assert outbox.delivered + sum(outbox.dropped.values()) == threads * per_thread
    assert len({entry.body for entry in consumed}) == len(consumed)  # nothing twice
    for t in range(threads):  # each producer's surviving entries keep their order
        mine = [label(entry.body)[1] for entry in consumed if label(entry.body)[0] == t]
        assert mine == sorted(mine)
    check_accounting(outbox)


# ---------------------------------------------------------------------- through a Coordinator


def test_sends_never_block_even_when_the_hub_stops_reading() -> None:
    with RawServer("silent") as raw:
        coordinator = Coordinator(
            fast_config(raw.url, outbox_max_messages=200, pong_timeout=30.0, ping_interval=30.0)
        )
        coordinator.connect()
        raw.wait_for(lambda r: r.upgraded >= 1, 5, "the upgrade")
        slowest = 0.0
        started = time.perf_counter()
        for i in range(20_000):
            before = time.perf_counter()
            coordinator.send_progress(f"wf-{i}", "act", i % 100, message="x" * 200)
            slowest = max(slowest, time.perf_counter() - before)
        elapsed = time.perf_counter() - started
        stats = coordinator.stats()
    coordinator.close(0.5)
    assert elapsed < 10.0
    assert slowest < 0.5, f"one send took {slowest:.3f} s"
    assert stats.sent == 20_000
    assert stats.queued + stats.inflight <= 200
    assert stats.dropped_by_kind.get("progress", 0) > 0


def test_past_the_bounds_sent_equals_delivered_plus_dropped() -> None:
    with ScriptedServer() as server:
        coordinator = Coordinator(fast_config(server.url, outbox_max_messages=20))
        # Not connected yet: everything waits in the outbox.
        for i in range(10):
            coordinator.send_workflow_created(f"wf-{i}", action_type="job")
        for i in range(30):
            coordinator.send_progress(f"wf-p{i % 3}", "act", float(i))
        for i in range(40):
            coordinator.log_info(f"log {i}")
        before = coordinator.stats()
        assert before.coalesced == 27  # one queued progress per workflow, the newest
        assert before.sent == 53
        assert before.queued == 20
        assert before.dropped_by_kind == {"log": 33}
        assert before.drop_reasons == {"outbox full": 33}

        coordinator.connect()
        assert coordinator.flush(10)
        stats = coordinator.stats()
        assert stats.sent == stats.delivered + stats.dropped
        assert stats.delivered == 20
        assert stats.dropped == 33
        assert stats.queued == stats.inflight == 0
        server.barrier()
        received = server.app_frames()
        assert len(received) == stats.delivered
        counts = Counter(f.type for f in received)
        assert counts == {"workflow_created": 10, "progress": 3, "log": 7}
        latest = {f.workflow_id: f.payload["percent"] for f in received if f.type == "progress"}
        assert latest == {"wf-p0": 27, "wf-p1": 28, "wf-p2": 29}
        logs = [f.payload["message"] for f in received if f.type == "log"]
        assert logs == [f"log {i}" for i in range(33, 40)]  # the oldest logs were shed
        coordinator.close()


def test_a_burst_of_progress_reaches_the_hub_as_its_newest_value() -> None:
    with ScriptedServer() as server:
        coordinator = Coordinator(fast_config(server.url))
        for i in range(1000):  # not connected yet: all of it waits in the outbox
            coordinator.send_progress("wf-burst", "act", i / 10, message=f"step {i}")
        coordinator.send_progress("wf-other", "act", 1.0)
        coordinator.connect()
        assert coordinator.flush(10)
        server.barrier()
        progress = [(f.workflow_id, f.payload) for f in server.of_type("progress")]
        assert [wf for wf, _ in progress] == ["wf-burst", "wf-other"]
        assert progress[0][1]["percent"] == 99.9
        assert progress[0][1]["message"] == "step 999"
        stats = coordinator.stats()
        assert (stats.sent, stats.coalesced, stats.delivered, stats.dropped) == (2, 999, 2, 0)
        coordinator.close()


def test_when_full_the_newest_logs_survive_and_workflow_state_displaces_logs() -> None:
    with ScriptedServer() as server:
        coordinator = Coordinator(fast_config(server.url, outbox_max_messages=10))
        for i in range(15):
            coordinator.log_info(f"log {i}")
        for i in range(6):
            coordinator.send_error(f"wf-{i}", "act", f"failure {i}", recoverable=True)
        stats = coordinator.stats()
        assert stats.dropped_by_kind == {"log": 11}
        coordinator.connect()
        assert coordinator.flush(10)
        server.barrier()
        received = server.app_frames()
        messages = [f.payload["message"] for f in received if f.type == "log"]
        assert messages == ["log 11", "log 12", "log 13", "log 14"]
        assert [f.payload["error"] for f in received if f.type == "error"] == [
            f"failure {i}" for i in range(6)
        ]
        stats = coordinator.stats()
        assert stats.sent == stats.delivered + stats.dropped == 21
        assert len(received) == stats.delivered == 10
        coordinator.close()


def test_the_byte_bound_holds_through_a_coordinator() -> None:
    with ScriptedServer() as server:
        coordinator = Coordinator(fast_config(server.url, outbox_max_bytes=20_000))
        big = "y" * 1000
        for i in range(100):
            coordinator.log_info(big, fields={"i": i})
            assert coordinator.stats().queued_bytes <= 20_000
        for i in range(5):
            coordinator.send_checkpoint(f"wf-{i}", f"cp-{i}", "safe point")
        stats = coordinator.stats()
        assert stats.dropped_by_kind.get("log", 0) > 80
        assert "checkpoint" not in stats.dropped_by_kind
        coordinator.connect()
        assert coordinator.flush(10)
        stats = coordinator.stats()
        assert stats.sent == stats.delivered + stats.dropped == 105
        server.barrier()
        received = server.app_frames()
        assert len(received) == stats.delivered
        assert sum(1 for f in received if f.type == "checkpoint") == 5
        coordinator.close()


def test_every_kind_is_kept_while_disconnected_within_the_bounds() -> None:
    # ``registered`` ahead of any acknowledgement: the queued transition is still on its way
    # when the replay is decided (delivered first, it would be replayed as the last one).
    with ScriptedServer(register_on_open=True) as server:
        coordinator = Coordinator(fast_config(server.url))
        connected = threading.Event()
        coordinator.on_connected(connected.set)
        coordinator.connect()
        assert coordinator.wait_registered(5)
        server.stop()  # the hub goes away; the client keeps re-dialling
        wait_for_disconnect(coordinator)
        connected.clear()

        phases = coordinator.phases
        phases.register_workflow("wf-1")
        phases.transition_to("wf-1", "pre-flight", "checks")
        coordinator.send_workflow_created("wf-1", action_type="etl")
        coordinator.send_progress("wf-1", "act", 10.0, "load", "loading")
        coordinator.send_checkpoint("wf-1", "cp-1", "safe")
        coordinator.send_error("wf-1", "act", "transient", recoverable=True)
        coordinator.log_warn("while away")
        coordinator.send_log_batch([LogEntry(message="batched 1"), LogEntry(message="batched 2")])
        assert coordinator.stats().dropped == 0

        server.start(server.port)
        assert connected.wait(10)
        assert coordinator.flush(10)
        server.barrier()
        kinds = Counter(f.type for f in server.app_frames() if f.connection == 2)
        assert kinds["workflow_created"] == 1
        assert kinds["progress"] == 1
        assert kinds["checkpoint"] == 1
        assert kinds["error"] == 1
        assert kinds["log"] == 1
        assert kinds["log_batch"] == 1
        assert kinds["phase_changed"] == 1  # queued, so not replayed a second time
        stats = coordinator.stats()
        assert stats.dropped == 0
        assert stats.sent == stats.delivered
        coordinator.close()


def wait_for_disconnect(coordinator: Coordinator) -> None:
    gone = threading.Event()
    unsubscribe = coordinator.on_disconnected(gone.set)
    if coordinator.is_connected:
        assert gone.wait(10)
    unsubscribe()


def test_shedding_logs_one_rate_limited_warning(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="when_coordinator")
    with ScriptedServer() as server:
        coordinator = Coordinator(fast_config(server.url, outbox_max_messages=5))
        for i in range(500):
            coordinator.log_info(f"log {i}")
        assert coordinator.stats().dropped == 495
        warnings = [r for r in caplog.records if "outbox is full" in r.getMessage()]
        assert len(warnings) == 1
        assert warnings[0].levelno == logging.WARNING
        assert warnings[0].name.startswith("when_coordinator")
        coordinator.close(0.1)


def test_messages_without_a_hub_are_counted_as_dropped_without_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="when_coordinator")
    coordinator = Coordinator(fast_config("ws://127.0.0.1:9/x").with_changes(when_url=""))
    coordinator.connect()  # no hub configured: nothing connects
    assert coordinator.send_progress("wf", "act", 1.0) is False
    assert coordinator.log_info("nobody listens") is False
    stats = coordinator.stats()
    assert stats.sent == 2
    assert stats.dropped_by_kind == {"progress": 1, "log": 1}
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    coordinator.close()
