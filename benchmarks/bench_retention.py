"""The hub at its workflow bound: a new workflow into a full hub, beside one with room.

A full hub forgets a workflow for each new one: the newcomer's service's oldest finished
one first, else its oldest running one once nobody's are finished (``hub/retention.py``).
Two cases, each beside the same work in a hub with room for all of it:

- the hub holds ``max_workflows`` finished workflows, the oldest of them another service's,
  and one service runs short workflows (created, walked through its phases, completed),
  each evicting one of its own finished ones;
- a flood: another service's running workflows fill the hub but for the flooder's, and the
  flooder announces new ids (``pending`` only), each evicting its own oldest.

``HubState`` alone, no sockets: what it costs the hub's loop per workflow. Target: at most
1.5x in both, whatever the number retained.
"""

from __future__ import annotations

import statistics
import time

from when_coordinator.hub.state import HubState
from when_coordinator.protocol import Message, MessageType, RegisterPayload

from .harness import Figure

RETAINED = 10_000
RUNS = 2_000
ROUNDS = 5
MAX_RATIO = 1.5
WALK = ("pending", "pre-flight", "planning", "execution", "completing", "completed")


def _phase(workflow_id: str, source: str, target: str) -> Message:
    payload = {"workflow_id": workflow_id, "from": source, "to": target}
    return Message(type=MessageType.PHASE_CHANGED, workflow_id=workflow_id, payload=payload)


def _walks(prefix: str, count: int) -> list[list[Message]]:
    return [
        [_phase(f"{prefix}-{i}", s, t) for s, t in zip(("", *WALK), WALK, strict=False)]
        for i in range(count)
    ]


def _filled(max_workflows: int, steps: int) -> HubState:
    """A hub holding another service's ``RETAINED - RUNS`` workflows, then the runner's first
    ``RUNS``, each walked ``steps`` phases: to ``completed`` (finished), or 1 (running)."""
    state = HubState(max_workflows=max_workflows)
    for conn, service in (("c-other", "svc-other"), ("c-runner", "svc-runner")):
        state.open_connection(conn, now=1.0, service_name=service, service_id=service)
        state.register(conn, RegisterPayload(service_name=service, service_id=service), now=1.0)
    for conn, prefix, count in (("c-other", "other", RETAINED - RUNS), ("c-runner", "warm", RUNS)):
        for walk in _walks(prefix, count):
            for message in walk[:steps]:
                state.receive(conn, message, now=2.0)
    state.take_changes()
    return state


def _seconds_per_run(state: HubState, walks: list[list[Message]]) -> float:
    receive = state.receive
    started = time.perf_counter()
    for walk in walks:
        for message in walk:
            receive("c-runner", message, now=4.0)
    elapsed = time.perf_counter() - started
    state.take_changes()
    return elapsed / len(walks)


def _figure(steps: int, name: str) -> Figure:
    """Workflows walked ``steps`` phases into a full hub and into one with room, in
    alternating rounds (the machine's speed moves within a run); the medians."""
    full: list[float] = []
    room: list[float] = []
    for round_ in range(ROUNDS):
        work = [walk[:steps] for walk in _walks(f"run{round_}", RUNS)]
        full.append(_seconds_per_run(_filled(RETAINED, steps), work))
        room.append(_seconds_per_run(_filled(RETAINED + RUNS, steps), work))
    return Figure.versus(
        f"[13] {name}",
        statistics.median(full) * 1e6,
        statistics.median(room) * 1e6,
        "us/workflow",
        max_ratio=MAX_RATIO,
        what="a hub with room",
    )


def run() -> list[Figure]:
    return [
        _figure(len(WALK), f"workflow into a full hub ({RETAINED:,} finished), each evicting one"),
        _figure(1, f"new id into a hub full of others' running ({RETAINED:,}), a flood"),
    ]
