"""The hub's command path: ``pause``, ``resume``, ``cancel``, ``status`` and ``send``.

A command goes to the connection of the service that runs the workflow, or, when another
instance holds that service, through the bus (``bus.Bus.command``, ``Bus.status``) to the
instance that does. Every command's latency and outcome is counted (``CommandLatency``). A
mixin of ``Hub`` (``server.py``), which holds the attributes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from websockets.asyncio.server import Server
from websockets.exceptions import ConnectionClosed

from .._compat.asyncio import within
from ..protocol import (
    CancelPayload,
    Message,
    PausePayload,
    ResumePayload,
    StatusPayload,
    StatusResponsePayload,
    encode,
)
from .bus import Bus
from .commands import check_command
from .endpoint import Peer, PendingStatus
from .errors import HubClosed, HubError, ServiceUnavailable, StatusTimeout, WorkflowNotFound
from .metrics import CommandLatency
from .sendguard import SendBufferGuard
from .state import HubState
from .traffic import SentLog, SentMessage

__all__ = ["CommandPath"]

_log = logging.getLogger("when_coordinator.hub")


class CommandPath:
    """See the module docstring."""

    if TYPE_CHECKING:
        _server: Server | None
        _state: HubState
        _peers: dict[str, Peer]
        _pending: dict[str, PendingStatus]
        _bus: Bus
        _guard: SendBufferGuard
        _sent: SentLog
        command_timeout: float
        command_latency: CommandLatency

    def _route(self, workflow_id: str, service_id: str | None) -> tuple[Peer, str]:
        if not isinstance(workflow_id, str) or not workflow_id:
            raise ValueError("workflow_id must be a non-empty string")
        if self._server is None:
            raise HubClosed("the hub is not running")
        state = self._state
        if service_id is not None:
            service = state.services.get(service_id)
            if service is None:
                raise WorkflowNotFound(f"unknown service {service_id!r}")
            peer = self._peers.get(service.connection_id) if service.connected else None
            if peer is None:
                raise ServiceUnavailable(f"service {service_id!r} is not connected")
            return peer, service_id
        workflow = state.workflows.get(workflow_id)
        if workflow is None:
            raise WorkflowNotFound(
                f"unknown workflow {workflow_id!r}: no service has reported it to this hub"
            )
        peer = self._peers.get(workflow.connection_id)
        if peer is None:
            service = state.services.get(workflow.service_id)
            if service is not None and service.connected:
                peer = self._peers.get(service.connection_id)
        if peer is None:
            raise ServiceUnavailable(
                f"service {workflow.service_id!r}, which runs workflow {workflow_id!r}, "
                "is not connected"
            )
        return peer, workflow.service_id

    async def _command(self, message: Message, service_id: str | None) -> Message:
        workflow_id = message.workflow_id
        if self._server is not None and isinstance(workflow_id, str):
            workflow = self._state.workflows.get(workflow_id)
            if workflow is not None:  # a phase that does not allow it: 409, nothing sent
                check_command(str(message.type), workflow_id, workflow.phase)
        started = time.monotonic()
        try:
            try:
                peer, owner = self._route(workflow_id, service_id)
            except ServiceUnavailable:
                remote = self._remote_owner(workflow_id, service_id)
                if remote is None:
                    raise
                await self._bus.command(remote, message)
            else:
                await self._send(peer, message, owner, timeout=self.command_timeout)
        except HubError as exc:
            self._timed(str(message.type), started, exc)
            raise
        self._timed(str(message.type), started)
        return message

    def _timed(self, command: str, started: float, error: Exception | None = None) -> None:
        outcome = "ok" if error is None else type(error).__name__
        self.command_latency.observe(command, time.monotonic() - started, outcome)

    def _remote_owner(self, workflow_id: str, service_id: str | None) -> str | None:
        """The service to reach through another instance, if one holds it."""
        if service_id is None:
            workflow = self._state.workflows.get(workflow_id)
            service_id = workflow.service_id if workflow is not None else None
        if service_id and self._bus.holds(service_id):
            return service_id
        return None

    async def _deliver_local(self, service_id: str, message: Message) -> None:
        """Send a command another instance wrote for a service this one holds."""
        service = self._state.services.get(service_id)
        peer = self._peers.get(service.connection_id) if service is not None else None
        if peer is None:
            raise ServiceUnavailable(f"service {service_id!r} is not connected here")
        await self._send(peer, message, service_id, timeout=self.command_timeout)

    async def pause(
        self, workflow_id: str, reason: str = "", *, service_id: str | None = None
    ) -> Message:
        """Ask the owning service to pause the workflow; returns the message sent.

        Commands are never acknowledged: wait for the ``phase_changed`` that follows.
        ``service_id`` sends to that service even if the hub does not know the workflow.
        """
        payload = PausePayload(workflow_id=workflow_id, reason=reason)
        return await self._command(Message.create(payload), service_id)

    async def resume(
        self, workflow_id: str, from_checkpoint: str = "", *, service_id: str | None = None
    ) -> Message:
        """Ask the owning service to resume a paused workflow (optionally from a checkpoint)."""
        payload = ResumePayload(workflow_id=workflow_id, from_checkpoint=from_checkpoint)
        return await self._command(Message.create(payload), service_id)

    async def cancel(
        self,
        workflow_id: str,
        reason: str = "",
        force: bool = False,
        *,
        service_id: str | None = None,
    ) -> Message:
        """Ask the owning service to cancel the workflow."""
        payload = CancelPayload(workflow_id=workflow_id, reason=reason, force=force)
        return await self._command(Message.create(payload), service_id)

    async def status(
        self, workflow_id: str, timeout: float = 5.0, *, service_id: str | None = None
    ) -> StatusResponsePayload:
        """Ask the owning service for the workflow's status and wait for its answer.

        The answer is correlated by message id. Raises ``WorkflowNotFound``,
        ``ServiceUnavailable`` (also when the connection drops while waiting) or
        ``StatusTimeout`` (a ``TimeoutError``).
        """
        return await self._status(workflow_id, timeout, service_id, relay=True)

    async def _status(
        self, workflow_id: str, timeout: float, service_id: str | None, *, relay: bool
    ) -> StatusResponsePayload:
        """``status``; ``relay``: through another instance when that one holds the service."""
        request = Message.create(StatusPayload(workflow_id=workflow_id))
        try:
            peer, owner = self._route(workflow_id, service_id)
        except ServiceUnavailable:
            remote = self._remote_owner(workflow_id, service_id)
            if remote is None or not relay:
                raise
            started = time.monotonic()
            try:
                relayed = await self._bus.status(remote, request, timeout)
            except HubError as exc:
                self._timed("status", started, exc)
                raise
            self._timed("status", started)
            return relayed
        loop = asyncio.get_running_loop()
        future: asyncio.Future[StatusResponsePayload] = loop.create_future()
        self._pending[request.id] = PendingStatus(future, peer.connection_id, workflow_id)
        started = time.monotonic()
        try:
            await self._send(peer, request, owner, timeout=timeout)
            answer = await asyncio.wait_for(asyncio.shield(future), timeout)
            self._timed("status", started)
            return answer
        except asyncio.TimeoutError:
            error = StatusTimeout(
                f"service {owner!r} did not answer status for workflow {workflow_id!r} "
                f"within {timeout:g} s"
            )
            self._timed("status", started, error)
            raise error from None
        except HubError as exc:
            self._timed("status", started, exc)
            raise
        finally:
            self._pending.pop(request.id, None)
            if not future.done():
                future.cancel()

    async def send(self, service_id: str, message: Message) -> None:
        """Send any message to a connected service (for tests and experiments)."""
        service = self._state.services.get(service_id)
        peer = self._peers.get(service.connection_id) if service is not None else None
        if service is None or peer is None or not service.connected:
            raise ServiceUnavailable(f"service {service_id!r} is not connected")
        await self._send(peer, message, service_id, timeout=self.command_timeout)

    async def _send(self, peer: Peer, message: Message, service_id: str, *, timeout: float) -> None:
        try:
            await within(peer.ws.send(encode(message)), timeout)
        except ConnectionClosed:
            raise ServiceUnavailable(f"service {service_id!r} disconnected") from None
        except asyncio.TimeoutError:
            # The frame sits in the send buffer behind what the service has not read, and
            # cannot be taken back: a peer that does not read is dead, and closing it is
            # what frees the buffer.
            _log.warning(
                "closing %s: not reading (a send waited %g s)", peer.connection_id, timeout
            )
            self._guard.abort(peer.ws, f"not reading: a frame waited {timeout:g} s to be sent")
            raise ServiceUnavailable(
                f"service {service_id!r} is not reading: send timed out after {timeout:g} s; "
                "its connection was closed"
            ) from None
        if self._guard.aborted(peer.ws):  # the send returned because its buffer was dropped
            raise ServiceUnavailable(
                f"service {service_id!r} is not reading: its connection was closed before "
                "the message was delivered"
            )
        self._keep_sent(SentMessage(service_id, message))

    def _keep_sent(self, sent: SentMessage) -> None:
        self._sent.append(sent)
