"""The hub layer's shared helpers."""

from __future__ import annotations

from when_coordinator.hub import Hub
from when_coordinator.hub.testing import RawService


async def registered(hub: Hub, name: str) -> RawService:
    """A raw service named and identified ``name``, connected and registered to ``hub`` (it
    reads what the hub sends)."""
    client = await RawService.connect(hub.url, service_name=name)
    await client.register(name, service_id=name)
    return client
