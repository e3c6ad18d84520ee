"""Outbound calls to other devices' peer listeners.

The peer listener's certificate is self-signed, so TLS here gives confidentiality only; who is
on the other end is established by the signed envelopes (the key hashes to the device ID) and,
for a first contact, by both users comparing the verification code. That is why certificate
validation is off: a CA could not vouch for a laptop's self-made key anyway.
"""

from __future__ import annotations

import ipaddress
import json
import re
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest

from . import settings
from .errors import ParallalxError
from .pairing import ProtocolError, parse_json

PEER_PREFIX = "/parallalx/peer/v1"
MAX_RESPONSE_BYTES = 256 * 1024
_HOST_NAME = re.compile(r"[\w.-]+")


class PeerError(ParallalxError):
    """A peer could not be reached or refused; `status` is what our own API should answer.

    `retryable`: the peer gave no answer in time, could not be reached, or said it is not ready
    (503), so the same call may succeed later; any other refusal would only be repeated."""

    def __init__(self, message: str, status: int = 502, retryable: bool = False) -> None:
        super().__init__(message, status)
        self.retryable = retryable


def normalise_peer_url(url: str) -> str:
    """`host:port`, `https://host:port/` and `https://host:port/anything` all mean the listener
    root; anything that is not https with a host is refused before we connect anywhere."""
    text = url.strip()
    if "://" not in text:
        text = "https://" + text
    try:
        parts = urlsplit(text)
    except ValueError as err:  # an unclosed or non-IP [...] host
        raise PeerError(f"invalid peer URL: {err}", 400) from None
    if parts.scheme != "https":
        raise PeerError("peer URL must use https:// (the peer listener only speaks TLS)", 400)
    if not parts.hostname:
        raise PeerError("peer URL has no host", 400)
    if not _valid_host(parts.hostname):
        raise PeerError(f"invalid peer URL: {parts.hostname!r} is not a host name or address",
                        400)
    try:
        port = parts.port
    except ValueError:
        raise PeerError("peer URL has an invalid port", 400) from None
    if port == 0:  # would otherwise read as "no port" and quietly become the default
        raise PeerError("peer URL has an invalid port", 400)
    host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
    port = settings.default("peer_port") if port is None else port
    return urlunsplit(("https", f"{host}:{port}", "", "", ""))


def _valid_host(host: str) -> bool:
    """A name with spaces or punctuation would only fail later, as a 502 after a DNS lookup."""
    if ":" in host:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            return False
        return True
    return _HOST_NAME.fullmatch(host) is not None

class PeerClient:
    """Small JSON-over-HTTPS client with bounded time and response size."""

    def __init__(self, timeout: float = 10.0) -> None:
        self._http = AsyncHTTPClient(force_instance=True, max_body_size=MAX_RESPONSE_BYTES)
        self.timeout = timeout

    async def call(self, base_url: str, path: str, body: dict[str, Any] | None = None) -> Any:
        url = base_url.rstrip("/") + PEER_PREFIX + path
        request = HTTPRequest(
            url,
            method="GET" if body is None else "POST",
            body=None if body is None else json.dumps(body),
            headers={"Content-Type": "application/json"},
            validate_cert=False,
            connect_timeout=self.timeout,
            request_timeout=self.timeout,
            follow_redirects=False,
        )
        try:
            response = await self._http.fetch(request)
        except HTTPClientError as err:
            message = err.message or str(err)
            if err.response is not None and err.response.body:
                try:
                    message = parse_json(err.response.body).get("error", message)
                except (ProtocolError, AttributeError):
                    pass
            # a conflict (two requests raced: 'superseded') or a rate limit is the caller's to
            # act on, as it is: not a 502, which says the peer could not be reached
            status = err.code if err.code in (409, 429) else 502
            raise PeerError(f"peer at {base_url} refused ({err.code}): {message}", status,
                            retryable=err.code in (503, 599)) from None  # 599: no answer
        except (OSError, TimeoutError) as err:
            raise PeerError(f"could not reach peer at {base_url}: {err}", retryable=True) from None
        try:
            return parse_json(response.body)  # a peer's answer is as untrusted as a request
        except ProtocolError as e:
            raise PeerError(f"peer at {base_url} sent an unusable response: {e}") from None

    def close(self) -> None:
        self._http.close()
