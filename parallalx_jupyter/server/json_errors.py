"""Errors as `{"error": message}` JSON for every parallalx handler: the REST API and the
dashboard proxy answer a refusal the same way, never with tornado's HTML page or a traceback."""

from __future__ import annotations

import json
from typing import Any

from tornado import web

from ..errors import ParallalxError


class JsonErrors:
    """Mix in before the tornado handler class."""

    _reason: str
    #: what a 500 says (no details: the log has them)
    internal_error = "internal server error (see the Jupyter server log)"

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, ParallalxError):
            message = exc.message
        elif isinstance(exc, web.HTTPError) and status_code < 500:
            message = exc.log_message or exc.reason or self._reason
        elif status_code >= 500:
            message = self.internal_error
        else:
            message = self._reason
        self.set_header("Content-Type", "application/json")  # type: ignore[attr-defined]
        self.finish(json.dumps({"error": message}))  # type: ignore[attr-defined]

    def _handle_request_exception(self, e: BaseException) -> None:
        # The one place errors become responses: every error raised on purpose carries its
        # status (errors.ParallalxError); anything else is a 500 without details.
        if isinstance(e, ParallalxError):
            self.refused(e)
            self.send_error(e.status, exc_info=(type(e), e, e.__traceback__))  # type: ignore[attr-defined]
            return
        super()._handle_request_exception(e)  # type: ignore[misc]

    def refused(self, err: ParallalxError) -> None:
        """Called for each error raised on purpose, before it is answered (e.g. to log it)."""
