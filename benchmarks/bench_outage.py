"""A 30-second hub outage under load: bounded memory, no workflow state lost, exact counts.

5. A service (its own process, so that its resident memory is its own) logs 2,000 records/s
   through ``logging`` -> ``CoordinatorLogHandler`` -> ``LogForwarder`` (batches of 100),
   reports progress for 10 running workflows ten times a second each, checkpoints each of
   them every second and completes one and starts another every two seconds. Once it is in a
   steady state with the hub up, its RSS is the baseline; then the hub (its own process) closes
   and stays down for 30 s, after which the service stops its load and a new hub starts on the
   same port. Targets, all in one row:

   - RSS (``VmRSS`` sampled every 50 ms, from the baseline until everything is delivered)
     grows by no more than the configured outbox byte bound plus 20 MB;
   - no workflow-state fact is lost: every workflow created, phase change and checkpoint the
     service made reached one of the two hubs;
   - ``stats()``: sent == delivered + dropped, with nothing queued or in flight;
   - logs delivered equal what the bounds allow: every record is either at a hub or in a batch
     the outbox counted as shed, and the records that reach the new hub are the newest ones,
     without a gap (the outbox sheds the oldest logs first).

   Record numbers travel in the log messages, so each hub reports which records it has. A
   batch the first hub received but did not acknowledge before it closed is sent again and,
   being the oldest log then, is the first shed: it is at a hub *and* counted as shed (shown
   as "overlap"; at most a few batches).

The service runs the reconnect schedule with ``reconnect_max_delay=2.0`` so that it finds the
new hub within two seconds rather than after the default backoff of up to 30 s.
"""

from __future__ import annotations

import asyncio
import logging
import re
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

from .harness import Child, Figure, say, serve_commands

OUTAGE = 30.0
WARMUP = 3.0
TICK = 0.01
RECORDS_PER_TICK = 20  # 2,000 records/s
WORKFLOWS = 10
PROGRESS_EVERY = 10  # ticks: every workflow reports ten times a second
CHECKPOINT_EVERY = 100  # ticks: every workflow checkpoints every second
TURNOVER_EVERY = 200  # ticks: one workflow completes and another starts every two seconds
BATCH = 100
OUTBOX_BYTES = 8 * 1024 * 1024
ALLOWANCE_MB = 20.0
MAX_OVERLAP_BATCHES = 8
MAX_LOAD_SECONDS = 120.0
TIMEOUT = 120.0
_RECORD = re.compile(r"record (\d+)$")


def _runs(numbers: Iterable[int]) -> list[list[int]]:
    """Sorted numbers as [first, last] runs of consecutive values."""
    runs: list[list[int]] = []
    for n in sorted(set(numbers)):
        if runs and runs[-1][1] == n - 1:
            runs[-1][1] = n
        else:
            runs.append([n, n])
    return runs


def _expand(runs: Iterable[Sequence[int]]) -> set[int]:
    return {n for first, last in runs for n in range(first, last + 1)}


# ---------------------------------------------------------------------- the hub process


async def _serve_hub(port: int) -> None:
    from when_coordinator.hub import Hub  # noqa: PLC0415

    hub = Hub(port=port, record_limit=1_000_000, log_buffer=1_000, workflow_log_buffer=10)
    await hub.start()

    async def handle(command: dict[str, Any]) -> dict[str, Any]:
        if command["cmd"] != "stop":
            raise ValueError(f"unknown command {command!r}")
        await hub.close()
        return _hub_report(hub)

    say(url=hub.url, port=hub.port)
    try:
        await serve_commands(handle)
    finally:
        await hub.close()


def _hub_report(hub: Any) -> dict[str, Any]:
    """What this hub received: workflow-state facts, record numbers, message types."""
    from when_coordinator.protocol import (  # noqa: PLC0415
        CheckpointPayload,
        LogBatchPayload,
        LogPayload,
        PhaseChangedPayload,
        WorkflowCreatedPayload,
    )

    facts: set[tuple[str, ...]] = set()
    records: list[int] = []
    types: Counter[str] = Counter()
    for received in hub.received:
        message = received.message
        types[str(message.type)] += 1
        if str(message.type) == "register":
            continue
        payload = message.typed_payload()
        if isinstance(payload, PhaseChangedPayload):
            facts.add(
                ("phase", payload.workflow_id, str(payload.from_phase or ""), str(payload.to_phase))
            )
        elif isinstance(payload, CheckpointPayload):
            facts.add(("checkpoint", payload.workflow_id, payload.checkpoint_id))
        elif isinstance(payload, WorkflowCreatedPayload):
            facts.add(("created", payload.workflow_id))
        elif isinstance(payload, (LogPayload, LogBatchPayload)):
            entries = (payload.entry,) if isinstance(payload, LogPayload) else payload.logs
            for entry in entries:
                match = _RECORD.search(entry.message)
                if match:
                    records.append(int(match.group(1)))
    return {"facts": sorted(facts), "records": _runs(records), "types": dict(types)}


# ---------------------------------------------------------------------- the service process


def _rss_bytes() -> int:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


class _Service:
    """The service under test: a coordinator, a logger, workflows, and an RSS sampler."""

    def __init__(self, url: str) -> None:
        from when_coordinator import (  # noqa: PLC0415
            Config,
            Coordinator,
            CoordinatorLogHandler,
            LogForwarder,
        )

        self.coordinator = Coordinator(
            Config(
                when_url=url,
                service_name="bench-outage",
                reconnect_initial_delay=0.2,
                reconnect_max_delay=2.0,
                outbox_max_bytes=OUTBOX_BYTES,
            )
        )
        self.facts: set[tuple[str, ...]] = set()
        self.coordinator.phases.on_phase_changed(self._phase_changed)
        self.forwarder = LogForwarder(self.coordinator, buffer_size=BATCH, flush_interval=3600)
        self.logger = logging.getLogger("bench.outage.service")
        self.logger.addHandler(CoordinatorLogHandler(self.forwarder))
        self.logger.setLevel(logging.INFO)
        self.logger.propagate = False
        self.logged = 0
        self.running: list[str] = []
        self.started_workflows = 0
        self.stop = threading.Event()
        self.load: threading.Thread | None = None
        self.baseline = 0
        self.peak = 0
        self.sampling = threading.Event()
        self.sampler = threading.Thread(target=self._sample, name="rss", daemon=True)
        self.coordinator.connect()
        if not self.coordinator.wait_registered(TIMEOUT):
            raise RuntimeError("the service did not register with the hub")
        self.sampler.start()

    def _phase_changed(self, state: Any) -> None:
        previous = str(state.previous_phase or "")
        self.facts.add(("phase", state.workflow_id, previous, str(state.phase)))

    def _sample(self) -> None:
        deadline = time.monotonic() + 900
        while not self.sampling.wait(0.05) and time.monotonic() < deadline:
            self.peak = max(self.peak, _rss_bytes())

    # -- the load

    def _start_workflow(self) -> None:
        from when_coordinator import Phase  # noqa: PLC0415

        wf = f"wf-outage-{self.started_workflows}"
        self.started_workflows += 1
        phases = self.coordinator.phases
        phases.register_workflow(wf)
        self.coordinator.send_workflow_created(wf, action_id="act-load", action_type="etl")
        self.facts.add(("created", wf))
        for phase in (Phase.PRE_FLIGHT, Phase.PLANNING, Phase.EXECUTION):
            phases.transition_to(wf, phase)
        self.running.append(wf)

    def _run_load(self) -> None:
        coordinator, logger = self.coordinator, self.logger
        while len(self.running) < WORKFLOWS:
            self._start_workflow()
        began = time.monotonic()
        tick = 0
        while not self.stop.is_set() and time.monotonic() - began < MAX_LOAD_SECONDS:
            tick += 1
            delay = began + tick * TICK - time.monotonic()
            if delay > 0 and self.stop.wait(delay):
                break
            for _ in range(RECORDS_PER_TICK):
                wf = self.running[self.logged % WORKFLOWS]
                logger.info(
                    "loaded orders, record %d",
                    self.logged,
                    extra={"workflow_id": wf, "rows": self.logged, "table": "orders"},
                )
                self.logged += 1
            if tick % PROGRESS_EVERY == 0:
                for wf in self.running:
                    percent = (tick % TURNOVER_EVERY) * 100 / TURNOVER_EVERY
                    coordinator.send_progress(wf, "act-load", percent, "load", f"tick {tick}")
            if tick % CHECKPOINT_EVERY == 0:
                for wf in self.running:
                    checkpoint = f"cp-{tick}"
                    coordinator.send_checkpoint(wf, checkpoint, "periodic")
                    self.facts.add(("checkpoint", wf, checkpoint))
            if tick % TURNOVER_EVERY == 0:
                coordinator.phases.complete(self.running.pop(0))
                self._start_workflow()

    # -- commands

    def stats(self) -> dict[str, Any]:
        s = self.coordinator.stats()
        return {
            "sent": s.sent,
            "delivered": s.delivered,
            "dropped": s.dropped,
            "dropped_by_kind": dict(s.dropped_by_kind),
            "drop_reasons": dict(s.drop_reasons),
            "queued": s.queued,
            "inflight": s.inflight,
            "queued_bytes": s.queued_bytes,
            "reconnects": s.reconnects,
        }

    async def handle(self, command: dict[str, Any]) -> dict[str, Any]:
        kind = command["cmd"]
        if kind == "start":
            self.load = threading.Thread(target=self._run_load, name="load")
            self.load.start()
            return {"ok": True}
        if kind == "mark":
            self.baseline = self.peak = _rss_bytes()
            return {"rss": self.baseline, "stats": self.stats()}
        if kind == "hold":
            self.stop.set()
            if self.load is not None:
                self.load.join(TIMEOUT)
            self.forwarder.flush()
            return {"stats": self.stats(), "rss": _rss_bytes(), "peak": self.peak}
        if kind == "drain":
            registered = await asyncio.to_thread(self.coordinator.wait_registered, TIMEOUT)
            flushed = await asyncio.to_thread(self.coordinator.flush, TIMEOUT)
            self.sampling.set()
            self.sampler.join(TIMEOUT)
            self.peak = max(self.peak, _rss_bytes())
            return {
                "registered": registered,
                "flushed": flushed,
                "stats": self.stats(),
                "logged": self.logged,
                "facts": sorted(self.facts),
                "baseline": self.baseline,
                "peak": self.peak,
            }
        raise ValueError(f"unknown command {kind!r}")

    def close(self) -> None:
        self.stop.set()
        self.sampling.set()
        self.forwarder.stop()
        self.coordinator.close(5)


async def _serve_service(url: str) -> None:
    # Refused dials and shedding are what this benchmark provokes: not worth a warning here.
    logging.getLogger("when_coordinator").setLevel(logging.ERROR)
    service = await asyncio.to_thread(_Service, url)
    say(ok=True)
    try:
        await serve_commands(service.handle)
    finally:
        await asyncio.to_thread(service.close)


# ---------------------------------------------------------------------- orchestration


def _mb(n: float) -> float:
    return n / (1024 * 1024)


def _sleep_until(deadline: float) -> None:
    while (left := deadline - time.monotonic()) > 0:
        time.sleep(min(left, 1.0))


def _outage() -> dict[str, Any]:
    hub = Child("bench_outage", "hub", "0", timeout=TIMEOUT)
    port = str(hub.hello["port"])
    service: Child | None = None
    try:
        service = Child("bench_outage", "service", hub.hello["url"], timeout=TIMEOUT)
        service.ask(cmd="start")
        time.sleep(WARMUP)
        marked = service.ask(cmd="mark")
        first = hub.ask(cmd="stop")
        down = time.monotonic()
        hub.close()
        _sleep_until(down + OUTAGE)
        held = service.ask(cmd="hold")
        hub = Child("bench_outage", "hub", port, timeout=TIMEOUT)
        outage = time.monotonic() - down
        drained = service.ask(cmd="drain")
        second = hub.ask(cmd="stop")
    finally:
        if service is not None:
            service.close()
        hub.close()
    return {
        "marked": marked,
        "first": first,
        "held": held,
        "drained": drained,
        "second": second,
        "outage": outage,
    }


def _figures(result: dict[str, Any]) -> list[Figure]:
    drained, held = result["drained"], result["held"]
    first, second = result["first"], result["second"]
    stats = drained["stats"]

    growth = drained["peak"] - drained["baseline"]
    limit = OUTBOX_BYTES + ALLOWANCE_MB * 1024 * 1024
    hub_facts = {tuple(f) for f in first["facts"]} | {tuple(f) for f in second["facts"]}
    lost_state = {tuple(f) for f in drained["facts"]} - hub_facts
    state_dropped = sum(
        count
        for kind, count in stats["dropped_by_kind"].items()
        if kind not in ("log", "log_batch", "progress")
    )
    balanced = (
        stats["sent"] == stats["delivered"] + stats["dropped"]
        and stats["queued"] == 0
        and stats["inflight"] == 0
    )
    logged = drained["logged"]
    at_first, at_second = _expand(first["records"]), _expand(second["records"])
    at_hubs = at_first | at_second
    missing = logged - len(at_hubs & set(range(logged)))
    shed = BATCH * stats["dropped_by_kind"].get("log_batch", 0)
    overlap = shed - missing
    newest = not at_second or at_second == set(range(min(at_second), logged))
    logs_ok = 0 <= overlap <= MAX_OVERLAP_BATCHES * BATCH and newest
    ok = growth <= limit and not lost_state and not state_dropped and balanced and logs_ok
    problems = [
        text
        for bad, text in (
            (growth > limit, "RSS"),
            (bool(lost_state) or bool(state_dropped), f"{len(lost_state)} state lost"),
            (not balanced, "sent != delivered + dropped"),
            (not logs_ok, "logs != bounds"),
        )
        if bad
    ]
    target = (
        f"<= {_mb(OUTBOX_BYTES):g} MB bound + {ALLOWANCE_MB:g} MB, 0 state lost, "
        "sent = delivered + dropped, logs = bounds"
    )
    return [
        Figure(
            f"[5] {OUTAGE:g} s outage: RSS growth"
            + (f" ({', '.join(problems)})" if problems else ""),
            _mb(growth),
            _mb(limit),
            "MB",
            growth / limit,
            target,
            ok,
        ),
        Figure.info("    hub down (s)", result["outage"], "s"),
        Figure.info(
            "    outbox bytes held when the hub returned", _mb(held["stats"]["queued_bytes"]), "MB"
        ),
        Figure.info("    RSS at the baseline", _mb(drained["baseline"]), "MB"),
        Figure.info("    workflow-state facts made", len(drained["facts"]), "facts"),
        Figure.info("    workflow-state facts lost", len(lost_state), "facts"),
        Figure.info("    messages sent", stats["sent"], "msg"),
        Figure.info("    messages delivered", stats["delivered"], "msg"),
        Figure.info("    messages dropped (workflow state)", state_dropped, "msg"),
        Figure.info("    messages dropped (all kinds)", stats["dropped"], "msg"),
        Figure.info("    log records logged", logged, "records"),
        Figure.info("    log records at the hubs", len(at_hubs), "records"),
        Figure.info("    log records shed by the bounds", shed, "records"),
        Figure.info("    log records at a hub and counted shed (overlap)", overlap, "records"),
        Figure.info(
            "    log records delivered after the return (newest)", len(at_second), "records"
        ),
    ]


def run() -> list[Figure]:
    return _figures(_outage())


def _main(argv: Sequence[str]) -> None:
    if len(argv) == 2 and argv[0] == "hub":
        asyncio.run(_serve_hub(int(argv[1])))
    elif len(argv) == 2 and argv[0] == "service":
        asyncio.run(_serve_service(argv[1]))
    else:
        from .harness import format_table  # noqa: PLC0415

        print(format_table(run()))


if __name__ == "__main__":
    _main(sys.argv[1:])
