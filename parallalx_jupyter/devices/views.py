"""What the REST API, the CLI and the panel read: this device, requests, paired devices.

Never-revealed requests are not shown as requests (nobody saw a code for them); the device
view counts them as `incomplete_requests`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from .._version import __version__
from ..identity import DeviceIdentity, display_device_id
from ..pairing import shown_hash
from ..profile import ProfileCache
from ..store import Store
from .errors import ApiError
from .settings import PairingSettings


def never_revealed(row: dict[str, Any]) -> bool:
    return row["direction"] == "incoming" and row["code"] is None


def request_view(row: dict[str, Any], paired: dict[str, str] | None = None) -> dict[str, Any]:
    """`paired` maps the IDs of devices paired now to the request each pairing came from: a
    request from one of them (another request than that one) renews that pairing."""
    show_code = row["state"] in ("pending", "accepted")
    pairing = (paired or {}).get(row["peer_id"])
    return {
        "id": row["id"],
        "direction": row["direction"],
        "kind": row["kind"],
        "state": row["state"],
        "peer": {
            "id": row["peer_id"],
            "id_display": display_device_id(row["peer_id"]),
            "name": row["peer_name"],
            "url": row["peer_url"],
        },
        "asks": row["asks"],
        "already_paired": pairing is not None and pairing != row["id"],
        "code": row["code"] if show_code else None,
        "shown_hash": (shown_hash(row["id"], row["kind"], row["asks"], row["code"])
                       if show_code else None),
        "created_at": row["created_at"],
        "expires_at": row["expires_at"],
        "decided_at": row["decided_at"],
        "reason": row.get("reason"),
    }


def device_view(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"],
        "id_display": display_device_id(row["id"]),
        "name": row["name"],
        "role": row["role"],
        "state": row["state"],
        "peer_url": row["peer_url"],
        "request_id": row["request_id"],
        "paired_at": row["paired_at"],
        "updated_at": row["updated_at"],
        "last_seen": row["last_seen"],
    }


class DeviceViews:
    """`sweep` closes expired requests first, so a list never shows one past its expiry;
    `incomplete_count` is the number of never-revealed requests to report."""

    def __init__(
        self,
        identity: DeviceIdentity,
        store: Store,
        settings: PairingSettings,
        profile: ProfileCache,
        sweep: Callable[[], Awaitable[None]],
        incomplete_count: Callable[[], Awaitable[int]],
    ) -> None:
        self.identity = identity
        self.store = store
        self.settings = settings
        self.profile = profile
        self.sweep = sweep
        self.incomplete_count = incomplete_count
        self.peer_urls: list[str] = []

    async def device_info(self, refresh: bool = False) -> dict[str, Any]:
        profile = await self.profile.get(refresh=refresh) if refresh else self.profile.peek()
        return {
            "id": self.identity.device_id,
            "id_display": self.identity.display_id,
            "name": self.settings.device_name,
            "peer_urls": self.peer_urls,
            "version": __version__,
            "profile": profile,
            "incomplete_requests": await self.incomplete_count(),
        }

    async def list_requests(
        self, direction: str | None = None, state: str | None = None
    ) -> list[dict[str, Any]]:
        await self.sweep()
        states: tuple[str, ...] | None = None
        if state == "open":
            states = ("pending",)
        elif state and state != "all":
            states = (state,)
        rows = await self.store.list_requests(direction=direction, states=states,
                                              revealed_only=True)
        paired = await self._paired()
        return [request_view(r, paired) for r in rows]

    async def _paired(self) -> dict[str, str]:
        return {d["id"]: d["request_id"] for d in await self.store.list_devices()
                if d["state"] == "paired"}

    async def get_request(self, request_id: str) -> dict[str, Any]:
        await self.sweep()
        row = await self.store.get_request(request_id)
        if row is None or never_revealed(row):
            raise ApiError(404, f"no request with ID {request_id!r}")
        return request_view(row, await self._paired())

    async def list_devices(self) -> list[dict[str, Any]]:
        rows = await self.store.list_devices()
        grants = await self.store.list_grants()
        current = {g["device_id"]: g for g in grants if g["revoked_at"] is None}
        out = []
        for row in rows:
            view = device_view(row)
            grant = current.get(row["id"])
            view["grant"] = (
                {"asks": grant["asks"], "selection": grant["selection"]} if grant else None
            )
            out.append(view)
        return out

    async def get_device(self, device_id: str) -> dict[str, Any]:
        for device in await self.list_devices():
            if device["id"] == device_id:
                return device
        raise ApiError(404, f"no paired device with ID {device_id!r}")
