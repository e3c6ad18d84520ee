"""The device events: to the Jupyter event logger, then to subscribers in this process.

Every event goes to the event logger first (the panel, widgets and kernels read it; never put a
secret in one). Parts of the server that follow what happens to devices subscribe here instead
of being called back by the code that pairs or revokes: cluster membership follows
`device-added` and `device-revoked` this way. A subscriber is awaited in order by `publish`, so
its work is done (or its error raised) before the action that published the event returns:
a revoke has stopped sharing by the time the API answers.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

Emit = Callable[[str, dict[str, Any]], None]
Subscriber = Callable[[dict[str, Any]], Awaitable[None]]


class DeviceEvents:
    def __init__(self, emit: Emit) -> None:
        self._emit = emit
        self._subscribers: dict[str, list[Subscriber]] = {}

    def subscribe(self, name: str, subscriber: Subscriber) -> None:
        self._subscribers.setdefault(name, []).append(subscriber)

    async def publish(self, name: str, data: dict[str, Any]) -> None:
        self._emit(name, data)
        for subscriber in list(self._subscribers.get(name, ())):
            await subscriber(data)

    async def request_decided(self, row: dict[str, Any], state: str) -> None:
        await self.publish("request-decided", {
            "request_id": row["id"], "direction": row["direction"], "kind": row["kind"],
            "peer_id": row["peer_id"], "peer_name": row["peer_name"], "state": state,
        })

    async def device_added(self, device: dict[str, Any]) -> None:
        await self.publish("device-added", {
            "peer_id": device["id"], "peer_name": device["name"], "role": device["role"]
        })
