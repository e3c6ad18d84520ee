"""The peer client reads a peer's answer as untrusted input: a real HTTPS server answers
garbage, and every answer is one clear PeerError, never a RecursionError or a 500 upstream."""

from __future__ import annotations

import asyncio
import ssl

import pytest
import tornado.httpserver
import tornado.web

from parallalx_jupyter.identity import DeviceIdentity
from parallalx_jupyter.local_device import free_port
from parallalx_jupyter.peer_client import PeerClient, PeerError

ANSWERS = {
    "deep": b"[" * 100_000 + b"]" * 100_000,
    "nan": b'{"state": NaN}',
    "huge-int": b'{"n": ' + b"9" * 5000 + b"}",
    "not-utf8": b'{"x": "\xff"}',
    "not-json": b"<html>hello</html>",
}


class _Answer(tornado.web.RequestHandler):
    def initialize(self, status: int) -> None:
        self.status = status

    def get(self, which: str) -> None:
        self.set_status(self.status)
        self.write(ANSWERS[which])


@pytest.fixture
async def hostile_peer(tmp_path):
    ident = DeviceIdentity.load_or_create(tmp_path / "peer")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(ident.cert_path, ident.key_path)
    app = tornado.web.Application(
        [
            (r"/parallalx/peer/v1/ok/(\w[\w-]*)", _Answer, {"status": 200}),
            (r"/parallalx/peer/v1/bad/(\w[\w-]*)", _Answer, {"status": 400}),
        ]
    )
    port = free_port()
    server = tornado.httpserver.HTTPServer(app, ssl_options=ctx)
    server.listen(port, "127.0.0.1")
    try:
        yield f"https://127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.mark.parametrize("which", sorted(ANSWERS))
@pytest.mark.parametrize("status", ["ok", "bad"])
async def test_a_peers_garbage_answer_is_one_clear_error(hostile_peer, which, status):
    client = PeerClient(timeout=10)
    try:
        with pytest.raises(PeerError) as err:
            await client.call(hostile_peer, f"/{status}/{which}")
        assert hostile_peer in str(err.value)
    finally:
        client.close()


class _Status(tornado.web.RequestHandler):
    async def post(self, status: str) -> None:
        if status == "0":  # no answer in time
            await asyncio.sleep(3)
        self.set_status(int(status) or 200)
        self.write({"error": "as asked"})


@pytest.fixture
async def status_peer(tmp_path):
    """Answers POST /parallalx/peer/v1/status/<code> with that HTTP status (0: not in time)."""
    ident = DeviceIdentity.load_or_create(tmp_path / "peer")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(ident.cert_path, ident.key_path)
    app = tornado.web.Application([(r"/parallalx/peer/v1/status/(\d+)", _Status)])
    port = free_port()
    server = tornado.httpserver.HTTPServer(app, ssl_options=ctx)
    server.listen(port, "127.0.0.1")
    try:
        yield f"https://127.0.0.1:{port}"
    finally:
        server.stop()


async def test_only_no_answer_or_not_ready_is_worth_asking_again(status_peer):
    """A worker device asks its main device again (cluster.join) only when asking again can
    help: no answer in time, no listener, or 503; a refusal would only be repeated."""
    client = PeerClient(timeout=1)
    try:
        for status, retryable in ((403, False), (400, False), (409, False), (503, True),
                                  (0, True)):
            with pytest.raises(PeerError) as err:
                await client.call(status_peer, f"/status/{status}", {})
            assert err.value.retryable is retryable, status
            # what our API answers: a peer's conflict stays a conflict (two invitations raced)
            assert err.value.status == (409 if status == 409 else 502), status
        with pytest.raises(PeerError) as err:
            await client.call(f"https://127.0.0.1:{free_port()}", "/hello")
        assert err.value.retryable and "could not reach" in err.value.message
    finally:
        client.close()
