"""The client's sans-I/O core: what to send, what was delivered, what a frame from the hub means.

``ClientCore`` holds the outbox, the replies due to the hub, the messages in flight and their
acknowledgement, the replay of live workflows after a registration, and the frame limit the
hub taught it. It takes events (a connection opened or lost, a frame received, an
acknowledgement, a send request with the time given as ``now_ns``) and returns frames and
events. There are no sockets, tasks, threads or clocks in here, so every rule is testable by
calling methods, in the spirit of the websockets library's own ``Protocol``; ``session.py``
drives it over a real connection and ``coordinator.py`` is the public face.

Delivery: a message counts as delivered when the hub acknowledged it, that is when a ping sent
after it got its pong (``ack_due`` / ``acknowledged``). When a connection is lost, everything
not yet acknowledged goes back to the front of the outbox (``connection_lost``) and is sent
again, with the same message ids, on the next connection.
"""

from __future__ import annotations

import logging
from collections import Counter, deque
from dataclasses import dataclass, field, replace

from ..phase_manager import PhaseError, PhaseManager, PhaseState
from ..protocol import (
    CancelPayload,
    EmptyPayload,
    Message,
    MessageType,
    PausePayload,
    PayloadError,
    ProtocolError,
    RegisteredPayload,
    RegisterPayload,
    ResumePayload,
    StatusResponsePayload,
    decode,
    encode,
)
from ._util import RateLimitedLog
from .config import Config
from .encoding import encode_entry, phase_changed_message
from .outbox import Entry, Outbox

__all__ = [
    "ACK_EVERY",
    "BATCH_BYTES",
    "BATCH_MESSAGES",
    "CONTROL_LIMIT",
    "INFLIGHT_LIMIT",
    "ClientCore",
    "CommandEvent",
]

_log = logging.getLogger("when_coordinator.client")

ACK_EVERY = 256
"""Ask for an acknowledgement after this many unacknowledged messages, even under load."""
INFLIGHT_LIMIT = ACK_EVERY * 4
"""Stop sending past this many unacknowledged messages until the hub catches up."""
BATCH_MESSAGES = 64
BATCH_BYTES = 256 * 1024
"""At most this much is handed to the connection per ``frames_to_send`` (one write). One log
export (512 records, six ``log_batch`` frames of about 13 KiB) fits in one: at 64 KiB it took
two writes, each a GIL hand-over between the client's thread and the application's."""
CONTROL_LIMIT = 1024
"""Replies (pongs, status responses) waiting to be written before the reader stops reading."""


@dataclass(frozen=True)
class CommandEvent:
    """A pause, resume or cancel from the hub and what became of it."""

    type: MessageType
    workflow_id: str
    accepted: bool
    reason: str = ""
    from_checkpoint: str = ""
    force: bool = False
    error: str = ""
    state: PhaseState | None = None
    message: Message | None = field(default=None, repr=False)


class ClientCore:
    """One client's protocol state across its connections; see the module docstring.

    Thread safety: ``enqueue`` (and the reads behind ``stats()``) may run on any thread, as the
    outbox is thread-safe; every other method belongs to the one thread driving connections.
    """

    def __init__(
        self,
        config: Config,
        phases: PhaseManager,
        *,
        warn: RateLimitedLog | None = None,
    ) -> None:
        self.config = config
        self.phases = phases
        self.outbox = Outbox(config.outbox_max_messages, config.outbox_max_bytes)
        self.replies: deque[Message] = deque()
        """Answers due to the hub (pongs, status responses, the replay): sent before the
        outbox, in the order they became due."""
        self.frame_limit = config.max_frame_bytes
        """The largest frame sent: ``max_frame_bytes``, lowered if the hub closes for less."""
        self.connection = 0
        """How many connections were opened: the number of the current (or last) one."""
        self.replayed_connection = 0
        """The connection whose live workflows were replayed (on its first ``registered``)."""
        self.inherited: set[str] = set()
        """After a fork, the parent's workflows: never the child's to report or replay."""
        self.service_id = config.service_id
        self.hub_protocol_version = ""
        self.received = 0
        self.inbound_dropped: Counter[str] = Counter()
        self._ack_pending = False
        self._open = False
        self._warn = warn if warn is not None else RateLimitedLog(_log)

    # ------------------------------------------------------------------ send requests

    def enqueue(self, entry: Entry) -> bool:
        """Queue one entry (any thread); False when it was refused or shed at once."""
        if self.inherited and entry.workflow_id in self.inherited:
            # Reported from here, it would move the workflow to this process at the hub.
            self.outbox.reject(entry.type, "not sending: the parent process's workflow")
            return False
        outbox = self.outbox
        if entry.frame is not None:  # already encoded (``Coordinator.send_frame``)
            if self.oversized(entry.frame, entry.type):
                outbox.reject(entry.type, "larger than max_frame_bytes")
                return False
        elif entry.size > self.frame_limit and not self._fits_a_frame(entry):
            return False  # refused before it could displace anything queued
        before = outbox.dropped_total
        accepted = outbox.put(entry)
        if outbox.dropped_total != before:
            self._warn.log(
                logging.WARNING,
                "outbox full",
                "the outbox is full: shedding messages (logs first, workflow state last); "
                "%d dropped so far, see stats()",
                outbox.dropped_total,
            )
        return accepted

    def _fits_a_frame(self, entry: Entry) -> bool:
        """Admission for a message whose size estimate is over the frame limit.

        It would be dropped when sent (``oversized``), but queued first it would have made
        the outbox shed workflow state for room it never uses. The estimate is cheap, not
        exact (it may be high for many small fields), so such a message is encoded here, once,
        and judged by its real size: refused and counted, or queued with its frame ready.
        """
        try:
            frame = encode_entry(entry)
        except Exception as exc:
            self.outbox.reject(entry.type, "cannot encode")
            self._warn.log(logging.WARNING, "encode", "dropped a %s: %s", entry.type, exc)
            return False
        if self.oversized(frame, entry.type):
            self.outbox.reject(entry.type, "larger than max_frame_bytes")
            return False
        entry.frame, entry.body, entry.size = frame, None, len(frame)
        return True

    def oversized(self, frame: str, message_type: MessageType | str) -> bool:
        """Whether a frame is over the frame limit (then it is not sent, with a warning).

        The hub closes a connection (1009) on a frame over its limit; resent after the
        reconnect, such a frame would stall everything behind it for good. The text is ASCII
        (the encoder escapes the rest), so its length is its size in bytes.
        """
        if len(frame) <= self.frame_limit:
            return False
        self._warn.log(
            logging.WARNING,
            "frame size",
            "dropped a %s of %d bytes: over the frame limit (%d)",
            message_type,
            len(frame),
            self.frame_limit,
        )
        return True

    @property
    def pending(self) -> bool:
        """Whether anything is still to be delivered: queued, in flight, or a reply."""
        return bool(self.outbox.pending or self.replies)

    # ------------------------------------------------------------------ connection events

    def connection_opened(self) -> str:
        """A new connection is open: the ``register`` frame to send first."""
        self.connection += 1
        self._open = True
        self._ack_pending = False
        return encode(Message.create(self.register_payload()))

    def register_payload(self) -> RegisterPayload:
        config = self.config
        return RegisterPayload(
            service_name=config.service_name,
            service_id=self.service_id or config.service_id,
            instance_id=config.instance_id,
            capabilities=config.capabilities or None,
            version=config.version,
            protocol_version=config.protocol_version,
            schema_version=config.schema_version,
        )

    def connection_lost(self, *, refused_frame: bool = False) -> int:
        """The connection is gone: forget replies, requeue what was not acknowledged.

        ``refused_frame``: the hub closed it with 1009 (a frame over its size limit) on its own
        initiative. From then on only frames shorter than the longest one it may have refused
        are sent: the hub's limit may be below ``max_frame_bytes``, and without this the
        refused frame would be sent again after every reconnect, with nothing behind it ever
        arriving. Each such close drops at least the longest frame then in flight, so a run of
        them ends. Returns how many messages were requeued.
        """
        self.replies.clear()
        self._open = False
        self._ack_pending = False
        if refused_frame:
            longest = self.outbox.largest_inflight_frame()
            if 0 < longest <= self.frame_limit:
                self.frame_limit = longest - 1
                _log.warning(
                    "the hub closed the connection for a frame over its size limit (1009): "
                    "frames over %d bytes are dropped from now on; set max_frame_bytes to "
                    "the hub's limit",
                    self.frame_limit,
                )
        return self.outbox.requeue()

    # ------------------------------------------------------------------ writing

    def frames_to_send(self) -> list[str]:
        """The next frames to write: replies first, then a batch from the outbox.

        The in-flight limit is flow control while the hub acknowledges what it has.
        """
        frames = [
            reply
            for message in self.take_replies()
            if not self.oversized(reply := encode(message), message.type)
        ]
        outbox = self.outbox
        size = 0
        # In-flight entries cannot be shed: they may hold at most half of each outbox bound,
        # so that the other half stays queued, where workflow state displaces progress and
        # logs (with all of it in flight behind a slow hub, state itself was dropped).
        limit = min(INFLIGHT_LIMIT, max(1, outbox.max_messages // 2))
        byte_limit = max(1, outbox.max_bytes // 2)
        while (
            len(frames) < BATCH_MESSAGES
            and size < BATCH_BYTES
            and outbox.inflight < limit
            and outbox.inflight_bytes < byte_limit
        ):
            entry = outbox.take()
            if entry is None:
                break
            frame = entry.frame
            if frame is None:
                try:
                    frame = encode_entry(entry)
                except Exception as exc:
                    outbox.discard(entry, "cannot encode")
                    self._warn.log(logging.WARNING, "encode", "dropped a %s: %s", entry.type, exc)
                    continue
                # A resend uses the frame: let the application's objects go now rather than
                # when the hub acknowledges (fewer objects for the garbage collector to scan).
                entry.frame, entry.body = frame, None
            if self.oversized(frame, entry.type):  # a resend too: the limit may be lower
                outbox.discard(entry, "larger than max_frame_bytes")
                continue
            frames.append(frame)
            size += len(frame)
        return frames

    def take_replies(self) -> list[Message]:
        replies = self.replies
        if not replies:
            return []
        messages = list(replies)
        replies.clear()
        return messages

    def ack_due(self, *, idle: bool) -> int | None:
        """Whether to ask the hub for an acknowledgement now: the number of messages in flight
        it would cover, or None. Asked when the writer has nothing more to send (``idle``) and
        anything is in flight, or under load every ``ACK_EVERY`` messages; one at a time."""
        if self._ack_pending:
            return None
        inflight = self.outbox.inflight
        if not inflight or (not idle and inflight < ACK_EVERY):
            return None
        self._ack_pending = True
        return inflight

    def acknowledged(self, connection: int, count: int | None) -> None:
        """The acknowledgement asked for on ``connection`` arrived (``count`` messages are
        delivered) or failed (None). One for an earlier connection confirms nothing: what
        was in flight then was requeued when it was lost."""
        if connection != self.connection or not self._open:
            return
        self._ack_pending = False
        if count is not None:
            self.outbox.confirm(count)

    # ------------------------------------------------------------------ reading

    def receive(self, frame: str | bytes) -> Message | None:
        """Check and decode one frame from the hub; None (counted) when it is refused."""
        self.received += 1
        if isinstance(frame, bytes):
            self.drop_inbound("binary frame", "a binary frame")
            return None
        limit = self.config.max_frame_bytes
        if len(frame) > limit or (len(frame) * 4 > limit and len(frame.encode("utf-8")) > limit):
            self.drop_inbound("oversized frame", f"a frame of {len(frame)} characters")
            return None
        try:
            return decode(frame)
        except PayloadError as exc:
            self.drop_inbound("invalid payload", str(exc))
        except ProtocolError as exc:
            self.drop_inbound("invalid frame", str(exc))
        return None

    def drop_inbound(self, reason: str, detail: str) -> None:
        self.inbound_dropped[reason] += 1
        self._warn.log(logging.WARNING, reason, "dropped %s from the hub: %s", reason, detail)

    def handle_registered(self, message: Message, now_ns: int) -> RegisteredPayload:
        payload = message.typed_payload()
        assert isinstance(payload, RegisteredPayload)
        if payload.service_id:
            self.service_id = payload.service_id
        self.hub_protocol_version = payload.hub_protocol_version
        # Re-assert every live workflow to a hub that may have lost it, except transitions
        # still on their way (they will arrive anyway, and must not arrive twice). Once per
        # connection: a hub repeating ``registered`` learns nothing new from a second replay,
        # and one that repeats it in a loop would otherwise get every workflow each time.
        if self.replayed_connection != self.connection:
            self.replayed_connection = self.connection
            inherited = self.inherited
            for state in self.phases.get_active_workflows():
                if state.workflow_id in inherited:
                    continue  # the parent's: it reports them on its own connection
                if not self.outbox.phase_pending(state.workflow_id, state.sequence):
                    self.replies.append(phase_changed_message(state, now_ns))
        return payload

    def handle_ping(self, message: Message) -> None:
        # Ahead of the outbox, behind replies already due (FIFO among replies).
        self.replies.append(message.reply(EmptyPayload(), type=MessageType.PONG))

    def handle_status(self, message: Message) -> None:
        workflow_id = message.target_workflow_id()
        try:
            state = self.phases.get_state(workflow_id)
        except PhaseError:
            self._warn.log(
                logging.INFO,
                "unknown status",
                "status asked for unknown workflow %r: not answered",
                workflow_id,
            )
            return
        payload = StatusResponsePayload(
            workflow_id=workflow_id,
            phase=state.phase,
            progress=state.progress,
            current_action=state.current_action,
            message=state.reason,
        )
        self.replies.append(message.reply(payload))

    def handle_command(self, message: Message) -> CommandEvent:
        """Apply a pause, resume or cancel to the phase manager; what became of it."""
        payload = message.typed_payload()
        workflow_id = message.target_workflow_id()
        phases = self.phases
        event = CommandEvent(MessageType(message.type), workflow_id, False, message=message)
        try:
            if isinstance(payload, PausePayload):
                event = replace(event, reason=payload.reason)
                state = phases.pause(workflow_id, payload.reason)
            elif isinstance(payload, ResumePayload):
                event = replace(event, from_checkpoint=payload.from_checkpoint)
                state = phases.resume(workflow_id, payload.from_checkpoint)
            else:
                assert isinstance(payload, CancelPayload)
                event = replace(event, reason=payload.reason, force=payload.force)
                state = phases.cancel(workflow_id, payload.reason)
        except PhaseError as exc:
            # The hub decides how many of these arrive: one line per interval, not per frame.
            self._warn.log(
                logging.INFO, "refused command", "refused %s from the hub: %s", message.type, exc
            )
            return replace(event, error=str(exc))
        return replace(event, accepted=True, state=state)

    # ------------------------------------------------------------------ process events

    def forked(self) -> None:
        """In a forked child: a fresh outbox and no replies; the workflows the child inherited
        stay the parent's (a replay of them on the child's connection would move them to the
        child at the hub, and after the child exits they could no longer be steered)."""
        self.reset_outbox()
        self.replies.clear()
        self._open = False
        self._ack_pending = False
        self.service_id = self.config.service_id
        self.inherited = set(self.phases.get_all_workflows())

    def reset_outbox(self) -> None:
        """A fresh, empty outbox with fresh counters."""
        self.outbox = Outbox(self.config.outbox_max_messages, self.config.outbox_max_bytes)

    def workflow_registered(self, state: PhaseState) -> None:
        """A workflow (re)started in this process is its own, even under an inherited id."""
        if state.sequence == 0 and self.inherited:
            self.inherited.discard(state.workflow_id)
