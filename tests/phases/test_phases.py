"""Phase strings and the transition table, checked against PROTOCOL.md section 3 copied by hand.

when-v3 stores the phase strings, so these tests pin the exact values and the exact table rather
than deriving the expectation from the code under test.
"""

from __future__ import annotations

import json

import pytest

from when_coordinator.protocol import (
    ACTIVE_PHASES,
    PAUSABLE_PHASES,
    RESUMABLE_PHASES,
    TERMINAL_PHASES,
    VALID_TRANSITIONS,
    Phase,
    can_transition,
)

PHASE_STRINGS = [
    "pending",
    "pre-flight",
    "planning",
    "execution",
    "pausing",
    "paused",
    "resuming",
    "cancelling",
    "cancelled",
    "completing",
    "completed",
    "failed",
]

TABLE: dict[str, set[str]] = {
    "pending": {"pre-flight", "failed"},
    "pre-flight": {"planning", "failed"},
    "planning": {"execution", "failed"},
    "execution": {"pausing", "cancelling", "completing", "failed"},
    "pausing": {"paused", "cancelling", "failed"},
    "paused": {"resuming", "cancelling", "failed"},
    "resuming": {"execution", "cancelling", "failed"},
    "cancelling": {"cancelled", "failed"},
    "completing": {"completed", "failed"},
    "completed": set(),
    "cancelled": set(),
    "failed": set(),
}
ALL_PAIRS = [(a, b) for a in PHASE_STRINGS for b in PHASE_STRINGS]


def test_phase_strings_are_exactly_the_contract() -> None:
    assert [p.value for p in Phase] == PHASE_STRINGS


@pytest.mark.parametrize("value", PHASE_STRINGS)
def test_phase_is_its_wire_string(value: str) -> None:
    phase = Phase(value)
    assert phase == value
    assert str(phase) == value
    assert f"{phase}" == value
    assert "%s" % phase == value  # noqa: UP031 - logging formats this way
    assert json.dumps(phase) == json.dumps(value)
    assert isinstance(phase, str)
    assert hash(phase) == hash(value)  # usable as a dict key interchangeably with the string


def test_str_of_named_members() -> None:
    assert str(Phase.PRE_FLIGHT) == "pre-flight"
    assert str(Phase.CANCELLED) == "cancelled"
    assert Phase["PRE_FLIGHT"] is Phase.PRE_FLIGHT


@pytest.mark.parametrize("bad", ["Paused", "preflight", "pre_flight", "", "done"])
def test_unknown_phase_strings_are_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="is not a valid Phase"):
        Phase(bad)


def test_transition_table_is_exactly_section_3() -> None:
    assert {str(k): {str(v) for v in vs} for k, vs in VALID_TRANSITIONS.items()} == TABLE
    assert len(VALID_TRANSITIONS) == 12
    for targets in VALID_TRANSITIONS.values():
        assert isinstance(targets, frozenset)  # shared global: nobody may add to it


@pytest.mark.parametrize(("source", "target"), ALL_PAIRS)
def test_can_transition_every_pair(source: str, target: str) -> None:
    expected = target in TABLE[source]
    assert can_transition(source, target) is expected
    assert can_transition(Phase(source), Phase(target)) is expected
    assert Phase(source).can_transition_to(Phase(target)) is expected


@pytest.mark.parametrize(
    ("source", "target"),
    [("pending", "nope"), ("nope", "failed"), ("", ""), ("Execution", "pausing")],
)
def test_can_transition_with_unknown_strings_is_false(source: str, target: str) -> None:
    assert can_transition(source, target) is False


def test_no_phase_transitions_to_itself_or_back_to_pending() -> None:
    for source in PHASE_STRINGS:
        assert not can_transition(source, source)
        assert not can_transition(source, "pending")


def test_every_non_terminal_phase_may_fail() -> None:
    for source in PHASE_STRINGS:
        assert can_transition(source, "failed") is (source not in TERMINAL_PHASES)


def test_helper_sets() -> None:
    assert {str(p) for p in TERMINAL_PHASES} == {"completed", "cancelled", "failed"}
    assert {str(p) for p in ACTIVE_PHASES} == {
        "pre-flight",
        "planning",
        "execution",
        "pausing",
        "resuming",
        "cancelling",
        "completing",
    }
    assert {str(p) for p in PAUSABLE_PHASES} == {"execution"}
    assert {str(p) for p in RESUMABLE_PHASES} == {"paused"}
    # Neither active nor terminal: pending and paused, the phases a workflow can wait in.
    assert set(Phase) - ACTIVE_PHASES - TERMINAL_PHASES == {Phase.PENDING, Phase.PAUSED}


@pytest.mark.parametrize("value", PHASE_STRINGS)
def test_phase_properties_match_the_helper_sets(value: str) -> None:
    phase = Phase(value)
    assert phase.is_terminal is (value in {"completed", "cancelled", "failed"})
    assert phase.is_terminal is (not TABLE[value])
    assert phase.is_active is (phase in ACTIVE_PHASES)
    assert phase.is_pausable is (value == "execution")
    assert phase.is_resumable is (value == "paused")
