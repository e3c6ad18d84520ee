"""The peer listener: a small HTTPS server that other devices talk to, separate from Jupyter.

It serves only the versioned pairing endpoints, under the device's own certificate, so the
Jupyter server (which can run code) never has to listen beyond localhost. Order of defences in
every request: rate limit (cheap, before reading the body) -> body size -> JSON and schema ->
clock skew and addressee -> key/ID binding and signature -> nonce replay -> protocol rules.
"""

from __future__ import annotations

import json
import logging
import ssl
import time
from collections import OrderedDict
from typing import Any

from tornado import web
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets

from .. import settings
from ..devices import DeviceManager
from ..errors import ParallalxError
from ..pairing import ProtocolError, parse_json
from .json_errors import JsonErrors

log = logging.getLogger("parallalx_jupyter.peer")

BODY_LIMIT = 64 * 1024
PEER_PREFIX = r"/parallalx/peer/v1"


class RateLimiter:
    """Token buckets per client address plus one global bucket; the per-address table is
    bounded so a spray of source addresses cannot grow memory without end."""

    def __init__(self, rate: float, burst: float, global_rate: float, max_clients: int = 4096):
        self.rate = rate
        self.burst = burst
        self.global_rate = global_rate
        self.max_clients = max_clients
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._global = (global_rate * 2, time.monotonic())

    def _take(self, state: tuple[float, float], rate: float, burst: float) -> tuple[bool, tuple]:
        tokens, last = state
        now = time.monotonic()
        tokens = min(burst, tokens + (now - last) * rate)
        if tokens < 1:
            return False, (tokens, now)
        return True, (tokens - 1, now)

    def allow(self, client: str) -> bool:
        state = self._buckets.pop(client, (self.burst, time.monotonic()))
        ok, state = self._take(state, self.rate, self.burst)
        self._buckets[client] = state
        while len(self._buckets) > self.max_clients:
            self._buckets.popitem(last=False)
        if not ok:
            return False
        ok, self._global = self._take(self._global, self.global_rate, self.global_rate * 2)
        return ok


class PeerHandler(JsonErrors, web.RequestHandler):
    """Base: JSON errors only, no server banner details, no tracebacks."""

    manager: DeviceManager
    limiter: RateLimiter

    def initialize(self, manager: DeviceManager, limiter: RateLimiter) -> None:
        self.manager = manager
        self.limiter = limiter
        self._chunks: list[bytes] = []
        self._size = 0
        self._too_large = False

    def set_default_headers(self) -> None:
        self.clear_header("Server")
        self.set_header("Content-Type", "application/json")
        self.set_header("Cache-Control", "no-store")
        self.set_header("X-Content-Type-Options", "nosniff")

    def prepare(self) -> None:
        if not self.limiter.allow(self.request.remote_ip or "?"):
            raise web.HTTPError(429, reason="Too Many Requests")
        length = self.request.headers.get("Content-Length")
        if length is not None:
            try:
                too_big = int(length) > BODY_LIMIT
            except ValueError:
                raise web.HTTPError(400, reason="Bad Content-Length") from None
            # Refused once the body is read (``data_received`` keeps none of it): answering
            # now would close the connection while the sender is still writing, and it
            # would see a broken connection instead of the 413 (tornado's max_body_size
            # still cuts off anything beyond four times the limit).
            self._too_large = self._too_large or too_big

    def data_received(self, chunk: bytes) -> None:
        self._size += len(chunk)
        if self._size > BODY_LIMIT:
            self._too_large = True
            self._chunks = []
        elif not self._too_large:
            self._chunks.append(chunk)

    def body(self) -> Any:
        if self._too_large:
            raise web.HTTPError(413, reason="Payload Too Large")
        return parse_json(b"".join(self._chunks))

    internal_error = "internal error"  # a peer learns nothing about this server's log

    def refused(self, err: ParallalxError) -> None:
        if err.status == 401:
            log.info("refused peer message from %s: %s", self.request.remote_ip, err.message)

    def reply(self, body: dict[str, Any], status: int = 200) -> None:
        self.set_status(status)
        self.finish(json.dumps(body))


@web.stream_request_body
class HelloHandler(PeerHandler):
    async def get(self) -> None:
        self.reply(self.manager.hello())


@web.stream_request_body
class RequestsHandler(PeerHandler):
    async def post(self) -> None:
        opened = self.manager.open(self.body(), "request.open")
        await self.manager.check_nonce(opened)
        result = await self.manager.handle_open(opened, self.request.remote_ip or "?")
        self.reply(self.manager.respond(opened, result), 201)


@web.stream_request_body
class RevealHandler(PeerHandler):
    async def post(self, request_id: str) -> None:
        opened = self.manager.open(self.body(), "request.reveal")
        if opened.body["request_id"] != request_id:
            raise ProtocolError(400, "request ID in the path and the body differ")
        await self.manager.check_nonce(opened)
        self.reply(self.manager.respond(opened, await self.manager.handle_reveal(opened)))


@web.stream_request_body
class StatusHandler(PeerHandler):
    async def post(self, request_id: str) -> None:
        opened = self.manager.open(self.body(), "request.status")
        if opened.body["request_id"] != request_id:
            raise ProtocolError(400, "request ID in the path and the body differ")
        await self.manager.check_nonce(opened)
        self.reply(self.manager.respond(opened, await self.manager.handle_status(opened)))


@web.stream_request_body
class NotifyHandler(PeerHandler):
    async def post(self) -> None:
        opened = self.manager.open(self.body(), ("request.decided", "device.revoked"))
        await self.manager.check_nonce(opened)
        self.reply(self.manager.respond(opened, await self.manager.handle_notify(opened)))


@web.stream_request_body
class JoinHandler(PeerHandler):
    async def post(self) -> None:
        opened = self.manager.open(self.body(), "cluster.join")
        await self.manager.check_nonce(opened)
        self.reply(self.manager.respond(opened, await self.manager.handle_join(opened)))


@web.stream_request_body
class NotFoundHandler(PeerHandler):
    def prepare(self) -> None:
        super().prepare()
        raise web.HTTPError(404, reason="Not Found")


class PeerListener:
    """Owns the listener's sockets and server so that stop() leaves nothing bound."""

    def __init__(
        self,
        manager: DeviceManager,
        ip: str,
        port: int,
        certfile: str,
        keyfile: str,
        rate: float = settings.default("peer_rate"),
        burst: float = settings.default("peer_burst"),
        global_rate: float = settings.default("peer_global_rate"),
    ) -> None:
        self.limiter = RateLimiter(rate, burst, global_rate)
        kwargs = {"manager": manager, "limiter": self.limiter}
        rid = r"([A-Za-z0-9_\-]{1,64})"
        self.app = web.Application(
            [
                (PEER_PREFIX + r"/hello", HelloHandler, kwargs),
                (PEER_PREFIX + r"/requests", RequestsHandler, kwargs),
                (PEER_PREFIX + rf"/requests/{rid}/reveal", RevealHandler, kwargs),
                (PEER_PREFIX + rf"/requests/{rid}/status", StatusHandler, kwargs),
                (PEER_PREFIX + r"/notify", NotifyHandler, kwargs),
                (PEER_PREFIX + r"/cluster/join", JoinHandler, kwargs),
                (r".*", NotFoundHandler, kwargs),
            ],
            default_handler_class=NotFoundHandler,
            default_handler_args=kwargs,
            xheaders=False,
            compress_response=False,
        )
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(certfile, keyfile)
        self.server = HTTPServer(
            self.app,
            ssl_options=context,
            max_body_size=4 * BODY_LIMIT,
            max_header_size=16 * 1024,
            idle_connection_timeout=30,
            body_timeout=15,
        )
        self.sockets = bind_sockets(port, address=ip, reuse_port=False)
        self.port = self.sockets[0].getsockname()[1]
        self.ip = ip

    def start(self) -> None:
        self.server.add_sockets(self.sockets)

    async def stop(self) -> None:
        self.server.stop()
        for sock in self.sockets:
            sock.close()
        try:
            await self.server.close_all_connections()
        except Exception:  # a connection already gone is fine here
            log.debug("closing peer connections", exc_info=True)
