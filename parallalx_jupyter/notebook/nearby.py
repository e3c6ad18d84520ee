"""`%parallalx discover`: devices nearby as a table with an Invite button per row.

A click sends a connection request through the REST API (`POST invitations`, as `%parallalx
invite URL` does) and the row then shows the verification code, which must match the one on
the other device before its user accepts: the announcement that put the row here proves
nothing. Names and addresses come from the network and are escaped (`esc`); the text/plain of
the table is the CLI's text (`text.nearby_text`).
"""

from __future__ import annotations

from typing import Any

import ipywidgets as widgets

from ..client import ClientError
from ..text import NAME_LIMIT, NEARBY_EMPTY, NEARBY_NOTE, nearby_text, pretty_code, short_id
from .api import Connection
from .widgets import UI_LOCK, _TextRepr, esc

__all__ = ["NearbyTable"]


class _NearbyRow:
    def __init__(self, table: NearbyTable, device: dict[str, Any]) -> None:
        self.device = device
        self.url: str = (device.get("urls") or [""])[0]
        self.invite_button = widgets.Button(
            description="Invite", icon="paper-plane",
            tooltip="Send a connection request to this device",
        )
        self.invite_button.on_click(lambda _button: table.invite(self))
        self.outcome = widgets.HTML()
        addresses = ", ".join(esc(a, 40) for a in device.get("addresses") or [])
        full = esc(device.get("id_display") or device.get("id"))
        paired = " <i>(paired)</i>" if device.get("paired") else ""
        self.cells: list[widgets.Widget] = [
            widgets.HTML(f"<b>{esc(device.get('name'), NAME_LIMIT)}</b>{paired}"),
            widgets.HTML(f'<code title="{full}">{esc(short_id(device))}</code>'),
            widgets.HTML(f"<code>{addresses}:{esc(device.get('port'), 6)}</code>"),
            self.invite_button,
            self.outcome,
        ]


class NearbyTable(_TextRepr, widgets.VBox):
    """Devices heard on the local network (one `GET nearby`), each with an Invite button."""

    HEADER = ("Name", "Device ID", "Address", "", "")

    def __init__(self, connection: Connection, rows: list[dict[str, Any]]) -> None:
        super().__init__()
        self.connection = connection
        self.devices = rows
        self.rows = [_NearbyRow(self, d) for d in rows if d.get("urls")]
        note = widgets.HTML(f"<small>{esc(NEARBY_NOTE)}</small>")
        if not self.rows:
            self.children = [widgets.HTML(esc(NEARBY_EMPTY)), note]
            return
        header = [widgets.HTML(f"<b>{h}</b>") for h in self.HEADER]
        grid = widgets.GridBox(
            [*header, *(cell for row in self.rows for cell in row.cells)],
            layout=widgets.Layout(grid_template_columns="repeat(5, auto)", grid_gap="2px 12px"),
        )
        self.children = [grid, note]

    def invite(self, row: _NearbyRow) -> dict[str, Any] | None:
        """Send the connection request for `row` (the Invite button); the row shows the code
        to compare, or the server's error."""
        with UI_LOCK:
            row.invite_button.disabled = True
            row.outcome.value = "sending…"
        try:
            sent = self.connection.client.invite(row.url)
        except ClientError as err:
            with UI_LOCK:
                row.invite_button.disabled = False
                row.outcome.value = f'<span style="color:#b00">{esc(err.message)}</span>'
            return None
        with UI_LOCK:
            row.outcome.value = (
                f"sent: code <b>{esc(pretty_code(sent.get('code')))}</b> must match the other "
                "screen")
        return sent

    def text(self) -> str:
        return nearby_text(self.devices, "%parallalx")
