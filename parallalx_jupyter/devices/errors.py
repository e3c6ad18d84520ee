"""The error the device pieces raise for the local REST API."""

from __future__ import annotations

from ..errors import ParallalxError


class ApiError(ParallalxError):
    """An error for the local API: HTTP status plus a message for the user."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message, status)
