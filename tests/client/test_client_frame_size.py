"""Frames over ``max_frame_bytes`` never reach the hub, which would close the connection (1009)
on each and stall everything queued behind it; log batches are split below the limit."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator

import pytest
from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor

from tests.support.scripted_server import ScriptedServer, fast_config
from when_coordinator import Coordinator, LogEntry, Phase
from when_coordinator.hub import Hub, ThreadedHub
from when_coordinator.otel import CoordinationLogExporter

LIMIT = 64 * 1024
WAIT = 10.0


@pytest.fixture
def hub() -> Iterator[ThreadedHub]:
    with ThreadedHub(Hub(max_frame_bytes=LIMIT)) as running:
        yield running


@pytest.fixture
def coordinator(hub: ThreadedHub) -> Iterator[Coordinator]:
    client = Coordinator(fast_config(hub.url, max_frame_bytes=LIMIT))
    client.connect()
    assert client.wait_registered(WAIT)
    yield client
    client.close()


def _hub_messages(hub: ThreadedHub, count: int) -> list[str]:
    found = hub.wait_for(lambda h: h.logs if len(h.logs) >= count else None, WAIT)
    assert found is not None, f"the hub has {len(hub.logs)} of {count} log records"
    return [record.entry.message for record in found]


def test_an_oversized_message_is_dropped_and_counted_and_the_rest_still_flows(
    hub: ThreadedHub, coordinator: Coordinator, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "when_coordinator")
    coordinator.log_info("before")
    coordinator.send_log(LogEntry(message="x" * (2 * LIMIT)))
    coordinator.send_checkpoint("wf-1", "cp-1", state={"blob": "y" * (2 * LIMIT)})
    coordinator.log_info("after")
    assert coordinator.flush(WAIT)
    assert _hub_messages(hub, 2) == ["before", "after"]
    stats = coordinator.stats()
    assert stats.dropped_by_kind == {"log": 1, "checkpoint": 1}
    assert stats.drop_reasons == {"larger than max_frame_bytes": 2}
    assert stats.sent == stats.delivered + stats.dropped
    assert stats.reconnects == 0  # the hub never saw the frames it would have closed for
    assert any("over the frame limit" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("text", ["a" * 5_000, "\u00e9" * 1_500], ids=["ascii", "escaped"])
def test_a_log_batch_near_the_limit_is_split_into_frames_that_fit(
    hub: ThreadedHub, coordinator: Coordinator, text: str
) -> None:
    """40 entries of about 5 KB on the wire (1,500 'é' escape to 9 KB): 200-360 KB in all, so
    one frame would be several times the limit."""
    entries = [LogEntry(message=f"{i:03d} {text}") for i in range(40)]
    assert coordinator.send_log_batch(entries)
    assert coordinator.flush(WAIT)
    messages = _hub_messages(hub, 40)
    assert [m[:3] for m in messages] == [f"{i:03d}" for i in range(40)]
    stats = coordinator.stats()
    assert stats.dropped == 0
    assert stats.sent > 4  # register aside, the batch went as several log_batch messages
    assert stats.reconnects == 0


def test_an_oversized_state_replayed_after_a_reconnect_is_not_sent_either() -> None:
    """After registering again the client re-sends each workflow's phase ahead of the queue;
    a transition whose reason is over the limit must not be that frame (each reconnect would
    meet a 1009 close again)."""
    with ScriptedServer() as server:
        client = Coordinator(fast_config(server.url, max_frame_bytes=LIMIT))
        client.connect()
        assert client.wait_registered(WAIT)
        client.phases.register_workflow("wf-big")
        client.phases.transition_to("wf-big", Phase.PRE_FLIGHT, "x" * (2 * LIMIT))
        client.log_info("before the reconnect")
        assert client.flush(WAIT)
        server.close_connection(1011)
        server.wait_count("register", 2)
        client.log_info("after the reconnect")
        assert client.flush(WAIT)
        server.barrier()
        client.close()
    frames = server.snapshot()
    assert max(len(frame.text) for frame in frames) <= LIMIT
    logs = [f.payload["message"] for f in frames if f.type == "log"]
    assert logs == ["before the reconnect", "after the reconnect"]
    assert server.count("register") == 2
    stats = client.stats()
    assert stats.drop_reasons == {"larger than max_frame_bytes": 1}
    assert stats.reconnects == 1


def test_exporter_batches_split_below_the_limit_all_arrive(hub: ThreadedHub) -> None:
    """The log exporter's batches (entries already in wire form) split like any other."""
    client = Coordinator(fast_config(hub.url, max_frame_bytes=LIMIT))
    client.connect()
    assert client.wait_registered(WAIT)
    provider = LoggerProvider()
    provider.add_log_record_processor(
        BatchLogRecordProcessor(CoordinationLogExporter(client), max_export_batch_size=100)
    )
    with warnings.catch_warnings():  # the SDK handler is deprecated in favour of contrib's
        warnings.simplefilter("ignore", DeprecationWarning)
        handler = LoggingHandler(logger_provider=provider)
    logger = logging.getLogger("tests.frame_size.exporter")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        for i in range(40):
            logger.warning("%03d %s", i, "t" * 5_000)
        assert provider.force_flush(int(WAIT * 1000))
        assert client.flush(WAIT)
        messages = _hub_messages(hub, 40)
    finally:
        logger.removeHandler(handler)
        provider.shutdown()
        client.close()
    assert [m[:3] for m in messages] == [f"{i:03d}" for i in range(40)]
    stats = client.stats()
    assert stats.dropped == 0
    assert stats.reconnects == 0


def test_a_hub_with_a_lower_limit_costs_one_reconnect_not_a_stall(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The client's max_frame_bytes above the hub's: the hub closes with 1009 on the frame it
    refuses; the client then sends only frames shorter than that one, so the refused frame is
    dropped (counted) instead of being sent again after every reconnect."""
    caplog.set_level(logging.WARNING, "when_coordinator")
    with ThreadedHub(Hub(max_frame_bytes=LIMIT)) as hub:
        client = Coordinator(fast_config(hub.url, max_frame_bytes=16 * LIMIT))
        client.connect()
        assert client.wait_registered(WAIT)
        client.log_info("before")
        assert client.flush(WAIT)
        client.send_log(LogEntry(message="x" * (2 * LIMIT)))  # under ours, over the hub's
        client.log_info("after")
        assert client.flush(WAIT)
        messages = _hub_messages(hub, 2)
        stats = client.stats()
        client.log_info("later, on the same connection")
        assert client.flush(WAIT)
        later = _hub_messages(hub, 3)
        final = client.stats()
        client.close()
    assert messages == ["before", "after"]
    assert later[-1] == "later, on the same connection"
    assert stats.drop_reasons == {"larger than max_frame_bytes": 1}
    assert stats.reconnects == 1
    assert final.reconnects == 1
    assert final.sent == final.delivered + final.dropped
    assert any("(1009)" in r.getMessage() for r in caplog.records)


def test_an_oversized_message_is_refused_before_it_displaces_queued_state(
    hub: ThreadedHub, caplog: pytest.LogCaptureFixture
) -> None:
    """The outbox full of workflow state (shed last): a checkpoint and a log over the frame
    limit, but within the outbox's byte bound, are refused at once and evict nothing."""
    caplog.set_level(logging.WARNING, "when_coordinator")
    bound = 4 * LIMIT
    client = Coordinator(fast_config(hub.url, max_frame_bytes=LIMIT, outbox_max_bytes=bound))
    count = 0
    while client.stats().queued_bytes + 3_000 < bound:  # not connected yet: all stays queued
        assert client.send_checkpoint(f"wf-{count}", "cp", state={"blob": "s" * 2_000})
        count += 1
    assert not client.send_checkpoint("wf-big", "cp-big", state={"blob": "y" * (2 * LIMIT)})
    assert not client.send_log(LogEntry(message="x" * (2 * LIMIT)))
    stats = client.stats()
    assert stats.queued == count  # nothing displaced
    assert stats.drop_reasons == {"larger than max_frame_bytes": 2}
    assert stats.dropped_by_kind == {"checkpoint": 1, "log": 1}

    client.connect()
    assert client.flush(WAIT)
    hub.wait_for(
        lambda h: len([m for m in h.received if m.message.type == "checkpoint"]) == count, WAIT
    )
    stats = client.stats()
    assert stats.delivered == count
    assert stats.sent == stats.delivered + stats.dropped
    warnings_ = [r for r in caplog.records if "over the frame limit" in r.getMessage()]
    assert len(warnings_) == 1  # rate-limited, like every other drop warning
    client.close()


def test_a_message_whose_estimate_is_over_the_limit_but_whose_frame_fits_is_sent(
    hub: ThreadedHub, coordinator: Coordinator
) -> None:
    """The size estimate counts 64 bytes for each small value: many small fields make it
    far higher than the frame, which is judged by its encoded size and delivered."""
    fields = {f"k{i}": i for i in range(1_500)}  # estimated about 100 KB, encoded about 15 KB
    assert coordinator.log_with_context("info", "many small fields", fields=fields)
    assert coordinator.flush(WAIT)
    assert _hub_messages(hub, 1) == ["many small fields"]
    assert hub.logs[0].entry.fields == fields
    assert coordinator.stats().dropped == 0
