"""How hub instances act as one: the bus between them.

One hub alone (memory or SQLite) uses ``InProcessBus``: every service it can reach is its
own, and a command for any other service is refused as before. Several instances on one
PostgreSQL use ``PostgresBus``, built on LISTEN/NOTIFY:

- each instance reads what the others persisted (``PostgresStore.changes_since``) when
  notified, and after every (re)LISTEN, so operators on any instance see every service and
  workflow, live events included;
- a command for a service held by another instance is written to ``when_commands`` and
  notified by id; the instance holding the service's connection claims and delivers it, also
  when the service reconnects to it later; undelivered commands are re-scanned after every
  (re)LISTEN, so a dropped notification delays a command but never loses it;
- ``status`` waits for the answer the holding instance writes back (or times out clearly);
- each instance renews a lease (``when_instances``) every ``lease_timeout / 3`` seconds; the
  services of an instance whose lease ran out show as disconnected until they reconnect.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import json
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from ..protocol import Message, MessageType, StatusResponsePayload, decode, encode
from .errors import HubError, ServiceUnavailable, StatusTimeout

if TYPE_CHECKING:
    from .pgstore import Mirror, PostgresStore
    from .view import BusHost

__all__ = ["Bus", "InProcessBus", "PostgresBus"]

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

    def health(self) -> dict[str, Any] | None:
        return None


def _take(store: PostgresStore, local: set[str]) -> list[tuple[int, str, str]]:
    return store.take_commands(local)


class _Lane:
    """A connection of its own, used from a thread of its own."""

    def __init__(self, store: PostgresStore, name: str) -> None:
        from .pgstore import PostgresStore  # noqa: PLC0415 - only with PostgreSQL

        self.store = PostgresStore(
            store.url,
            store.instance_id,
            lease_timeout=store.lease_timeout,
            command_ttl=store.command_ttl,
        )
        self._executor = concurrent.futures.ThreadPoolExecutor(1, name)

    async def run(self, fn: Callable[[PostgresStore], _T]) -> _T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, self.store)

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.run(lambda s: s.close())
        self._executor.shutdown(wait=False)


class PostgresBus:
    """LISTEN/NOTIFY between instances sharing one PostgreSQL (see the module)."""

    def __init__(self, hub: BusHost, store: PostgresStore) -> None:
        self._hub = hub
        self._store = store
        """The hub's store (its writes run on the hub's store thread): ``loaded_*`` only."""
        self._control = _Lane(store, "when-hub-bus")
        """Commands, answers and leases: never queued behind a large batch or a mirror read."""
        self._reader = _Lane(store, "when-hub-mirror")
        self._seq = 0
        self._owners: dict[str, str] = {}
        """Service id to the other instance that last held it."""
        self._alive: set[str] = set()
        self._answers: dict[int, asyncio.Future[str]] = {}
        self._want_changes = asyncio.Event()
        self._want_commands = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._listening = asyncio.Event()
        self.listens = 0
        """LISTEN sessions opened (more than one: the listening connection was lost)."""
        self.delivered = 0
        self.mirrored = 0
        self.last_error = ""

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        store = self._store
        self._seq = store.loaded_seq
        self._alive = {
            i for i, alive in (await self._control.run(self._heartbeat)).items() if alive
        }
        for service_id, (owner, alive) in store.loaded_owners.items():
            self._owners[service_id] = owner
            service = self._hub.state.services.get(service_id)
            if owner != store.instance_id and alive and service is not None:
                document = service.as_dict()
                self._hub._apply_remote(
                    lambda d=document: self._hub.state.mirror_service(d, bool(d["connected"]))  # type: ignore[misc]
                )
        self._tasks = [
            asyncio.ensure_future(self._listen_loop()),
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
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        for future in self._answers.values():
            if not future.done():
                future.cancel()
        with contextlib.suppress(Exception):
            await self._control.run(lambda s: s.leave())
        await self._control.close()
        await self._reader.close()

    def _heartbeat(self, store: PostgresStore) -> dict[str, bool]:
        hub = self._hub
        return store.heartbeat(hub.url if hub.running else "")

    # ------------------------------------------------------------------ listening

    async def _listen_loop(self) -> None:
        import psycopg  # noqa: PLC0415 - only with PostgreSQL

        delay = 0.1
        channels = {"when_hub_changes", "when_hub_commands", "when_hub_answers"}
        while True:
            try:
                conn = await psycopg.AsyncConnection.connect(
                    self._store.url, autocommit=True, connect_timeout=10
                )
                async with conn:
                    for channel in sorted(channels):
                        await conn.execute(f"LISTEN {channel}")
                    self.listens += 1
                    delay = 0.1
                    # What was notified while nobody listened is found by scanning.
                    self._want_changes.set()
                    self._want_commands.set()
                    for command_id in list(self._answers):
                        self._check_answer(command_id)
                    self._listening.set()
                    async for note in conn.notifies():
                        self._on_notify(note.channel, note.payload)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.last_error = f"{type(exc).__name__}: {exc}".splitlines()[0]
                _log.warning(
                    "hub bus: the LISTEN connection to %s failed (%s); reconnecting",
                    self._store.path,
                    self.last_error,
                )
            await asyncio.sleep(delay)
            delay = min(5.0, delay * 2)

    def _on_notify(self, channel: str, payload: str) -> None:
        if channel == "when_hub_changes":
            if payload != self._store.instance_id:
                self._want_changes.set()
        elif channel == "when_hub_commands":
            self._want_commands.set()
        elif channel == "when_hub_answers" and payload.isdigit():
            self._check_answer(int(payload))

    def _check_answer(self, command_id: int) -> None:
        future = self._answers.get(command_id)
        if future is None or future.done():
            return

        async def fetch() -> None:
            with contextlib.suppress(Exception):
                text = await self._control.run(lambda s: s.get_answer(command_id))
                if text is not None and not future.done():
                    future.set_result(text)

        self._hub._spawn(fetch())

    # ------------------------------------------------------------------ one view

    async def _changes_loop(self) -> None:
        while True:
            await self._want_changes.wait()
            self._want_changes.clear()
            try:
                mirror = await self._reader.run(lambda s: s.changes_since(self._seq))
            except Exception as exc:
                self.last_error = f"{type(exc).__name__}: {exc}".splitlines()[0]
                _log.warning("hub bus: reading other instances' changes failed: %s", exc)
                await asyncio.sleep(1.0)
                self._want_changes.set()
                continue
            self._seq = mirror.seq
            self._hub._apply_remote(lambda m=mirror: self._apply(m))  # type: ignore[misc]

    def _apply(self, mirror: Mirror) -> None:
        state, local = self._hub.state, self._hub._local_services()
        for owner, alive, document in mirror.services:
            service_id = str(document.get("service_id", ""))
            if service_id in local:
                continue  # this instance holds it now: its own view is the truth
            self._owners[service_id] = owner
            if alive:  # read with the row: fresher than the last lease round
                self._alive.add(owner)
            connected = bool(document.get("connected")) and alive
            with contextlib.suppress(ValueError, KeyError, TypeError):
                state.mirror_service(document, connected)
        records: dict[str, list[tuple[str, Any]]] = {}
        for workflow_id, kind, data in mirror.records:
            records.setdefault(workflow_id, []).append((kind, data))
        for document in mirror.workflows:
            workflow_id = str(document.get("workflow_id", ""))
            if str(document.get("service_id", "")) in local:
                continue
            with contextlib.suppress(ValueError, KeyError, TypeError):
                state.mirror_workflow(document, records.get(workflow_id, ()))
                self.mirrored += 1
        if mirror.logs:
            from .records import StoredLog  # noqa: PLC0415

            parsed = []
            for data in mirror.logs:
                with contextlib.suppress(ValueError, KeyError, TypeError):
                    parsed.append(StoredLog.from_dict(data))
            state.mirror_logs(parsed)

    async def _lease_loop(self) -> None:
        interval = max(0.05, self._store.lease_timeout / 3)
        while True:
            await asyncio.sleep(interval)
            try:
                leases = await self._control.run(self._heartbeat)
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

    async def command(self, service_id: str, message: Message) -> None:
        if not self.holds(service_id):
            raise ServiceUnavailable(f"service {service_id!r} is not connected")
        text = encode(message)
        await self._control.run(lambda s: s.put_command(service_id, text))

    async def status(
        self, service_id: str, message: Message, timeout: float
    ) -> StatusResponsePayload:
        if not self.holds(service_id):
            raise ServiceUnavailable(f"service {service_id!r} is not connected")
        text = encode(message)
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        command_id: int = await self._control.run(lambda s: s.put_command(service_id, text))
        self._answers[command_id] = future
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
        self._want_commands.set()

    async def _commands_loop(self) -> None:
        while True:
            await self._want_commands.wait()
            self._want_commands.clear()
            local = self._hub._local_services()
            try:
                claimed = await self._control.run(functools.partial(_take, local=local))
            except Exception as exc:
                self.last_error = f"{type(exc).__name__}: {exc}".splitlines()[0]
                await asyncio.sleep(1.0)
                self._want_commands.set()
                continue
            for command_id, service_id, text in claimed:
                await self._deliver(command_id, service_id, text)

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
            await self._control.run(lambda s: s.release_command(command_id))

    async def _answer_status(self, command_id: int, service_id: str, message: Message) -> None:
        answer: dict[str, Any]
        try:
            status = await self._hub._status(
                message.workflow_id, self._hub.command_timeout, service_id, relay=False
            )
            answer = {"status": status.to_dict()}
        except HubError as exc:
            answer = {"error": type(exc).__name__, "message": str(exc)}
        self.delivered += 1
        text = json.dumps(answer)
        with contextlib.suppress(Exception):
            await self._control.run(lambda s: s.answer(command_id, text))

    def health(self) -> dict[str, Any] | None:
        return {
            "instance_id": self._store.instance_id,
            "instances_alive": sorted(self._alive),
            "listens": self.listens,
            "commands_delivered": self.delivered,
            "workflows_mirrored": self.mirrored,
            "last_error": self.last_error,
        }
