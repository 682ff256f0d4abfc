"""Reliability against hostile input: hypothesis generates frames (mutations of the reference
transcript's frames, and garbage) by the thousand, sent over live connections into the client
from a scripted server and into the hub from a raw client.

Neither side may crash or hit an internal error, the connection of a well-behaved peer is not
disturbed, and no workflow's phase changes: the frames sent to the client are never valid
commands for a workflow it knows, and the frames sent to the hub never name the well-behaved
service or its workflows.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import functools
import json
import logging
import random
import threading
import tracemalloc
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.exceptions import ConnectionClosed

from tests.support.faults import TRANSCRIPT, transcript_frames
from tests.support.scripted_server import ScriptedServer, fast_config, wait_until
from when_coordinator import Coordinator, Phase, PhaseManager, PhaseState
from when_coordinator.hub import Hub, HubLimits, ThreadedHub, WorkflowState
from when_coordinator.hub.testing import RawService, frame
from when_coordinator.protocol import MessageType, ProtocolError, decode

BATCH = (180, 250)  # frames per example
SIZES = [
    pytest.param(60, id="10k-frames"),  # at least 60 x 180 = 10,800 frames each way
    pytest.param(1_500, id="soak-320k-frames", marks=[pytest.mark.soak, pytest.mark.timeout(3600)]),
]

MIB = 1 << 20
TYPES = [t.value for t in MessageType]
HUGE = [10**30, 2**64, -(2**63), 10**400, 1e308, -1e308, 2**53 + 1]
SPECIAL_NUMBERS = ["NaN", "Infinity", "-Infinity", "1e999", "-0", "1E400", "0.1e-400"]
NEST = "__nest__"


TEXTS = ["", "wf-1", "wf-2", "pending", "execution", "1.0", "2.0", "x" * 5000, "é", "\u0000"]
OPS = ["type", "drop", "retype", "huge", "nest", "id", "workflow", "extra", "payload"]
FORMS = ["json"] * 6 + ["truncated", "duplicate", "garbage", "binary"]


def scalar(rng: random.Random) -> Any:
    kind = rng.randrange(7)
    if kind == 0:
        return None
    if kind == 1:
        return rng.random() < 0.5
    if kind == 2:
        return rng.randint(-1000, 1000)
    if kind == 3:
        return rng.choice(HUGE)
    if kind == 4:
        return rng.choice([0.5, -0.0, float("nan"), float("inf"), -float("inf"), 1e-320])
    if kind == 5:
        return "".join(chr(rng.randrange(32, 0x2FF)) for _ in range(rng.randrange(12)))
    return rng.choice(TEXTS)


def value(rng: random.Random) -> Any:
    """Any JSON value, odd ones often."""
    kind = rng.randrange(4)
    if kind == 0:
        return [scalar(rng) for _ in range(rng.randrange(4))]
    if kind == 1:
        return {str(scalar(rng))[:6]: scalar(rng) for _ in range(rng.randrange(4))}
    return scalar(rng)


def keys_of(message: dict[str, Any]) -> list[tuple[str, ...]]:
    paths: list[tuple[str, ...]] = [(k,) for k in message]
    payload = message.get("payload")
    if isinstance(payload, dict):
        paths += [("payload", k) for k in payload]
    return paths


def put(message: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    target: Any = message
    for part in path[:-1]:
        if not isinstance(target.get(part), dict):
            target[part] = {}
        target = target[part]
    target[path[-1]] = value


def delete(message: dict[str, Any], path: tuple[str, ...]) -> None:
    target: Any = message
    for part in path[:-1]:
        target = target.get(part)
        if not isinstance(target, dict):
            return
    target.pop(path[-1], None)


def mutate(seed: int, base: dict[str, Any], ids: list[str]) -> str | bytes:
    """One frame: ``base`` with 1 to 4 mutations chosen by ``seed``, serialised in one of
    several ways (JSON, truncated JSON, duplicate keys, deep nesting, garbage, binary)."""
    rng = random.Random(seed)
    message = copy.deepcopy(base)
    workflow_ids = [*ids, "", "wf-unknown", "wf-1 ", "WF-1"]
    depth = 0
    for _ in range(rng.randint(1, 4)):
        op = rng.choice(OPS)
        paths = keys_of(message)
        if op == "type":
            message["type"] = rng.choice([*TYPES, "", "PING", "no_such_type"])
        elif op == "drop" and paths:
            delete(message, rng.choice(paths))
        elif op == "retype" and paths:
            put(message, rng.choice(paths), value(rng))
        elif op == "huge":  # every number the protocol has, at once
            for key in ("percent", "progress", "current_item", "total_items", "schema_version"):
                put(message, ("payload", key), rng.choice(HUGE))
        elif op == "nest":
            depth = rng.choice([5, 100, 990, 5_000, 50_000])
            put(message, ("payload", "deep") if rng.random() < 0.5 else ("payload",), NEST)
        elif op == "id":
            message["id"] = value(rng) if rng.random() < 0.9 else "i" * 20_000
        elif op == "workflow":
            where = rng.choice([("workflow_id",), ("payload", "workflow_id")])
            put(message, where, rng.choice(workflow_ids))
        elif op == "extra":
            put(message, (rng.choice(["zz", "payload"]), "zz"), value(rng))
        elif op == "payload":
            message["payload"] = value(rng)
    form = rng.choice(FORMS)
    text = json.dumps(message, ensure_ascii=rng.random() < 0.5)
    if depth:
        text = text.replace(f'"{NEST}"', "[" * depth + "1" + "]" * depth, 1)
    if form == "truncated":
        return text[: rng.randrange(max(1, len(text)))]
    if form == "duplicate":
        return text.replace("{", '{"type": "ping", "id": 7, ', 1)
    if form == "garbage":
        if rng.random() < 0.5:
            return text.replace("1", rng.choice(SPECIAL_NUMBERS), 1)
        return "".join(chr(rng.randrange(1, 0x2FF)) for _ in range(rng.randrange(40)))
    if form == "binary":
        return rng.randbytes(rng.randrange(64)) if rng.random() < 0.5 else text.encode()
    return text


SEEDS = st.lists(
    st.tuples(st.integers(0, 1_000_000), st.integers(0, 2**32 - 1)),
    min_size=BATCH[0],
    max_size=BATCH[1],
)
"""Batches of (base, mutation seed) pairs; hypothesis draws two choices a frame, which keeps
generation cheap, and a failing batch still shrinks to its culprits. The frames are built in
the test (``build``), so that hypothesis keeps pairs of numbers, not the frames."""


def build(
    batch: list[tuple[int, int]],
    bases: list[dict[str, Any]],
    ids: list[str],
    keep: Callable[[str | bytes], bool],
) -> list[str | bytes]:
    # Hypothesis favours small and repeated numbers; mixing in the position keeps a batch of
    # (0, 0) pairs from being one frame two hundred times.
    frames = (
        mutate(hash((index, seed, position)), bases[index % len(bases)], ids)
        for position, (index, seed) in enumerate(batch)
    )
    return [item for item in frames if keep(item)]


def fuzz_settings(examples: int) -> settings:
    return settings(
        max_examples=examples,
        deadline=None,
        database=None,
        derandomize=False,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
        ],
    )


@pytest.fixture
def errors(caplog: pytest.LogCaptureFixture) -> Iterator[list[logging.LogRecord]]:
    """ERROR records of the package: an internal error hit by bad input is a bug."""
    caplog.set_level(logging.WARNING, logger="when_coordinator")
    found: list[logging.LogRecord] = []
    yield found
    found.extend(
        r
        for r in caplog.get_records("call")  # (caplog.records would be the teardown's)
        if r.name.startswith("when_coordinator") and r.levelno >= logging.ERROR
    )
    assert not found, [r.getMessage() for r in found]


# ---------------------------------------------------------------------- into the client


KNOWN = ["wf-1", "wf-2", "wf-3", "wf-4"]  # wf-1 and wf-2 are also the transcript's ids


def known_command(text: str | bytes, phases: PhaseManager) -> bool:
    """Whether the frame is a pause, resume or cancel the client would apply to a workflow it
    knows (those may change a phase, so the fuzzer does not send them)."""
    if isinstance(text, bytes):
        return False
    try:
        message = decode(text)
        if message.type not in (MessageType.PAUSE, MessageType.RESUME, MessageType.CANCEL):
            return False
        message.typed_payload()
        return message.target_workflow_id() in phases
    except (ProtocolError, ValueError, TypeError, RecursionError):
        return False


def client_states(coordinator: Coordinator) -> dict[str, PhaseState]:
    return {wf: coordinator.phases.get_state(wf) for wf in KNOWN}


# The client's and the hub's threads use the random module while hypothesis generates: its
# check for strategies that use the global random state reports them.
@pytest.mark.filterwarnings("ignore:Do not use the `random` module inside strategies")
@pytest.mark.parametrize("examples", SIZES)
def test_fuzzed_frames_never_crash_the_client_nor_change_a_phase(
    errors: list[logging.LogRecord], examples: int
) -> None:
    bases = transcript_frames("out") + transcript_frames("in")
    with ScriptedServer() as server:
        coordinator = Coordinator(fast_config(server.url, service_name="fuzzed"))
        coordinator.connect()
        assert coordinator.wait_registered(10)
        phases = coordinator.phases
        for wf in KNOWN:
            phases.register_workflow(wf)
        for wf in ("wf-1", "wf-2", "wf-4"):
            for phase in ("pre-flight", "planning", "execution"):
                phases.transition_to(wf, phase)
        phases.pause("wf-2", "held")
        phases.complete_pause("wf-2", "cp-1")
        phases.complete("wf-4")
        assert coordinator.flush(5)
        before = client_states(coordinator)
        sent = [0]

        def harmless(item: str | bytes) -> bool:
            return not known_command(item, phases)

        @fuzz_settings(examples)
        @given(seeds=SEEDS)
        def run(seeds: list[tuple[int, int]]) -> None:
            batch = build(seeds, bases, KNOWN, harmless)
            connection = server.connections[-1]

            async def go() -> None:
                for item in batch:
                    await connection.ws.send(item)

            server._call(go)
            sent[0] += len(batch)
            server.barrier()  # every frame before the barrier's ping has been handled
            assert coordinator._thread is not None
            assert coordinator._thread.is_alive()
            assert client_states(coordinator) == before
            stats = coordinator.stats()
            assert (stats.connects, stats.connected) == (1, True)

        run()
        assert sent[0] >= 10_000
        stats = coordinator.stats()
        refused = sum(stats.inbound_dropped.values())
        assert refused > sent[0] // 4  # most were refused...
        assert stats.received - refused >= 100  # ...and some handled (pings, status, ...)
        # Still working: what the client sends arrives.
        coordinator.send_progress("wf-1", "act", 77.0, message="after the fuzz")
        assert coordinator.flush(5)
        server.barrier()
        assert any(f.payload.get("message") == "after the fuzz" for f in server.of_type("progress"))
        assert client_states(coordinator) == before
        coordinator.close(2.0)


# ---------------------------------------------------------------------- into the hub

GOOD_SERVICE = "good-service"
GOOD = ["good-wf-run", "good-wf-held", "good-wf-done"]


def names_no_good_service(item: str | bytes) -> bool:
    """The fuzzer may not claim the good service's id nor name its workflows."""
    return b"good" not in item if isinstance(item, bytes) else "good" not in item


def good_view(hub: ThreadedHub) -> dict[str, tuple[Any, ...]]:
    workflows = hub.workflows

    def view(state: WorkflowState) -> tuple[Any, ...]:
        return (
            state.phase,
            state.history,
            state.checkpoints,
            state.errors,
            state.anomaly_count,
            state.service_id,
        )

    return {wf: view(workflows[wf]) for wf in GOOD}


@pytest.mark.filterwarnings("ignore:Do not use the `random` module inside strategies")
@pytest.mark.parametrize("examples", SIZES)
def test_fuzzed_frames_never_crash_the_hub_nor_disturb_another_service(
    errors: list[logging.LogRecord], examples: int
) -> None:
    bases = transcript_frames("in")
    fuzz_ids = sorted({b.get("workflow_id", "") for b in bases} - {""})
    loop = asyncio.new_event_loop()
    # A generous rate limit: the fuzzer's frames are to be parsed, not throttled.
    with ThreadedHub(Hub(port=0, rate_limit=1e6, rate_burst=1_000_000)) as hub:
        good = well_behaved_service(hub)
        before = good_view(hub)
        good_connection = hub.services[GOOD_SERVICE].connection_id
        state: dict[str, Any] = {"sent": 0, "closes": [], "round": 0}

        async def open_fuzzer() -> RawService:
            fuzzer = await RawService.connect(hub.url, service_name="fuzzer")
            await fuzzer.register("fuzzer", service_id="fuzzer")
            return fuzzer

        state["fuzzer"] = loop.run_until_complete(open_fuzzer())

        @fuzz_settings(examples)
        @given(seeds=SEEDS)
        def run(seeds: list[tuple[int, int]]) -> None:
            batch = build(seeds, bases, fuzz_ids, names_no_good_service)
            state["round"] += 1
            marker = f"fuzz round {state['round']}"
            sentinel_id = f"fz-sentinel-{state['round']}"
            fuzzer: RawService = state["fuzzer"]
            connection_id = hub.call(lambda: list(hub.hub.connections)[-1])

            async def go() -> None:
                try:
                    for item in batch:
                        await fuzzer.ws.send(item)
                    # A workflow of its own each round: a fuzzed register may have moved this
                    # connection to another service id, and a workflow belongs to the service
                    # that created it (another's progress is refused, as it should be).
                    sentinel = {"workflow_id": sentinel_id, "percent": 1, "message": marker}
                    await fuzzer.send(frame("progress", sentinel_id, sentinel))
                except ConnectionClosed:
                    pass  # the hub hung up on this connection; checked below

            loop.run_until_complete(go())
            state["sent"] += len(batch)

            def settled(h: ThreadedHub) -> bool:
                sentinel = h.hub.workflows.get(sentinel_id)
                closed = not h.hub.connections[connection_id].is_open
                return closed or (sentinel is not None and sentinel.message == marker)

            hub.wait_for(settled, 15)
            connection = hub.connections[connection_id]
            assert not any("internal error" in r for r in connection.invalid_reasons)
            if not connection.is_open:  # refused for cause: a reason, then a new connection
                assert connection.close_code in (1002, 1007, 1008, 1009), connection
                assert connection.close_reason
                state["closes"].append(connection.close_code)
                loop.run_until_complete(fuzzer.close())
                state["fuzzer"] = loop.run_until_complete(open_fuzzer())
            # The well-behaved service is untouched and keeps working.
            assert good_view(hub) == before
            assert hub.connections[good_connection].is_open
            good.send_progress("good-wf-run", "act", float(state["round"] % 100), message=marker)
            hub.wait_for(lambda h: h.hub.workflows["good-wf-run"].message == marker, 10)

        try:
            run()
            assert state["sent"] >= 10_000
            assert hub.loop.is_running()
            services = hub.services
            assert services[GOOD_SERVICE].connected
            assert services[GOOD_SERVICE].connection_id == good_connection
            assert good.stats().connects == 1
            assert good_view(hub) == before
            # The mutations hit both sides of the parser: many refused, many applied.
            fuzzed = [c for c in hub.connections.values() if c.header_service_name == "fuzzer"]
            assert sum(c.invalid_frames for c in fuzzed) >= 1_000
            assert sum(c.messages for c in fuzzed) >= 500
        finally:
            loop.run_until_complete(state["fuzzer"].close())
            loop.close()
            good.close(2.0)


# ---------------------------------------------------------------------- invalid UTF-8 text


async def test_invalid_utf8_in_a_text_frame_closes_only_that_connection_with_1007() -> None:
    async with Hub() as hub:
        bad = await RawService.connect(hub.url, service_name="bad")
        await bad.register("bad", service_id="bad")
        good = await RawService.connect(hub.url, service_name="good")
        await good.register("good", service_id="good")
        await bad.ws.send(b'{"id": "x", "type": "log", "payload": "\xff\xfe"}', text=True)
        code, reason = await bad.closed()
        assert code == 1007
        assert reason
        progress = {"workflow_id": "wf-good", "percent": 9}
        await good.send(frame("progress", "wf-good", progress))
        await hub.wait_for(lambda h: h.workflows["wf-good"].progress == 9)
        assert hub.services["bad"].close_code == 1007
        assert hub.services["good"].connected
        await bad.close()
        await good.close()


def test_invalid_utf8_from_the_hub_costs_one_reconnect_and_no_phase() -> None:
    with ScriptedServer() as server:
        coordinator = Coordinator(fast_config(server.url))
        reconnected = threading.Event()
        registrations: list[object] = []

        def on_registered(payload: object) -> None:
            registrations.append(payload)
            if len(registrations) >= 2:
                reconnected.set()

        coordinator.on_registered(on_registered)
        coordinator.connect()
        assert coordinator.wait_registered(10)
        coordinator.phases.register_workflow("wf-1")
        for phase in ("pre-flight", "planning", "execution"):
            coordinator.phases.transition_to("wf-1", phase)
        before = coordinator.phases.get_state("wf-1")
        pause = (
            b'{"id": "p", "type": "pause", "payload": {"workflow_id": "wf-1", "reason": "\xff"}}'
        )
        connection = server.connections[-1]

        async def go() -> None:
            await connection.ws.send(pause, text=True)

        server._call(go)
        assert reconnected.wait(10)
        server.wait_for(lambda s: s.connections[0].closed, 5)
        assert server.connections[0].close_code == 1007
        assert coordinator.phases.get_state("wf-1") == before
        assert coordinator.phases.get_phase("wf-1") is Phase.EXECUTION
        wait_until(lambda: coordinator.stats().connects == 2, 5)
        coordinator.close(2.0)


# ---------------------------------------------------------------------- abuse within the limits


ABUSE_LIMITS = HubLimits(
    log_buffer_bytes=4 * MIB,
    workflow_log_buffer_bytes=1 * MIB,
    workflow_logs_bytes=4 * MIB,
    workflow_bytes=2 * MIB,
    workflows_bytes=8 * MIB,
    checkpoint_state_bytes=4 * MIB,
    received_bytes=4 * MIB,
)
BIG = 900_000  # characters in a large frame's text: the frame stays under 1 MiB


def well_behaved_service(hub: ThreadedHub) -> Coordinator:
    """The control service beside the abuse: running, held (paused) and finished workflows,
    all known to the hub before the abuse starts."""
    good = Coordinator(fast_config(hub.url, service_name="good", service_id=GOOD_SERVICE))
    good.connect()
    assert good.wait_registered(10)
    phases = good.phases
    for wf in GOOD:
        phases.register_workflow(wf)
        good.send_workflow_created(wf)
        for phase in ("pre-flight", "planning", "execution"):
            phases.transition_to(wf, phase)
    phases.pause("good-wf-held", "held")
    phases.complete_pause("good-wf-held", "cp-held")
    phases.complete("good-wf-done")
    good.send_progress("good-wf-run", "act", 1.0, message="ready")
    hub.wait_for(lambda h: h.hub.workflows["good-wf-run"].message == "ready", 10)
    return good


def wire_frames() -> list[dict[str, Any]]:
    """Every client-to-hub frame of the recorded transcripts (../shared/wire/*.jsonl)."""
    frames: list[dict[str, Any]] = []
    for path in sorted(TRANSCRIPT.parent.glob("*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            record = json.loads(line)
            if record.get("dir") == "in":
                frames.append(json.loads(record["frame"]))
    return frames


async def send_all(client: RawService, frames: list[str | bytes]) -> None:
    """Send, then wait for a pong: frames still in this loop's write buffer (large ones
    fill it) would otherwise wait there until the loop runs again."""
    for item in frames:
        await client.ws.send(item)
    await asyncio.wait_for(await client.ws.ping(), 30)


def good_says(hub: ThreadedHub, marker: str) -> bool:
    return hub.hub.workflows["good-wf-run"].message == marker


def large_frame(rng: random.Random, n: int) -> str:
    """A well-formed frame of about 900 KB of one kind, for one of many workflows."""
    wf = f"abuse-{n % 40}"
    text = f"{n} " + rng.choice("abcxyz") * BIG
    kind = n % 8
    if kind == 0:
        message = frame("progress", wf, {"workflow_id": wf, "percent": n % 100, "message": text})
    elif kind == 1:
        message = frame("log", payload={"level": "info", "message": text, "workflow_id": wf})
    elif kind == 2:
        entries = [{"level": "warn", "message": text[: BIG // 9], "workflow_id": wf}] * 8
        message = frame("log_batch", payload={"logs": entries})
    elif kind == 3:
        state = {"rows": [text[: BIG // 4]] * 3, "n": n}
        message = frame(
            "checkpoint",
            wf,
            {"workflow_id": wf, "checkpoint_id": f"cp-{n}", "reason": "r", "state": state},
        )
    elif kind == 4:
        message = frame("error", wf, {"workflow_id": wf, "error": text, "recoverable": True})
    elif kind == 5:
        source, target = ("execution", "pausing") if n % 16 < 8 else ("pausing", "execution")
        change = {"workflow_id": wf, "from": source, "to": target, "reason": text}
        message = frame("phase_changed", wf, change)
    elif kind == 6:
        answer = {"workflow_id": wf, "phase": "execution", "progress": 1, "current_action": text}
        message = frame("status_response", wf, answer)
    else:
        message = frame("workflow_created", wf, {"workflow_id": wf, "action_type": text})
    return json.dumps(message)


@pytest.mark.filterwarnings("ignore:Do not use the `random` module inside strategies")
def test_abuse_within_the_frame_limit_keeps_the_hub_in_its_byte_bounds_and_others_unaffected(
    errors: list[logging.LogRecord],
) -> None:
    """Mutated transcript frames, odd frames and ~300 MB of well-formed frames just under the
    frame limit (progress, logs, batches, checkpoint states, errors, reasons, status replies)
    over many workflows: every byte bound holds at every observation, the Python memory the
    hub keeps stays within a small multiple of their sum (measured with tracemalloc), and a
    well-behaved service at the same hub is untouched and keeps working, commands included."""
    rng = random.Random(1212)
    bases = wire_frames()
    fuzz_ids = sorted({b.get("workflow_id", "") for b in bases} - {""})
    budget = (
        sum(
            getattr(ABUSE_LIMITS, name)
            for name in (
                "log_buffer_bytes",
                "workflow_logs_bytes",
                "workflows_bytes",
                "checkpoint_state_bytes",
            )
        )
        + 2 * ABUSE_LIMITS.received_bytes
    )  # received and sent
    loop = asyncio.new_event_loop()
    hub_options: dict[str, Any] = {"rate_limit": 1e6, "rate_burst": 10**6, "limits": ABUSE_LIMITS}
    with ThreadedHub(Hub(port=0, **hub_options)) as hub:
        good = well_behaved_service(hub)
        before = good_view(hub)
        good_connection = hub.services[GOOD_SERVICE].connection_id

        async def open_abuser() -> RawService:
            abuser = await RawService.connect(hub.url, service_name="abuser")
            await abuser.register("abuser", service_id="abuser")
            return abuser

        abuser = loop.run_until_complete(open_abuser())
        tracemalloc.start()
        baseline = tracemalloc.get_traced_memory()[0]
        peak_kept = 0
        sent_bytes = 0
        try:
            for round_number in range(30):
                batch: list[str | bytes] = []
                for position in range(60):  # odd and mutated frames
                    base = bases[rng.randrange(len(bases))]
                    item = mutate(hash((round_number, position)), base, fuzz_ids)
                    if names_no_good_service(item):
                        batch.append(item)
                batch += [large_frame(rng, round_number * 10 + k) for k in range(10)]
                rng.shuffle(batch)
                marker = f"abuse round {round_number}"
                # A fresh sentinel each round: the mutated frames re-register the connection
                # under other service ids, and a workflow belongs to the service that made it.
                sentinel_id = f"abuse-sentinel-{round_number}"
                last = frame("progress", sentinel_id, {"workflow_id": sentinel_id, "percent": 1})
                batch.append(json.dumps(last))
                connection_id = hub.call(lambda: list(hub.hub.connections)[-1])
                with contextlib.suppress(ConnectionClosed):
                    loop.run_until_complete(send_all(abuser, batch))
                sent_bytes += sum(len(item) for item in batch)

                def settled(
                    h: ThreadedHub, wf: str = sentinel_id, cid: str = connection_id
                ) -> bool:
                    return wf in h.hub.workflows or not h.hub.connections[cid].is_open

                hub.wait_for(settled, 30)
                if not hub.connections[connection_id].is_open:  # refused for cause: reconnect
                    assert hub.connections[connection_id].close_code in (1002, 1007, 1008, 1009)
                    loop.run_until_complete(abuser.close())
                    abuser = loop.run_until_complete(open_abuser())
                # Every bound holds (one item may exceed its bound alone).
                memory = hub.memory()
                for name, use in memory.items():
                    if "bytes" in use:
                        assert use["bytes"] <= use["limit"] + MIB, (name, use)
                    else:  # bounded by count, each record's texts cut
                        assert use["count"] <= use["limit"], (name, use)
                kept = sum(use.get("bytes", 0) for use in memory.values())
                assert kept <= budget + 2 * MIB
                peak_kept = max(peak_kept, tracemalloc.get_traced_memory()[0] - baseline)
                # The well-behaved service is untouched and keeps working.
                assert good_view(hub) == before
                good.send_progress("good-wf-run", "act", float(round_number), message=marker)
                hub.wait_for(functools.partial(good_says, marker=marker), 10)
            current = tracemalloc.get_traced_memory()[0] - baseline
        finally:
            tracemalloc.stop()
            loop.run_until_complete(abuser.close())
            loop.close()
        try:
            assert sent_bytes > 250 * MIB
            # What the hub holds after ~300 MB, in Python's own accounting: its byte budget
            # plus Python's overhead and frames in flight, not what was sent.
            assert current < 2 * budget + 16 * MIB, (current, budget)
            assert peak_kept < 2 * budget + 32 * MIB, (peak_kept, budget)
            memory = hub.memory()
            evicted = sum(use["evicted"] for use in memory.values())
            assert evicted > 100
            assert memory["checkpoint_states"]["evicted"] > 0
            assert memory["workflows"]["texts_truncated"] > 0
            # Commands still reach the well-behaved service, and its answers come back.
            assert hub.services[GOOD_SERVICE].connection_id == good_connection
            assert good.stats().connects == 1
            status = hub.status("good-wf-run", timeout=10)
            assert status.phase is Phase.EXECUTION
            hub.pause("good-wf-run", "after the abuse")
            hub.wait_for(lambda h: h.hub.workflows["good-wf-run"].phase is Phase.PAUSING, 10)
        finally:
            good.close(2.0)
