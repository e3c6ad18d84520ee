"""ipywidgets 8 views of this device: request cards, the inbox, the device table, the overview.

Buttons decide for real through the REST API (`Connection`), exactly as the CLI and the lab
panel do; the card then shows the outcome or the server's error.

Text from other devices (names, purposes) is data. Every string that reaches a widget goes
through `plain()` (`parallalx_jupyter.text`: control and format characters such as bidi
overrides removed, whitespace collapsed, length capped) and, where the widget renders HTML,
`html.escape` (`esc()`). Labels and
button descriptions are plain text in ipywidgets 8.

Threads. Views are created in the foreground (the cell that displays them); only the card of a
request that arrives later is created by the live thread. Afterwards two threads change them:
the kernel's shell thread, which runs button callbacks, and the connection's one
"parallalx-live" thread (see live.py), which renders what the event stream reports. Choice:
rather than queueing updates for the kernel's main loop (which would freeze the inbox while a
long cell runs, e.g. training, and does not exist outside a kernel), both threads mutate widgets
directly but only while holding the module-wide re-entrant `UI_LOCK`, and network calls happen
outside it. ipywidgets documents trait updates from threads, and ipykernel sends comm messages
from any thread through its IOPub thread's per-thread pipes; the lock keeps two threads from
interleaving one view's renders (`hold_sync` batches are not thread-safe) and keeps a view's
dicts consistent. Children lists are always replaced whole, never mutated in place. A refresh
that started before a click can land after it: cards never go back from a decision to
"pending", device rows never to an older `updated_at`.

Without a widget frontend (terminal IPython, nbconvert to text) every view shows a plain-text
`text/plain`: `__repr__`, `_repr_pretty_` and `_repr_mimebundle_` all give the same text, the
one the CLI prints (made by `parallalx_jupyter.text`).
"""

from __future__ import annotations

import html
import threading
from collections.abc import Iterable
from typing import Any

import ipywidgets as widgets

from ..text import (
    ID_LIMIT,
    NAME_LIMIT,
    TEXT_LIMIT,
    countdown,
    devices_text,
    granted_text,
    peer_name,
    plain,
    pretty_code,
    request_text,
    request_title,
    requests_text,
    resources_text,
    short_id,
    status_text,
    worker_text,
)
from .api import Connection, connect

UI_LOCK = threading.RLock()

__all__ = [
    "DeviceTable",
    "Inbox",
    "Overview",
    "RequestCard",
    "StatusView",
    "devices_text",
    "esc",
    "plain",
    "request_text",
    "status_text",
]


# ---------------------------------------------------------------------------- safe text


def esc(value: Any, limit: int = TEXT_LIMIT) -> str:
    """`plain(value)` escaped for an HTML widget."""
    return html.escape(plain(value, limit), quote=True)


_OUTCOME = {
    "accepted": "✔ accepted",
    "rejected": "✖ rejected",
    "expired": "expired (no decision in time)",
    "superseded": "superseded by a newer request from the same device",
}


# ---------------------------------------------------------------------------- base classes


class _TextRepr:
    """text/plain for frontends without widgets."""

    def text(self) -> str:
        raise NotImplementedError

    def __repr__(self) -> str:
        try:
            return self.text()
        except Exception:  # half-built (an error inside __init__): don't hide that error
            return object.__repr__(self)

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:
        p.text(self.text())

    def _repr_mimebundle_(self, **kwargs: Any) -> dict[str, Any]:
        data = super()._repr_mimebundle_(**kwargs)  # type: ignore[misc]
        data["text/plain"] = self.text()
        return data


class _LiveView(_TextRepr):
    """A view rendered from `connection.live` (LiveState); see the module docstring."""

    connection: Connection
    _live: Any = None
    _attached = False
    _stopped = False  # was live and stopped following (detached): only then say so

    def _start(self, live: bool) -> None:
        self._live = self.connection.live
        self._live.refresh()  # fresh data, in the foreground: errors reach the caller
        # live from its first render: no "not live any more" on a view that is about to be
        self._attached = live
        with UI_LOCK:
            self._render()
        if live:
            self._live.attach(self)

    @property
    def is_live(self) -> bool:
        return self._attached

    def on_live(self, kind: str) -> None:
        """Called by the live thread: "data", "tick" or "error"."""
        with UI_LOCK:
            if not self._attached:  # closed or detached while this round was under way
                return
            if kind == "tick":
                self._tick()
            else:
                self._render()

    def refresh(self) -> None:
        """Re-read the REST API now and render (foreground)."""
        self._live.refresh()
        with UI_LOCK:
            self._render()

    def detach(self) -> None:
        """Stop following live updates (the view keeps its last state)."""
        if self._attached:
            self._attached = False
            self._stopped = True
            self._live.detach(self)
            with UI_LOCK:
                self._render()

    def close(self) -> None:
        if self._attached:
            self._attached = False
            self._live.detach(self)
        super().close()  # type: ignore[misc]

    def _render(self) -> None:
        raise NotImplementedError

    def _tick(self) -> None:
        pass

    def _notice(self) -> str:
        if self._live is not None and self._live.error:
            return f'<span style="color:#b00">⚠ updates failed: {esc(self._live.error)}</span>'
        if self._live is not None and self._stopped and not self._attached:
            return '<span style="color:#777">(not live any more: run the cell again)</span>'
        return ""


# long peer text (a purpose, a device ID) wraps inside the card instead of widening the output
WRAP = "overflow-wrap:anywhere;word-break:break-word;white-space:normal"


def wrap(html_text: str) -> str:
    """An HTML widget's value in a block that wraps long words."""
    return f'<div style="{WRAP}">{html_text}</div>'


_ASK_WORDS = {
    "nthreads": lambda v: f"{v} CPU thread{'' if v == 1 else 's'}",
    "memory_limit_gb": lambda v: f"{v} GB memory",
    "gpus": lambda v: f"{v} GPU{'' if v == 1 else 's'}",
    "duration_hours": lambda v: f"for {v} h",
}


def asks_html(asks: Any) -> str:
    """What a request asks for, as a readable sentence (escaped HTML): the purpose, then the
    limits in words ("2 CPU threads · 4 GB memory"), then other fields as `name: value`; never a
    raw dict or list, whatever shape a peer sent."""
    if not isinstance(asks, dict):
        return esc(asks) if asks else "run training workers"
    purpose = plain(asks.get("purpose") or "run training workers")
    parts: list[str] = []
    for key, value in list(asks.items())[:20]:
        if key == "purpose" or value is None or value in ([], {}, ""):
            continue
        if key in _ASK_WORDS and isinstance(value, int | float) and not isinstance(value, bool):
            parts.append(_ASK_WORDS[key](value))
        else:
            parts.append(f"{plain(str(key).replace('_', ' '), 32)}: {_readable(value)}")
    return html.escape(purpose) + "".join(f" · {html.escape(p)}" for p in parts)


def _readable(value: Any, depth: int = 0) -> str:
    """A nested value as `a, b` / `key value, key value` text (plain, length-limited)."""
    if isinstance(value, dict):
        if depth > 1:
            return "…"
        return ", ".join(f"{plain(str(k).replace('_', ' '), 32)} {_readable(v, depth + 1)}"
                         for k, v in list(value.items())[:10])
    if isinstance(value, list | tuple):
        more = " …" if len(value) > 20 else ""
        return ", ".join(_readable(v, depth + 1) for v in value[:20]) + more
    return plain(value, 200)


def _set(widget: widgets.Widget, name: str, value: Any) -> None:
    if getattr(widget, name) != value:
        setattr(widget, name, value)


def _show(widget: widgets.Widget, visible: bool) -> None:
    _set(widget.layout, "display", None if visible else "none")


# ---------------------------------------------------------------------------- request card


class RequestCard(_TextRepr, widgets.VBox):
    """One connection request: who asks, what, the code, the expiry; Accept / Reject for an
    incoming pending request. `accept()`/`reject()` (or the buttons) decide it on the server."""

    def __init__(self, request: dict[str, Any], connection: Connection | None = None) -> None:
        self.connection = connection
        self.request = dict(request)
        self.error: str | None = None
        self.busy = False
        self.title = widgets.HTML()
        self.peer = widgets.HTML()
        self.asks = widgets.HTML()
        self.code = widgets.HTML()
        self.expiry = widgets.Label()
        self.accept_button = widgets.Button(
            description="Accept", button_style="success", icon="check",
            tooltip="Accept: this device will run training workers for the other device",
        )
        self.reject_button = widgets.Button(description="Reject", button_style="danger",
                                            icon="times")
        self.accept_button.on_click(lambda _button: self.accept())
        self.reject_button.on_click(lambda _button: self.reject())
        self.kernel_picker = widgets.Dropdown(
            options=[("this server's Python", "")], value="", description="Run in",
            tooltip="the kernel, or an IDE's configured Python, the worker runs in",
        )
        self._load_kernels()
        self.buttons = widgets.HBox([self.kernel_picker, self.accept_button,
                                     self.reject_button])
        self.status = widgets.HTML()
        super().__init__(
            children=[self.title, self.peer, self.asks, self.code, self.expiry, self.buttons,
                      self.status],
            layout=widgets.Layout(border="1px solid #ccc", padding="4px 8px", margin="4px 0"),
        )
        self.add_class("parallalx-request-card")
        with UI_LOCK:
            self._render()

    def _load_kernels(self) -> None:
        """Selectable kernels from the server; non-Python ones are left out (the CLI and panel
        show them with the reason). A failure leaves the default only."""
        if self.connection is None or self.request.get("direction") != "incoming":
            return
        try:
            kernels = self.connection.call("GET", "kernels")
        except Exception:  # the card still works with the default environment
            return
        options = [("this server's Python", "")]
        for k in kernels:
            if k.get("selectable"):
                label = f"{k.get('display_name') or k['name']} (Python {k.get('python_version')})"
                options.append((label[:80], k["name"]))
        try:
            ides = self.connection.call("GET", "ides")
        except Exception:  # kernels alone are enough to choose an environment
            ides = []
        for ide in ides:
            if ide.get("found") and ide.get("interpreter"):
                options.append((f"{ide['name']}'s Python ({ide['interpreter']})"[:80],
                                f"ide:{ide['id']}"))
        self.kernel_picker.options = options

    @property
    def request_id(self) -> str:
        return self.request["id"]

    @property
    def actionable(self) -> bool:
        r = self.request
        return (r.get("direction") == "incoming" and r.get("state") == "pending"
                and countdown(r.get("expires_at")) != "expired")

    def text(self) -> str:
        return request_text(self.request, self.error)

    def update(self, request: dict[str, Any]) -> None:
        """Show newer data. A decision is final, so data still saying "pending" after the card
        saw a decision is stale (a refresh that started before a click) and is ignored."""
        with UI_LOCK:
            if self.request.get("state") != "pending" and request.get("state") == "pending":
                return
            if request != self.request:
                self.request = dict(request)
                if request.get("state") != "pending":
                    self.error = None
                self._render()

    def accept(self) -> dict[str, Any] | None:
        return self._decide(True)

    def reject(self) -> dict[str, Any] | None:
        return self._decide(False)

    def _decide(self, accept: bool) -> dict[str, Any] | None:
        with UI_LOCK:
            if self.busy or not self.actionable:
                return None
            self.busy, self.error = True, None
            self._render()
        result, error = None, None
        try:
            conn = self.connection or connect()
            rid = self.request_id
            choice = self.kernel_picker.value or ""
            ide = choice[4:] if choice.startswith("ide:") else None
            kernel = None if ide else (choice or None)
            result = conn.accept(rid, kernel=kernel, ide=ide) if accept else conn.reject(rid)
        except Exception as err:  # ClientError and anything else: shown on the card
            error = str(err) or type(err).__name__
        with UI_LOCK:
            self.busy = False
            if result is not None:
                self.request = dict(result)
            self.error = error
            self._render()
        return result

    def tick(self) -> None:
        with UI_LOCK:
            self._render()

    def _render(self) -> None:
        r = self.request
        incoming = r.get("direction") == "incoming"
        state = r.get("state")
        before, after = request_title(r)
        _set(self.title, "value", wrap(
            f"{html.escape(before)}<b>{esc(peer_name(r), NAME_LIMIT)}</b>{html.escape(after)}"))
        peer = r.get("peer") or {}
        renews = (" · <b>already paired</b>: accepting renews that pairing, its worker keeps "
                  "running") if incoming and r.get("already_paired") else ""
        _set(self.peer, "value",
             wrap(f"Device ID: <code>{esc(peer.get('id_display'), ID_LIMIT)}</code>{renews}"))
        _set(self.asks, "value", wrap("Asks: " + asks_html(r.get("asks"))))
        code = pretty_code(r.get("code"))
        where = "on the other device" if incoming else "that the other device's user sees"
        _set(self.code, "value",
             f'Verification code: <b style="font-family:monospace;font-size:1.3em">'
             f"{html.escape(code)}</b> (must match the code {where})" if code else "")
        _show(self.code, bool(code))
        expiry = countdown(r.get("expires_at")) if state == "pending" else ""
        _set(self.expiry, "value", expiry)
        _show(self.expiry, bool(expiry))
        _show(self.buttons, self.actionable or self.busy)
        _set(self.accept_button, "disabled", self.busy)
        _set(self.reject_button, "disabled", self.busy)
        if self.error:
            status = wrap(f'<span style="color:#b00">⚠ {esc(self.error)}</span>')
        elif self.busy:
            status = "<i>deciding…</i>"
        elif state == "pending":
            status = ("<i>compare the code with the other device, then accept or reject</i>"
                      if incoming else "<i>waiting for the other device's user to decide</i>")
            if expiry == "expired":
                status = "<i>expired</i>"
        else:
            status = f"<b>{html.escape(_OUTCOME.get(str(state), plain(state, 20)))}</b>"
        _set(self.status, "value", status)


# ---------------------------------------------------------------------------- inbox


class Inbox(_LiveView, widgets.VBox):
    """The open connection requests as cards, live: a request that arrives after the inbox is
    displayed appears within a second; decided ones keep their card, showing the outcome.

    `direction`: "incoming", "outgoing" or None (both); `show_all`: decided ones too; `ids`:
    only these requests, whatever their state (e.g. the one `invite` just sent). At most the
    `LIMIT` newest are shown."""

    LIMIT = 50

    def __init__(
        self, connection: Connection | None = None, *, direction: str | None = None,
        show_all: bool = False, ids: Iterable[str] | None = None, live: bool = True,
        title: str = "Connection requests",
    ) -> None:
        self.connection = connection or connect()
        self.direction = direction
        self.show_all = show_all
        self.ids = set(ids) if ids is not None else None
        self.cards: dict[str, RequestCard] = {}
        self._order: list[str] = []
        self.header = widgets.HTML(f"<b>{esc(title)}</b>")
        self.empty = widgets.Label("No open connection requests.")
        self.more = widgets.HTML()  # "N more" when over LIMIT
        self.notice = widgets.HTML()
        super().__init__(layout=widgets.Layout(margin="4px 0"))
        self.add_class("parallalx-inbox")
        self._start(live)

    @property
    def requests(self) -> list[dict[str, Any]]:
        with UI_LOCK:
            return [self.cards[rid].request for rid in self._order]

    def card(self, request_id: str) -> RequestCard:
        return self.cards[request_id]

    def text(self) -> str:
        with UI_LOCK:
            errors = {rid: card.error for rid, card in self.cards.items()}
        return requests_text(self.requests, errors)

    def _wanted(self, r: dict[str, Any]) -> bool:
        if self.ids is not None:
            return r["id"] in self.ids
        return (self.direction is None or r.get("direction") == self.direction) and (
            self.show_all or r.get("state") == "pending" or r["id"] in self.cards)

    def _render(self) -> None:
        chosen = [r for r in self._live.requests if self._wanted(r)]
        chosen.sort(key=lambda r: r.get("created_at") or 0, reverse=True)
        hidden = len(chosen) - self.LIMIT
        chosen = chosen[: self.LIMIT]
        _set(self.more, "value", (
            f"<i>{hidden} more not shown (the {self.LIMIT} newest are): "
            "<code>%parallalx requests</code> lists them all</i>") if hidden > 0 else "")
        for r in chosen:
            card = self.cards.get(r["id"])
            if card is None:
                self.cards[r["id"]] = RequestCard(r, self.connection)
            else:
                card.update(r)
        self._order = [r["id"] for r in chosen]
        _set(self.notice, "value", self._notice())
        cards = [self.cards[rid] for rid in self._order]
        children = (self.header, *(cards or [self.empty]),
                    *([self.more] if self.more.value else []), self.notice)
        if tuple(self.children) != children:
            self.children = children

    def _tick(self) -> None:
        for rid in self._order:
            card = self.cards[rid]
            if card.request.get("state") == "pending":
                card.tick()


# ---------------------------------------------------------------------------- device table


class _DeviceRow:
    def __init__(self, table: DeviceTable, device: dict[str, Any]) -> None:
        self.device: dict[str, Any] = {}
        self.name = widgets.HTML()
        self.id = widgets.HTML()
        self.role = widgets.Label()
        self.state = widgets.Label()
        self.granted = widgets.Label()
        self.worker = widgets.Label()
        self.revoke_button = widgets.Button(description="Revoke", icon="ban",
                                            tooltip="Stop sharing with this device")
        self.revoke_button.on_click(lambda _button: table.revoke(self.device["id"]))
        self.table = table
        self.update(device)

    @property
    def cells(self) -> list[widgets.Widget]:
        return [self.name, self.id, self.role, self.state, self.granted, self.worker,
                self.revoke_button]

    def update(self, device: dict[str, Any]) -> None:
        if (device.get("updated_at") or 0) < (self.device.get("updated_at") or 0):
            return  # stale: a refresh that started before this row's revoke
        self.device = device
        _set(self.granted, "value", granted_text(device))
        _set(self.worker, "value", worker_text(device, self.table.cluster))
        _set(self.name, "value", f"<b>{esc(device.get('name'), NAME_LIMIT)}</b>")
        full = esc(device.get("id_display") or device.get("id"), ID_LIMIT)
        _set(self.id, "value", f'<code title="{full}">{esc(short_id(device))}</code>')
        _set(self.role, "value", plain(device.get("role"), 20))
        _set(self.state, "value", plain(device.get("state"), 20))
        _set(self.revoke_button, "disabled",
             device.get("state") not in ("paired", "revoked_by_peer"))


class DeviceTable(_LiveView, widgets.VBox):
    """Paired devices: name, ID, role, state, granted resources, worker state and a Revoke
    button; live."""

    HEADER = ("Name", "Device ID", "Role", "State", "Granted", "Worker", "")

    def __init__(self, connection: Connection | None = None, *, live: bool = True) -> None:
        self.connection = connection or connect()
        self.rows: dict[str, _DeviceRow] = {}
        self.grid = widgets.GridBox(layout=widgets.Layout(
            grid_template_columns="minmax(6em, 2fr) minmax(9em, 2fr) 6em 9em 9em 8em 8em",
            grid_gap="2px 12px", align_items="center",
        ))
        self._header = [widgets.HTML(f"<b>{h}</b>") for h in self.HEADER]
        self.empty = widgets.Label("No paired devices.")
        self.status = widgets.HTML()
        self.message: str | None = None
        self.error: str | None = None
        super().__init__(layout=widgets.Layout(margin="4px 0"))
        self.add_class("parallalx-devices")
        self._start(live)

    @property
    def devices(self) -> list[dict[str, Any]]:
        with UI_LOCK:
            return [row.device for row in self.rows.values()]

    @property
    def cluster(self) -> dict[str, Any] | None:
        live = getattr(self, "_live", None)
        return live.cluster if live is not None else None

    def text(self) -> str:
        return devices_text(self.devices, self.cluster)

    def revoke(self, device_id: str) -> dict[str, Any] | None:
        row = self.rows.get(device_id)
        if row is not None:
            with UI_LOCK:
                _set(row.revoke_button, "disabled", True)
        result, error = None, None
        try:
            result = self.connection.revoke(device_id)
        except Exception as err:  # ClientError and anything else: shown in the table
            error = str(err) or type(err).__name__
        with UI_LOCK:
            self.error = error
            self.message = None if error else f"revoked {plain(result['name'], NAME_LIMIT)}"
            if result is not None and device_id in self.rows:
                self.rows[device_id].update({**self.rows[device_id].device, **result})
            elif row is not None:
                row.update(row.device)
            self._render()
        return result

    def _render(self) -> None:
        devices = self._live.devices
        for device in devices:
            row = self.rows.get(device["id"])
            if row is None:
                self.rows[device["id"]] = _DeviceRow(self, device)
            else:
                row.update(device)
        order = [d["id"] for d in devices]
        self.rows = {i: self.rows[i] for i in order}
        cells = tuple(self._header + [c for i in order for c in self.rows[i].cells])
        if tuple(self.grid.children) != cells:
            self.grid.children = cells
        if self.error:
            status = f'<span style="color:#b00">⚠ {esc(self.error)}</span>'
        elif self.message:
            status = html.escape(self.message)
        else:
            status = self._notice()
        _set(self.status, "value", status)
        children = (self.grid if order else self.empty, self.status)
        if tuple(self.children) != children:
            self.children = children


# ---------------------------------------------------------------------------- status, overview


def status_data(connection: Connection) -> dict[str, Any]:
    """What `%parallalx status` shows (no secrets: the token is not in it)."""
    info = connection.device()
    devices = connection.devices()
    requests = connection.requests(state="open")
    return {
        "device": info,
        "server": {"url": connection.url, "found_by": connection.found_by},
        "counts": {
            "paired": sum(d.get("state") == "paired" for d in devices),
            "incoming": sum(r.get("direction") == "incoming" for r in requests),
            "outgoing": sum(r.get("direction") == "outgoing" for r in requests),
        },
    }


class StatusView(_TextRepr, widgets.VBox):
    """This device: name, ID, peer URLs, resources, which server (a snapshot, not live)."""

    def __init__(self, status: dict[str, Any]) -> None:
        self.status = status
        info, server = status.get("device") or {}, status.get("server") or {}
        counts = status.get("counts") or {}
        urls = ", ".join(f"<code>{esc(u, 200)}</code>" for u in info.get("peer_urls") or [])
        rows = [
            ("This device", f"<b>{esc(info.get('name'), NAME_LIMIT)}</b>"),
            ("Device ID", f"<code>{esc(info.get('id_display'), ID_LIMIT)}</code>"),
            ("Peer URLs", urls or "-"),
            ("Resources", esc(resources_text(info.get("profile")))),
            ("Server", f"{esc(server.get('url'), 200)} (found by: "
                       f"{esc(server.get('found_by'), 40)})"),
            ("Paired", f"{int(counts.get('paired', 0))} device(s); open requests: "
                       f"{int(counts.get('incoming', 0))} incoming, "
                       f"{int(counts.get('outgoing', 0))} outgoing"),
        ]
        self.table = widgets.HTML(
            "<table>" + "".join(
                f'<tr><td style="padding-right:1em;color:#555">{k}</td><td>{v}</td></tr>'
                for k, v in rows) + "</table>"
        )
        super().__init__(children=[self.table])
        self.add_class("parallalx-status")

    def text(self) -> str:
        return status_text(self.status)


class Overview(_LiveView, widgets.VBox):
    """Bare `%parallalx`: this device, its peers and its open requests; live."""

    def __init__(self, connection: Connection | None = None, *, live: bool = True) -> None:
        self.connection = connection or connect()
        try:
            self.status_view = StatusView(status_data(self.connection))
            self.devices = DeviceTable(self.connection, live=live)
            self.inbox = Inbox(self.connection, live=live)
            self.footer = widgets.HTML()
            super().__init__(children=[
                widgets.HTML("<h4 style='margin:4px 0'>parallalx</h4>"), self.status_view,
                widgets.HTML("<b>Paired devices</b>"), self.devices, self.inbox, self.footer,
            ])
            self.add_class("parallalx-overview")
            self._start(live)
        except BaseException:
            # the server refused or vanished midway: a device table already built must stop
            # following the live state now, not whenever the half-built overview is collected
            self.close()
            raise

    def text(self) -> str:
        return "\n\n".join([self.status_view.text(), "Paired devices:\n" + self.devices.text(),
                            "Connection requests:\n" + self.inbox.text()])

    def _render(self) -> None:
        mode = {"websocket": "live (event stream)", "polling": "live (polling)",
                "connecting": "connecting…"}.get(self._live.mode, "not live")
        _set(self.footer, "value", f'<small style="color:#777">updates: {mode}</small>')

    _tick = _render

    def close(self) -> None:
        """Also runs on a half-built overview (a failed `__init__`, and `Widget.__del__` when it
        is collected), so only the parts that were made are closed."""
        for name in ("devices", "inbox"):
            child = getattr(self, name, None)
            if child is not None:
                child.close()
        super().close()
