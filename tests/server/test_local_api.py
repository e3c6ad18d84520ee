"""The local REST API on a real in-process Jupyter server (pytest-jupyter), with a second device
as a `jupyter server` subprocess wherever a peer has to send this device a request.

Auth is on (`allow_unauthenticated_access=False`); `jp_fetch` sends the server token.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
from http.cookies import SimpleCookie
from typing import Any

import pytest
from jupyter_server.auth import Authorizer
from jupyter_server.base.handlers import APIHandler
from tornado.routing import PathMatches, Router
from tornado.web import RequestHandler

from parallalx_jupyter.server.handlers import ParallalxHandler, route_table

API = ("parallalx", "api")
BROWSER_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def parallalx_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("parallalx-store")]


def _json(response: Any) -> Any:
    assert response.headers["Content-Type"].startswith("application/json")
    return json.loads(response.body)


def _assert_error(response: Any, status: int, contains: str = "") -> str:
    assert response.code == status, (response.code, response.body)
    body = _json(response)
    assert set(body) == {"error"} and isinstance(body["error"], str) and body["error"]
    assert "Traceback" not in body["error"] and 'File "' not in body["error"]
    assert contains.lower() in body["error"].lower(), body["error"]
    return body["error"]


async def fetch(jp_fetch: Any, *path: str, method: str = "GET", body: Any = None, **kw: Any):
    """jp_fetch under /parallalx/api that returns error responses instead of raising."""
    if method == "POST" and body is None:
        body = b"{}"
    elif body is not None and not isinstance(body, bytes | str):
        body = json.dumps(body)
    return await jp_fetch(*API, *path, method=method, body=body, raise_error=False, **kw)


def _parallalx_rules(router: Any) -> list[tuple[str, type]]:
    """Every (pattern, handler class) under /parallalx/api in the live tornado app."""
    found = []
    for rule in getattr(router, "rules", []):
        if isinstance(rule.target, Router):
            found += _parallalx_rules(rule.target)
        elif isinstance(rule.matcher, PathMatches) and "/parallalx/api" in (
            rule.matcher.regex.pattern
        ):
            found.append((rule.matcher.regex.pattern, rule.target))
    return found


def _sample_url(pattern: str) -> str:
    """A path the route pattern matches: the first literal of an alternation, else `abc`."""

    def one(group: re.Match[str]) -> str:
        inner = group.group(1)
        if re.fullmatch(r"[\w-]+(\|[\w-]+)*", inner):
            return inner.split("|")[0]
        return "abc"

    return re.sub(r"\(([^)]*)\)", one, pattern).rstrip("$")


def _implemented(cls: type) -> list[str]:
    return [
        m for m in cls.SUPPORTED_METHODS
        if m in BROWSER_METHODS
        and getattr(cls, m.lower(), None) is not getattr(RequestHandler, m.lower(), None)
    ]


# --------------------------------------------------------------------------- authentication


async def test_every_route_and_method_refuses_unauthenticated(
    jp_serverapp: Any, http_server_client: Any
) -> None:
    rules = _parallalx_rules(jp_serverapp.web_app.default_router)
    # every documented route plus the JSON 404 catch-all
    assert len(rules) == len(route_table()) + 1 >= 11
    checked = 0
    for pattern, cls in rules:
        assert issubclass(cls, ParallalxHandler), pattern
        url = _sample_url(pattern)
        assert re.fullmatch(pattern, url), (pattern, url)
        methods = _implemented(cls)
        assert set(methods) - {"OPTIONS"}, f"{cls.__name__} implements no method"
        for method in methods:
            if method == "OPTIONS":
                # CORS preflight inherited from jupyter_server (@allow_unauthenticated by
                # design): it must stay the stock one and answer nothing but headers.
                assert cls.options is APIHandler.options, f"{cls.__name__} overrides OPTIONS"
                r = await http_server_client.fetch(url, method="OPTIONS", raise_error=False)
                assert r.code in (200, 204) and not r.body, (url, r.code, r.body)
                continue
            for headers in ({}, {"Authorization": "token not-the-token"}):
                r = await http_server_client.fetch(
                    url, method=method, headers=headers, raise_error=False,
                    body=b'{"url": "https://127.0.0.1:1"}' if method in ("POST", "PUT", "PATCH")
                    else None,
                    allow_nonstandard_methods=True, follow_redirects=False,
                )
                assert r.code == 403, (method, url, headers, r.code, r.body)
                _assert_error(r, 403)
                checked += 1
    assert checked >= 2 * len(route_table())


async def test_cookie_auth_post_without_xsrf_is_refused(
    jp_fetch: Any, http_server_client: Any, jp_base_url: str
) -> None:
    # log in with the token: the server answers with its login cookie
    r = await fetch(jp_fetch, "device")
    assert r.code == 200
    cookies = SimpleCookie()
    for header in r.headers.get_list("Set-Cookie"):
        cookies.load(header)
    login = {k: v.value for k, v in cookies.items() if k.startswith("username-")}
    assert login, r.headers.get_list("Set-Cookie")
    cookie_header = "; ".join(f"{k}={v}" for k, v in login.items())
    base = f"{jp_base_url}parallalx/api"

    # the cookie alone authenticates a GET ...
    r = await http_server_client.fetch(
        f"{base}/device", headers={"Cookie": cookie_header}, raise_error=False
    )
    assert r.code == 200, r.body
    # ... but a POST with the cookie and no _xsrf is refused before the handler runs
    for path in ("requests/abc/reject", "requests/abc/accept", "devices/abc/revoke",
                 "invitations"):
        r = await http_server_client.fetch(
            f"{base}/{path}", method="POST", body=b"{}", headers={"Cookie": cookie_header},
            raise_error=False,
        )
        _assert_error(r, 403, "xsrf")

    # control: with the _xsrf cookie and header the same POST reaches the handler (404)
    r = await http_server_client.fetch(f"{jp_base_url}login", raise_error=False,
                                       follow_redirects=False)
    cookies = SimpleCookie()
    for header in r.headers.get_list("Set-Cookie"):
        cookies.load(header)
    xsrf = cookies["_xsrf"].value
    r = await http_server_client.fetch(
        f"{base}/requests/abc/reject", method="POST", body=b"{}", raise_error=False,
        headers={"Cookie": f"{cookie_header}; _xsrf={xsrf}", "X-XSRFToken": xsrf},
    )
    _assert_error(r, 404, "no request")


class DenyParallalx(Authorizer):
    """Allows everything except the parallalx resource."""

    def is_authorized(self, handler: Any, user: Any, action: str, resource: str) -> bool:
        return resource != "parallalx"


@pytest.mark.parametrize(
    "server_overrides", [{"ServerApp": {"authorizer_class": DenyParallalx}}]
)
async def test_authorizer_denying_parallalx_gives_403(jp_fetch: Any) -> None:
    assert (await jp_fetch("api", "status", raise_error=False)).code == 200
    for method, path in (
        ("GET", ("device",)), ("GET", ("requests",)), ("GET", ("devices",)),
        ("GET", ("openapi.json",)), ("POST", ("requests", "abc", "accept")),
        ("POST", ("devices", "abc", "revoke")), ("POST", ("invitations",)),
    ):
        r = await fetch(jp_fetch, *path, method=method)
        _assert_error(r, 403, "parallalx")


def test_cleanup_stops_the_extension(jp_serverapp: Any, jp_asyncio_loop: Any) -> None:
    """pytest-jupyter's teardown runs ServerApp._cleanup(); that must run stop_extension and
    leave no store thread and no peer listener. (The conftest re-checks after every test's
    real teardown.)"""
    app = jp_serverapp.web_app.settings["parallalx_app"]
    assert parallalx_threads(), "the store thread should run while the server does"
    listener = app.listener
    jp_asyncio_loop.run_until_complete(jp_serverapp._cleanup())
    assert parallalx_threads() == []
    assert app.store is None
    assert all(sock.fileno() == -1 for sock in listener.sockets)


# --------------------------------------------------------------------------- decisions


async def _incoming(jp_fetch: Any, call_sender: Any, peer_url: str, **body: Any) -> dict:
    """Have the sender device request pairing with this one; the request as seen here.

    An `offer` by default: once accepted, this device is the main one and only has to sign
    the sender's certificate (a scheduler), instead of starting a worker process here."""
    body.setdefault("kind", "offer")
    sent = await call_sender("POST", "invitations", {"url": peer_url, **body})
    r = await fetch(jp_fetch, "requests", sent["id"])
    assert r.code == 200, r.body
    got = _json(r)
    assert got["state"] == "pending" and got["direction"] == "incoming"
    assert got["code"] == sent["code"]
    return got


async def test_unknown_ids_are_404(jp_fetch: Any) -> None:
    for method, path, what in (
        ("GET", ("requests", "nope"), "no request"),
        ("POST", ("requests", "nope", "accept"), "no request"),
        ("POST", ("requests", "nope", "reject"), "no request"),
        ("GET", ("devices", "nope"), "no paired device"),
        ("POST", ("devices", "nope", "revoke"), "no paired device"),
    ):
        _assert_error(await fetch(jp_fetch, *path, method=method), 404, what)
    # the request is looked up before the kernel it would run in
    r = await fetch(jp_fetch, "requests", "nope", "accept", method="POST", body={"kernel": "nope"})
    _assert_error(r, 404, "no request")


async def test_the_users_note_is_kept_with_the_decision(
    jp_fetch: Any, call_sender: Any, peer_url: str
) -> None:
    """`parallalx reject --reason` and accept's `note`: for this device's records."""
    for action, body in (("reject", {"reason": "no thanks"}), ("accept", {"note": "lab PC"})):
        req = await _incoming(jp_fetch, call_sender, peer_url)
        assert req["reason"] is None
        r = await fetch(jp_fetch, "requests", req["id"], action, method="POST", body=body)
        assert r.code == 200, r.body
        note = next(iter(body.values()))
        assert _json(r)["reason"] == note
        assert _json(await fetch(jp_fetch, "requests", req["id"]))["reason"] == note
    r = await fetch(jp_fetch, "requests", params={"state": "all"})
    assert sorted(x["reason"] for x in _json(r)) == ["lab PC", "no thanks"]


async def test_decided_request_is_409(jp_fetch: Any, call_sender: Any, peer_url: str) -> None:
    req = await _incoming(jp_fetch, call_sender, peer_url, asks={"purpose": "test", "gpus": 0})
    r = await fetch(jp_fetch, "requests", req["id"], "accept", method="POST",
                    body={"kernel": "python3"})
    assert r.code == 200 and _json(r)["state"] == "accepted"
    for action in ("accept", "reject"):
        r = await fetch(jp_fetch, "requests", req["id"], action, method="POST")
        _assert_error(r, 409, "already accepted")
    devices = _json(await fetch(jp_fetch, "devices"))
    assert len(devices) == 1 and devices[0]["grant"]["selection"]["kernel"] == "python3"
    device_id = devices[0]["id"]
    assert (await fetch(jp_fetch, "devices", device_id, "revoke", method="POST")).code == 200
    r = await fetch(jp_fetch, "devices", device_id, "revoke", method="POST")
    _assert_error(r, 409, "already revoked")


async def test_only_the_receiver_decides(jp_fetch: Any, sender: Any) -> None:
    r = await fetch(jp_fetch, "invitations", method="POST", body={"url": sender.peer_url})
    assert r.code == 201, r.body
    out = _json(r)
    assert out["direction"] == "outgoing" and out["state"] == "pending"
    r = await fetch(jp_fetch, "requests", out["id"], "accept", method="POST")
    _assert_error(r, 409, "only the receiving device")


@pytest.mark.parametrize("server_overrides", [{"ParallalxApp": {"request_ttl": 1.5}}])
async def test_expired_request_cannot_be_decided(
    jp_fetch: Any, call_sender: Any, peer_url: str
) -> None:
    req = await _incoming(jp_fetch, call_sender, peer_url)
    await asyncio.sleep(max(0.0, req["expires_at"] - time.time()) + 0.3)
    for action in ("accept", "reject"):
        r = await fetch(jp_fetch, "requests", req["id"], action, method="POST")
        _assert_error(r, 409, "already expired")
    assert _json(await fetch(jp_fetch, "requests", req["id"]))["state"] == "expired"
    assert _json(await fetch(jp_fetch, "devices")) == []


async def test_concurrent_accept_and_reject_end_in_one_decision(
    jp_fetch: Any, call_sender: Any, peer_url: str
) -> None:
    for first in ("accept", "reject", "accept"):
        req = await _incoming(jp_fetch, call_sender, peer_url)
        second = "reject" if first == "accept" else "accept"
        ra, rb = await asyncio.gather(
            fetch(jp_fetch, "requests", req["id"], first, method="POST"),
            fetch(jp_fetch, "requests", req["id"], second, method="POST"),
        )
        assert sorted([ra.code, rb.code]) == [200, 409], (ra.body, rb.body)
        winner, loser = (ra, rb) if ra.code == 200 else (rb, ra)
        decided = _json(winner)["state"]
        assert decided in ("accepted", "rejected")
        _assert_error(loser, 409, f"already {decided}")
        stored = _json(await fetch(jp_fetch, "requests", req["id"]))
        assert stored["state"] == decided and stored["decided_at"] is not None
        devices = _json(await fetch(jp_fetch, "devices"))
        paired = [d for d in devices if d["request_id"] == req["id"]]
        assert len(paired) == (1 if decided == "accepted" else 0)


# --------------------------------------------------------------------------- bad input


BAD_BODIES = [
    ("requests/abc/accept", b'{"kernel": ', "not valid JSON"),
    ("requests/abc/accept", b"\xff\xfe{}", "not valid JSON"),
    ("requests/abc/accept", b"[" * 50_000, "not valid JSON"),
    ("requests/abc/accept", b"[]", "must be a JSON object"),
    ("requests/abc/accept", b'"python3"', "must be a JSON object"),
    ("requests/abc/accept", b'{"kernel": 5}', "kernel"),
    ("requests/abc/accept", b'{"kernel": "x", "root": true}', "unexpected field"),
    ("requests/abc/reject", b'{"reason": ["no"]}', "reason"),
    ("requests/abc/reject", b'{"why": "no"}', "unexpected field"),
    ("devices/abc/revoke", b'{"force": true}', "unexpected field"),
    ("invitations", b"{}", "missing field 'url'"),
    ("invitations", b'{"url": 8476}', "url"),
    ("invitations", b'{"url": ""}', "url"),
    ("invitations", b'{"url": "https://127.0.0.1:1", "kind": "steal"}', "kind"),
    ("invitations", b'{"url": "https://127.0.0.1:1", "asks": []}', "asks"),
    ("invitations", b'{"url": "https://127.0.0.1:1", "asks": {"nthreads": 0}}', "nthreads"),
    ("invitations", b'{"url": "https://127.0.0.1:1", "asks": {"root": 1}}', "unexpected field"),
    ("invitations", b'{"url": "https://127.0.0.1:1", "token": "x"}', "unexpected field"),
]


@pytest.mark.parametrize(
    "path,body,message", BAD_BODIES, ids=[f"{p}-{i}" for i, (p, _, _) in enumerate(BAD_BODIES)]
)
async def test_bad_bodies_are_400_json(jp_fetch: Any, path: str, body: bytes, message: str):
    r = await fetch(jp_fetch, *path.split("/"), method="POST", body=body)
    _assert_error(r, 400, message)


@pytest.mark.parametrize("query", [{"direction": "sideways"}, {"state": "handshake"}])
async def test_bad_query_values_are_400(jp_fetch: Any, query: dict[str, str]) -> None:
    _assert_error(await fetch(jp_fetch, "requests", params=query), 400, "must be one of")


# --------------------------------------------------------------------------- invitations


async def test_invitation_to_unreachable_peer_is_quick_502(
    jp_fetch: Any, closed_port: int
) -> None:
    start = time.monotonic()
    r = await fetch(jp_fetch, "invitations", method="POST",
                    body={"url": f"https://127.0.0.1:{closed_port}"})
    _assert_error(r, 502, "could not reach")
    assert time.monotonic() - start < 5
    assert _json(await fetch(jp_fetch, "requests", params={"state": "all"})) == []


@pytest.mark.parametrize("url", ["http://127.0.0.1:{port}", "ftp://127.0.0.1:{port}"])
async def test_invitation_to_non_https_url_is_400(
    jp_fetch: Any, closed_port: int, url: str
) -> None:
    r = await fetch(jp_fetch, "invitations", method="POST",
                    body={"url": url.format(port=closed_port)})
    _assert_error(r, 400, "https")


@pytest.mark.parametrize("url,message", [
    ("https://[::1", "invalid peer url"),
    ("[::1", "invalid peer url"),
    ("https://[abc]:1", "invalid peer url"),
    ("not a url", "invalid peer url"),
    ("https://127.0.0.1:0", "invalid port"),
    ("https://127.0.0.1:99999", "invalid port"),
])
async def test_invitation_to_malformed_url_is_400(jp_fetch: Any, url: str, message: str) -> None:
    """Refused before any connection: not a 500 from urlsplit, not a 502 from a DNS lookup, and
    port 0 is not quietly read as the default port."""
    r = await fetch(jp_fetch, "invitations", method="POST", body={"url": url})
    _assert_error(r, 400, message)


@pytest.mark.parametrize(("requirements", "message"), [
    (["--index-url=https://example.invalid"], "invalid requirement"),
    (["torch==1.0"], "conflicts with the main device's torch=="),
    (["numpy==1.0", "numpy==2.0"], "cannot both hold"),
])
async def test_invitation_asking_for_requirements_no_device_could_install_is_400(
        jp_fetch: Any, peer_url: str, requirements: list[str], message: str) -> None:
    """QA: accepted (201) and sent to the peer as pending, where `environment/check` refuses
    the same list: the install would only have failed on the peer after its user accepted."""
    r = await fetch(jp_fetch, "invitations", method="POST",
                    body={"url": peer_url, "asks": {"requirements": requirements}})
    _assert_error(r, 400, message)


async def test_invitation_to_own_listener_is_400(jp_fetch: Any, peer_url: str) -> None:
    r = await fetch(jp_fetch, "invitations", method="POST", body={"url": peer_url})
    _assert_error(r, 400, "own peer listener")


async def test_openapi_document_is_served(jp_fetch: Any) -> None:
    doc = _json(await fetch(jp_fetch, "openapi.json"))
    assert doc["openapi"].startswith("3.") and "/invitations" in doc["paths"]


_JOB = {"id": "hostile", "workload": "w", "name": "n",
        "owner": {"kind": "cli", "pid": 1, "host": "h"}}
HOSTILE_JSON = [
    # each got past the field checks and failed later as a 500 (SQLite cannot encode a lone
    # surrogate; float() of a 4000-digit integer overflows), or was refused only by luck
    ("invitations", b'{"url": "https://\\ud800:1"}', "not valid Unicode"),
    ("jobs", json.dumps({**_JOB, "id": "s1", "name": "\ud800"}).encode(), "not valid Unicode"),
    ("jobs/hostile/progress", b'{"error": "\\udfff"}', "not valid Unicode"),
    ("jobs/hostile/progress", b'{"loss": [' + b"9" * 4000 + b"]}", "too long"),
    ("jobs/hostile/progress", b'{"progress": {"step": ' + b"9" * 5000 + b"}}", "too long"),
    ("jobs/hostile/progress", b'{"progress": {"loss": NaN}}', "NaN"),
    ("jobs/hostile/progress", b'{"loss": [1e400]}', "out of range"),
    ("jobs/hostile/progress", b'{"progress": {"eta_s": -Infinity}}', "Infinity"),
    ("requests/abc/accept", b'{"kernel": ' + b"1" * 5000 + b"}", "too long"),
    ("workloads/abc/run", b'{"params": ' + b'{"a": ' * 65 + b"1" + b"}" * 66, "nested too deeply"),
    ("workloads/abc/run", b'{"params": {"x": "\\ud800"}}', "not valid Unicode"),
]


@pytest.mark.parametrize("path,body,message", HOSTILE_JSON,
                         ids=[f"{p}-{i}" for i, (p, _, _) in enumerate(HOSTILE_JSON)])
async def test_hostile_json_is_400_never_500(jp_fetch: Any, path: str, body: bytes,
                                             message: str) -> None:
    """The local API parses bodies like the peer listener: strictly, every refusal a 400."""
    r = await fetch(jp_fetch, "jobs", method="POST", body=_JOB)
    assert r.code == 201, r.body
    r = await fetch(jp_fetch, *path.split("/"), method="POST", body=body)
    _assert_error(r, 400, message)
