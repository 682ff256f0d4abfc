"""Application data that JSON cannot carry as it is still reaches the hub, as text."""

from __future__ import annotations

import logging
import math
from datetime import datetime, timezone

import pytest

from tests.support.scripted_server import ScriptedServer, fast_config
from when_coordinator import Coordinator, LogEntry, LogLevel


class Opaque:
    def __str__(self) -> str:
        return "opaque!"


WHEN = datetime(2026, 11, 27, 12, 0, tzinfo=timezone.utc)


def test_unencodable_log_fields_and_checkpoint_state_arrive_as_text() -> None:
    with ScriptedServer() as server:
        coordinator = Coordinator(fast_config(server.url))
        coordinator.connect()
        assert coordinator.wait_registered(5)
        coordinator.log_with_context(
            LogLevel.INFO,
            "odd fields",
            workflow_id="wf-1",
            fields={"when": WHEN, "ratio": math.nan, "obj": Opaque(), "n": 1, "ok": "yes"},
        )
        coordinator.send_log_batch(
            [
                LogEntry(message="plain", fields={"n": 2}),
                LogEntry(message="odd", fields={"pair": {1, 2}, "obj": Opaque()}),
            ]
        )
        coordinator.send_checkpoint("wf-1", "cp-1", "saved", state={"at": WHEN, "rows": 3})
        assert coordinator.flush(5)
        server.barrier()
        (log,) = server.of_type("log")
        assert log.payload["fields"] == {
            "when": str(WHEN),  # the entry had to be made JSON-safe: its values as text
            "ratio": "nan",
            "obj": "opaque!",
            "n": 1,
            "ok": "yes",
        }
        (batch,) = server.of_type("log_batch")
        plain, odd = batch.payload["logs"]
        assert plain["fields"] == {"n": 2}
        assert odd["message"] == "odd"
        assert odd["fields"] == {"pair": [1, 2], "obj": "opaque!"}
        (checkpoint,) = server.of_type("checkpoint")
        # msgspec writes a datetime as RFC 3339 itself: this state needed no help.
        assert checkpoint.payload["state"] == {"at": "2026-11-27T12:00:00Z", "rows": 3}
        stats = coordinator.stats()
        assert stats.dropped == 0
        assert stats.delivered == stats.sent
        coordinator.close()


def test_a_dropped_connection_is_a_warning_at_most_never_an_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    with ScriptedServer() as server:
        coordinator = Coordinator(fast_config(server.url))
        coordinator.connect()
        assert coordinator.wait_registered(5)
        for _ in range(200):
            coordinator.send_progress("wf-1", "act", 50)
        server.close_connection(1011)
        server.wait_count("register", 2)
        server.abort_connection()
        server.wait_count("register", 3)
        assert coordinator.flush(5)
        coordinator.close()
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [], [r.getMessage() for r in errors]
