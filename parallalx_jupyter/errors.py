"""The one base of the errors parallalx raises on purpose.

Each carries a message meant for the user and the HTTP status an API answers it with, so the
REST handlers (``server/handlers.py``) and the peer listener (``server/peer.py``) turn any of
them into ``{"error": message}`` with that status in one place, and code between the place an
error happens and the handler never translates one error into another just to change its
status.
"""

from __future__ import annotations


class ParallalxError(Exception):
    """An error for the user: ``message`` says what went wrong, ``status`` how an API says it."""

    status: int = 400

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status


__all__ = ["ParallalxError"]
