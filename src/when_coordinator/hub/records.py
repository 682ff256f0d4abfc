"""The facts the hub keeps about a workflow, as immutable msgspec Structs.

A ``PhaseChange``, ``CheckpointRecord``, ``ErrorRecord``, ``StoredLog`` or ``Anomaly`` is made
once, when the hub applies a message, and never changed: the same object is what the state
holds, what the operator stream sends and what the stores write. Each class is its own schema:
``as_dict()`` is the JSON object the operator API serves and the stores persist (the shape
databases written by earlier versions hold, so they still load), ``from_dict()`` validates one
read back, in msgspec's C code.

Keys the stored shape always writes have a ``default_factory`` (msgspec never omits those,
see ``protocol/payloads.py``); only a checkpoint's absent ``state`` is left out.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

import msgspec

from ..protocol import LogEntry, Phase

__all__ = [
    "Anomaly",
    "CheckpointRecord",
    "ErrorRecord",
    "PhaseChange",
    "Record",
    "StoredLog",
]

_ALWAYS_STR: Any = msgspec.field(default_factory=str)
_ALWAYS_ZERO: Any = msgspec.field(default_factory=float)
_ALWAYS_FALSE: Any = msgspec.field(default_factory=bool)

_R = TypeVar("_R", bound="Record")


class Record(msgspec.Struct, frozen=True, omit_defaults=True):
    """Base of the hub's records: immutable, written and read by msgspec."""

    def as_dict(self) -> dict[str, Any]:
        """The JSON object served and stored."""
        result: dict[str, Any] = msgspec.to_builtins(self)
        return result

    @classmethod
    def from_dict(cls: type[_R], data: Mapping[str, Any]) -> _R:
        """Validate a stored object; raises ``msgspec.ValidationError`` (a ``ValueError``)."""
        return msgspec.convert(data, cls)


class PhaseChange(Record, frozen=True):
    """One ``phase_changed`` as applied: ``from_phase`` as the service reported it (None for
    a workflow's first phase, written ``""`` as on the wire).

    ``at`` is the hub's receive time (epoch seconds); ``timestamp`` the message's own.
    """

    from_phase: Phase | None = msgspec.field(name="from")
    to_phase: Phase = msgspec.field(name="to")
    reason: str = _ALWAYS_STR
    checkpoint_id: str = _ALWAYS_STR
    at: float = _ALWAYS_ZERO
    timestamp: str = _ALWAYS_STR

    def as_dict(self) -> dict[str, Any]:
        result = super().as_dict()
        if result["from"] is None:
            result["from"] = ""
        return result

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PhaseChange:
        if data.get("from") == "":
            data = {**data, "from": None}
        return msgspec.convert(data, cls)


class CheckpointRecord(Record, frozen=True):
    """A checkpoint a workflow reported, by a ``checkpoint`` message or on a ``phase_changed``."""

    checkpoint_id: str
    reason: str = _ALWAYS_STR
    at: float = _ALWAYS_ZERO
    timestamp: str = _ALWAYS_STR
    state: Mapping[str, Any] | None = None


class ErrorRecord(Record, frozen=True):
    """An ``error`` message a workflow reported."""

    error: str = _ALWAYS_STR
    recoverable: bool = _ALWAYS_FALSE
    action_id: str = _ALWAYS_STR
    at: float = _ALWAYS_ZERO
    timestamp: str = _ALWAYS_STR


class Anomaly(Record, frozen=True):
    """Something a service did that the protocol does not expect; recorded, never fatal."""

    text: str
    service_id: str = _ALWAYS_STR
    workflow_id: str = _ALWAYS_STR
    at: float = _ALWAYS_ZERO


class StoredLog(Record, frozen=True):
    """A log entry as the hub received it: the protocol's ``LogEntry``, the service that sent
    it and the hub's receive time. (Not ``logging.LogRecord``, nor the OpenTelemetry one.)

    Written flat, as one object: the entry's keys beside ``service_id`` and ``at``.
    """

    entry: LogEntry
    service_id: str = _ALWAYS_STR
    at: float = _ALWAYS_ZERO

    @property
    def workflow_id(self) -> str:
        return self.entry.workflow_id

    @property
    def level(self) -> str:
        return str(self.entry.level)

    @property
    def message(self) -> str:
        return self.entry.message

    def as_dict(self) -> dict[str, Any]:
        return {"service_id": self.service_id, "at": self.at, **self.entry.to_dict()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StoredLog:
        """Raises ``ProtocolError`` (a ``ValueError``) on a bad entry."""
        entry = LogEntry.from_dict({k: v for k, v in data.items() if k not in _OWN})
        return cls(entry, str(data.get("service_id", "")), float(data.get("at", 0.0)))


_OWN = frozenset({"service_id", "at"})
