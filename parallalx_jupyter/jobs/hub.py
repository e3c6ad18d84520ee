"""Fan-out of a job's records (progress, state, workload-specific) to its subscribers.

Subscribers are the job handle itself, notebook dashboards and the server reporter; they run in
the job's thread, so a slow or failing one must never stop the job: failures are logged.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

logger = logging.getLogger(__name__)

Record = dict[str, Any]


class ProgressHub:
    """Fan records out to subscribers; a failing subscriber is logged, never propagated."""

    def __init__(self) -> None:
        self._subs: list[tuple[Callable[[Record], Any], frozenset[str] | None]] = []
        self._lock = threading.Lock()

    def subscribe(
        self, callback: Callable[[Record], Any], kinds: set[str] | None = None
    ) -> Callable[[], None]:
        """Call ``callback(record)`` for records of ``kinds`` (all if None); returns unsubscribe."""
        entry = (callback, frozenset(kinds) if kinds else None)
        with self._lock:
            self._subs.append(entry)

        def unsubscribe() -> None:
            with self._lock:
                if entry in self._subs:
                    self._subs.remove(entry)

        return unsubscribe

    def emit(self, record: Record) -> None:
        with self._lock:
            subs = list(self._subs)
        for callback, kinds in subs:
            if kinds is not None and record.get("kind") not in kinds:
                continue
            try:
                callback(record)
            except Exception:
                logger.exception("job record subscriber %r failed", callback)
