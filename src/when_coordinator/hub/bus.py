"""How hub instances act as one: the bus between them.

One hub alone (memory or SQLite) uses ``InProcessBus``: every service it can reach is its
own, and a command for any other service is refused as before. Several instances on one
PostgreSQL use ``PostgresBus``, built on LISTEN/NOTIFY:

- each instance reads what the others persisted (``PostgresStore.changes_since``) when
  notified, and after every (re)LISTEN, so operators on any instance see every service and
  workflow, live events included;
- a command for a service held by another instance is written to ``when_commands`` and
  notified by id (one statement); the instance holding the service's connection claims it by
  that id (one ``UPDATE``: delivered once) and sends it, also when the service reconnects to
  it later; undelivered commands are re-scanned after every (re)LISTEN, so a dropped
  notification delays a command but never loses it;
- ``status`` waits for the answer the holding instance writes back and notifies (the answer
  travels in the notification when it fits), or times out clearly;
- the phase changes of an instance's own services are notified at once (``when_hub_phases``,
  the workflow's document with them), besides being written with the next batch: the service's
  answer to a command reaches the instance that sent it without waiting for a batch or a read;
- commands, answers, phase notes and leases use a connection (and a thread) of their own,
  one statement each: none of them waits behind a batch or a mirror read;
- notifications are received on a connection and a thread of their own (``Listener``), which
  claims a notified command at once and hands the event loop only what must run there;
- each instance renews a lease (``when_instances``) every ``lease_timeout / 3`` seconds; the
  services of an instance whose lease ran out show as disconnected until they reconnect.

The one view (the mirror read and the phase notes) is ``oneview.OneView``, a mixin of
``PostgresBus``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from ..protocol import Message, MessageType, StatusResponsePayload, decode, encode
from .errors import HubError, ServiceUnavailable, StatusTimeout, first_line
from .oneview import OneView
from .pglanes import SWITCH_INTERVAL, Control, Lane, Listener, switch_interval

if TYPE_CHECKING:
    from .pgstore import PostgresStore
    from .view import BusHost

__all__ = ["SWITCH_INTERVAL", "Bus", "InProcessBus", "PostgresBus"]

_log = logging.getLogger("when_coordinator.hub")


_T = TypeVar("_T")


class Bus(Protocol):
    """What a hub needs to reach the services other instances hold."""

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    def holds(self, service_id: str) -> bool:
        """Whether another live instance holds this service's connection."""
        ...

    async def command(self, service_id: str, message: Message) -> None:
        """Hand a command to the instance holding the service (``ServiceUnavailable`` if
        none does)."""
        ...

    async def status(
        self, service_id: str, message: Message, timeout: float
    ) -> StatusResponsePayload: ...

    def connected(self, service_id: str) -> None:
        """A service (re)connected to this instance: deliver what waits for it."""
        ...

    def disconnected(self, service_id: str) -> None:
        """A connection of this service to this instance closed."""
        ...

    def health(self) -> dict[str, Any] | None: ...


class InProcessBus:
    """The bus of a hub alone: there is nobody else to reach."""

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    def holds(self, service_id: str) -> bool:
        return False

    async def command(self, service_id: str, message: Message) -> None:
        raise ServiceUnavailable(f"service {service_id!r} is not connected")

    async def status(
        self, service_id: str, message: Message, timeout: float
    ) -> StatusResponsePayload:
        raise ServiceUnavailable(f"service {service_id!r} is not connected")

    def connected(self, service_id: str) -> None:
        return None

    def disconnected(self, service_id: str) -> None:
        return None

    def health(self) -> dict[str, Any] | None:
        return None


class PostgresBus(OneView):
    """LISTEN/NOTIFY between instances sharing one PostgreSQL (see the module)."""

    def __init__(self, hub: BusHost, store: PostgresStore) -> None:
        self._hub = hub
        self._store = store
        """The hub's store (its writes run on the hub's store thread): ``loaded_*`` only."""
        self._control = Control(store.url, max(10.0, hub.command_timeout))
        """Commands, answers, phase notes and leases: never queued behind a batch or a read."""
        self._reader = Lane(store, "when-hub-mirror")
        self._seq = 0
        self._owners: dict[str, str] = {}
        """Service id to the other instance that last held it."""
        self._alive: set[str] = set()
        self._answers: dict[int, asyncio.Future[str]] = {}
        self._want_changes = asyncio.Event()
        self._want_commands = asyncio.Event()
        self._scan = False
        """A re-scan of every undelivered command is due (besides ``_claims``)."""
        self._claims: deque[list[tuple[Any, ...]]] = deque()
        """What the listener claimed of notified commands, delivered in that order."""
        self._local: frozenset[str] = frozenset()
        """The services held here, for the listener's thread (replaced, never changed)."""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._listener: Listener | None = None
        self._outgoing: deque[dict[str, Any]] = deque()
        """Phase notes of this instance's services, for the bus's thread to encode and send."""
        self._draining = False
        """The bus's thread is sending notes (or about to): appended ones go with them."""
        self._early: dict[str, tuple[str, float]] = {}
        """Workflow id to (instance, ``updated_at``) of a phase note applied ahead of the
        batch that writes it: an older document read meanwhile must not undo it."""
        self._tasks: list[asyncio.Task[None]] = []
        self._listening = asyncio.Event()
        self.listens = 0
        """LISTEN sessions opened (more than one: the listening connection was lost)."""
        self.delivered = 0
        self.mirrored = 0
        self.notes_sent = 0
        self.last_error = ""
        self._shortened = False
        """Whether ``start`` shortened the switch interval (``close`` gives its share back)."""

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        if not self._shortened:
            self._shortened = True
            switch_interval.shorten()
        store = self._store
        self._seq = store.loaded_seq
        self._alive = {i for i, alive in (await self._heartbeat()).items() if alive}
        for service_id, (owner, alive) in store.loaded_owners.items():
            self._owners[service_id] = owner
            service = self._hub.state.services.get(service_id)
            if owner != store.instance_id and alive and service is not None:
                document = service.as_dict()
                self._hub._apply_remote(
                    lambda d=document: self._hub.state.mirror_service(d, bool(d["connected"]))  # type: ignore[misc]
                )
        persister = self._hub._persister
        if persister is not None:
            persister.on_phase = self._phase_changed
        from .pgstore import ANSWERS, CHANGES, COMMANDS, PHASES  # noqa: PLC0415

        self._loop = asyncio.get_running_loop()
        self._local = frozenset(self._hub._local_services())
        self._listener = Listener(
            store.url,
            (ANSWERS, CHANGES, COMMANDS, PHASES),
            self._on_notify,
            functools.partial(self._post, self._listening_again),
            lambda exc: self._post(self._listen_failed, exc),
        )
        self._listener.start()
        self._tasks = [
            asyncio.ensure_future(self._changes_loop()),
            asyncio.ensure_future(self._commands_loop()),
            asyncio.ensure_future(self._lease_loop()),
        ]
        try:
            await asyncio.wait_for(self._listening.wait(), 15.0)
        except asyncio.TimeoutError:
            await self.close()
            raise HubError(f"cannot LISTEN on {store.path}: {self.last_error}") from None

    async def close(self) -> None:
        persister = self._hub._persister
        if persister is not None and persister.on_phase == self._phase_changed:
            persister.on_phase = None
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        for future in self._answers.values():
            if not future.done():
                future.cancel()
        from .pgstore import ANSWERS, LEAVE_SQL  # noqa: PLC0415 - only with PostgreSQL

        listener, self._listener = self._listener, None
        if listener is not None:
            listener.stop()
            with contextlib.suppress(Exception):  # wakes it (not an answer: others ignore it)
                await self._control.rows("SELECT pg_notify(%s, 'stop')", (ANSWERS,))
            await asyncio.to_thread(listener.join, 2.0)
        with contextlib.suppress(Exception):
            await self._control.rows(LEAVE_SQL, (self._store.instance_id,))
        await self._control.close()
        await self._reader.close()
        if self._shortened:
            self._shortened = False
            switch_interval.restore()

    async def _heartbeat(self) -> dict[str, bool]:
        """Renew this instance's lease; every instance's and whether its lease is alive."""
        from .pgstore import HEARTBEAT_SQL, LEASES_SQL  # noqa: PLC0415

        hub, store = self._hub, self._store
        await self._control.rows(HEARTBEAT_SQL, (store.instance_id, hub.url if hub.running else ""))
        rows = await self._control.rows(LEASES_SQL, (store.lease_timeout,))
        return {str(instance): bool(alive) for instance, alive in rows}

    # ------------------------------------------------------------------ listening

    def _post(self, callback: Callable[..., object], *args: Any) -> None:
        """Hand ``callback`` to the event loop from the listener's thread."""
        loop = self._loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop closed: the hub is gone
                loop.call_soon_threadsafe(callback, *args)

    def _listening_again(self) -> None:
        """After every (re)LISTEN: what was notified while nobody listened is found by
        scanning."""
        self.listens += 1
        self._want_changes.set()
        self._scan = True
        self._want_commands.set()
        for command_id in list(self._answers):
            self._fetch_answer(command_id)
        self._listening.set()

    def _listen_failed(self, exc: BaseException) -> None:
        self.last_error = first_line(exc)
        _log.warning(
            "hub bus: the LISTEN connection to %s failed (%s); reconnecting",
            self._store.path,
            self.last_error,
        )

    def _on_notify(self, channel: str, payload: str) -> None:
        """A notification, in the listener's thread: only ``_post`` reaches the loop."""
        if channel == "when_hub_changes":
            if payload != self._store.instance_id:
                self._post(self._want_changes.set)
        elif channel == "when_hub_commands":
            self._on_command(payload)
        elif channel == "when_hub_answers":
            self._post(self._on_answer, payload)
        elif channel == "when_hub_phases":
            self._on_phase_note(payload)

    def _on_command(self, payload: str) -> None:
        """``id service`` (an older instance: ``id``): claim it, in the listener's thread, if
        the service is held here (its delivery then takes the loop two turns)."""
        number, _, service_id = payload.partition(" ")
        if not number.isdigit() or not service_id or len(service_id) >= 1000:
            self._post(self._rescan)  # not one to claim by id: look at them all
            return
        if service_id not in self._local:
            return
        from .pgstore import CLAIM_COMMAND_SQL  # noqa: PLC0415

        store, listener = self._store, self._listener
        if listener is None:
            return
        params = {
            "me": store.instance_id,
            "id": int(number),
            "service": service_id,
            "ttl": store.command_ttl,
        }
        try:
            rows = listener.execute(CLAIM_COMMAND_SQL, params)
        except Exception as exc:  # it may be undelivered still: the re-scan finds it
            self._post(self._claim_failed, exc)
            return
        if rows:
            self._post(self._claimed, rows)

    def _claimed(self, rows: list[tuple[Any, ...]]) -> None:
        self._claims.append(rows)
        self._want_commands.set()

    def _claim_failed(self, exc: BaseException) -> None:
        self.last_error = first_line(exc)
        self._rescan()

    def _rescan(self) -> None:
        self._scan = True
        self._want_commands.set()

    def _claim_params(self, services: set[str]) -> dict[str, Any]:
        store = self._store
        return {"me": store.instance_id, "services": sorted(services), "ttl": store.command_ttl}

    def _on_answer(self, payload: str) -> None:
        number, _, text = payload.partition(" ")
        if not number.isdigit():
            return
        future = self._answers.get(int(number))
        if future is None or future.done():
            return
        if text:
            future.set_result(text)
        else:  # too large for a notification: read it
            self._fetch_answer(int(number))

    def _fetch_answer(self, command_id: int) -> None:
        future = self._answers.get(command_id)
        if future is None or future.done():
            return

        async def fetch() -> None:
            from .pgstore import GET_ANSWER_SQL  # noqa: PLC0415

            with contextlib.suppress(Exception):
                rows = await self._control.rows(GET_ANSWER_SQL, (command_id,))
                if rows and rows[0][0] is not None and not future.done():
                    future.set_result(str(rows[0][0]))

        self._hub._spawn(fetch())

    # ------------------------------------------------------------------ leases

    async def _lease_loop(self) -> None:
        interval = max(0.05, self._store.lease_timeout / 3)
        while True:
            await asyncio.sleep(interval)
            try:
                leases = await self._heartbeat()
            except Exception as exc:
                self.last_error = f"{type(exc).__name__}: {exc}".splitlines()[0]
                continue
            self._alive = {instance for instance, alive in leases.items() if alive}
            local = self._hub._local_services()
            alive = self._alive
            gone = [sid for sid, o in self._owners.items() if o not in alive and sid not in local]
            if gone:
                self._hub._apply_remote(functools.partial(self._disconnect, gone))

    def _disconnect(self, service_ids: list[str]) -> None:
        for service_id in service_ids:
            self._hub.state.mirror_disconnected(service_id)

    # ------------------------------------------------------------------ commands

    def holds(self, service_id: str) -> bool:
        service = self._hub.state.services.get(service_id)
        owner = self._owners.get(service_id)
        return bool(service is not None and service.connected and owner in self._alive)

    async def _put(self, service_id: str, message: Message) -> int:
        """Write the command and notify it (one statement: written before it is notified)."""
        from .pgstore import PUT_COMMAND_SQL  # noqa: PLC0415

        params = {
            "service": service_id,
            "origin": self._store.instance_id,
            "message": encode(message),
        }
        try:
            rows = await self._control.rows(PUT_COMMAND_SQL, params)
        except Exception as exc:
            raise ServiceUnavailable(
                f"service {service_id!r} is on another hub instance, and the command could "
                f"not be written to {self._store.path}: {first_line(exc)}"
            ) from None
        return int(rows[0][0])

    async def command(self, service_id: str, message: Message) -> None:
        if not self.holds(service_id):
            raise ServiceUnavailable(f"service {service_id!r} is not connected")
        await self._put(service_id, message)

    async def status(
        self, service_id: str, message: Message, timeout: float
    ) -> StatusResponsePayload:
        if not self.holds(service_id):
            raise ServiceUnavailable(f"service {service_id!r} is not connected")
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        command_id = await self._put(service_id, message)
        self._answers[command_id] = future
        # Its answer may have been notified before it was awaited here: written before that
        # notification, it is read now (else it comes by notification).
        self._fetch_answer(command_id)
        try:
            answer = json.loads(await asyncio.wait_for(asyncio.shield(future), timeout + 1.0))
        except asyncio.TimeoutError:
            raise StatusTimeout(
                f"service {service_id!r} (on hub instance {self._owners.get(service_id)!r}) "
                f"did not answer status for workflow {message.workflow_id!r} within {timeout:g} s"
            ) from None
        finally:
            self._answers.pop(command_id, None)
        if "error" in answer:
            error = StatusTimeout if answer["error"] == "StatusTimeout" else ServiceUnavailable
            raise error(str(answer.get("message", "")))
        return StatusResponsePayload.from_dict(answer["status"])

    def connected(self, service_id: str) -> None:
        self._owners.pop(service_id, None)
        self._local = frozenset(self._hub._local_services())
        self._scan = True
        self._want_commands.set()

    def disconnected(self, service_id: str) -> None:
        self._local = frozenset(self._hub._local_services())

    async def _commands_loop(self) -> None:
        """Delivers what the claims started on notification return, in that order, then
        what a re-scan claims (oldest first), one at a time."""
        from .pgstore import TAKE_COMMANDS_SQL  # noqa: PLC0415

        while True:
            await self._want_commands.wait()
            self._want_commands.clear()
            scan, self._scan = self._scan, False
            while self._claims:
                await self._deliver_all(self._claims.popleft())
            if not scan:
                continue
            params = self._claim_params(self._hub._local_services())
            try:
                claimed = (
                    await self._control.rows(TAKE_COMMANDS_SQL, params)
                    if params["services"]
                    else []
                )
            except Exception as exc:
                self.last_error = f"{type(exc).__name__}: {exc}".splitlines()[0]
                await asyncio.sleep(1.0)
                self._scan = True
                self._want_commands.set()
                continue
            await self._deliver_all(claimed)

    async def _deliver_all(self, claimed: list[tuple[Any, ...]]) -> None:
        for command_id, service_id, text in sorted(claimed):
            await self._deliver(int(command_id), str(service_id), str(text))

    async def _deliver(self, command_id: int, service_id: str, text: str) -> None:
        hub = self._hub
        try:
            message = decode(text)
        except Exception:
            _log.warning("hub bus: dropped an unreadable command #%d", command_id)
            return
        if message.type is MessageType.STATUS:
            hub._spawn(self._answer_status(command_id, service_id, message))
            return
        try:
            await hub._deliver_local(service_id, message)
            self.delivered += 1
        except ServiceUnavailable:
            from .pgstore import RELEASE_COMMAND_SQL  # noqa: PLC0415

            with contextlib.suppress(Exception):
                await self._control.rows(RELEASE_COMMAND_SQL, (command_id,))

    async def _answer_status(self, command_id: int, service_id: str, message: Message) -> None:
        from .pgstore import ANSWER_SQL  # noqa: PLC0415

        answer: dict[str, Any]
        try:
            status = await self._hub._status(
                message.workflow_id, self._hub.command_timeout, service_id, relay=False
            )
            answer = {"status": status.to_dict()}
        except HubError as exc:
            answer = {"error": type(exc).__name__, "message": str(exc)}
        self.delivered += 1
        with contextlib.suppress(Exception):
            await self._control.rows(ANSWER_SQL, {"id": command_id, "answer": json.dumps(answer)})

    def health(self) -> dict[str, Any] | None:
        return {
            "instance_id": self._store.instance_id,
            "instances_alive": sorted(self._alive),
            "listens": self.listens,
            "commands_delivered": self.delivered,
            "phase_notes_sent": self.notes_sent,
            "workflows_mirrored": self.mirrored,
            "last_error": self.last_error,
        }
