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
from collections.abc import Callable

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


def _hub(max_workflows: int) -> HubState:
    """A hub whose other service finished ``RETAINED`` workflows, then the runner's own."""
    state = HubState(max_workflows=max_workflows)
    for conn, service in (("c-other", "svc-other"), ("c-runner", "svc-runner")):
        state.open_connection(conn, now=1.0, service_name=service, service_id=service)
        state.register(conn, RegisterPayload(service_name=service, service_id=service), now=1.0)
    for walk in _walks("other", RETAINED - RUNS):
        for message in walk:
            state.receive("c-other", message, now=2.0)
    for walk in _walks("warm", RUNS):
        for message in walk:
            state.receive("c-runner", message, now=3.0)
    state.take_changes()
    return state


def _flooded(max_workflows: int) -> HubState:
    """A hub holding another service's running workflows, and the flooder's first ones."""
    state = HubState(max_workflows=max_workflows)
    for conn, service in (("c-other", "svc-other"), ("c-runner", "svc-runner")):
        state.open_connection(conn, now=1.0, service_name=service, service_id=service)
        state.register(conn, RegisterPayload(service_name=service, service_id=service), now=1.0)
    for walk in _walks("other", RETAINED - RUNS):
        state.receive("c-other", walk[0], now=2.0)
    for walk in _walks("warm", RUNS):
        state.receive("c-runner", walk[0], now=3.0)
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


def _medians(
    make: Callable[[int], HubState], walks: Callable[[int], list[list[Message]]]
) -> tuple[float, float]:
    """Median seconds per workflow at the bound and with room, in alternating rounds (the
    machine's speed moves within a run)."""
    full: list[float] = []
    room: list[float] = []
    for round_ in range(ROUNDS):
        work = walks(round_)
        full.append(_seconds_per_run(make(RETAINED), work))
        room.append(_seconds_per_run(make(RETAINED + RUNS), work))
    return statistics.median(full), statistics.median(room)


def run() -> list[Figure]:
    finished = _medians(_hub, lambda round_: _walks(f"run{round_}", RUNS))
    flood = _medians(_flooded, lambda round_: [w[:1] for w in _walks(f"flood{round_}", RUNS)])
    return [
        Figure.versus(
            f"[13] workflow into a full hub ({RETAINED:,} finished), each evicting one",
            finished[0] * 1e6,
            finished[1] * 1e6,
            "us/workflow",
            max_ratio=MAX_RATIO,
            what="a hub with room",
        ),
        Figure.versus(
            f"[13] new id into a hub full of others' running ({RETAINED:,}), a flood",
            flood[0] * 1e6,
            flood[1] * 1e6,
            "us/workflow",
            max_ratio=MAX_RATIO,
            what="a hub with room",
        ),
    ]
