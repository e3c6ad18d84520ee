"""A job's Dask event topics: subscribed on the job's client, released completely at its end.

``Client.unsubscribe_topic`` only tells the scheduler; the handler stays in the client's table
(and with it everything the handler reaches: the driver, the job's records and model), and the
scheduler keeps the topic with its stored events. Over a long session that is a leak per job.
:meth:`JobTopics.release` therefore closes the topics on the scheduler (this client's
subscription, the stored events, the topic) and removes the handlers here. A handler may only
go once nothing more can arrive for it: the scheduler sends a closing marker on the same stream
as the topic's events, after them, and the handler removes itself when the marker arrives.
Where ``run_on_scheduler`` is refused, the plain unsubscribe is the fallback.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterable
from typing import Any

logger = logging.getLogger(__name__)

#: the message of the closing marker (nothing a rank or trial sends looks like it)
CLOSED = {"parallalx-topic-closed": True}
#: topics of jobs that ended are removed from the scheduler when any job is released: a late
#: event (a rank flushing after the job ended) would otherwise re-create its topic there
JOB_TOPIC_PREFIXES = ("parallalx-train-", "parallalx-sweep-")

Handler = Callable[[Any], Any]


class JobTopics:
    """The event topics one job subscribes to on ``client`` (see the module docstring)."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self._closed: dict[str, threading.Event] = {}

    def subscribe(self, topic: str, handler: Handler) -> None:
        closed = threading.Event()
        handlers = self.client._event_handlers  # noqa: SLF001 - see the module docstring

        def handle(event: Any) -> Any:
            # Runs on the client's event loop, in the order the scheduler sent the events.
            if _is_closed_marker(event):
                if handlers.get(topic) is handle:
                    del handlers[topic]
                closed.set()
                return None
            return handler(event)

        self._closed[topic] = closed
        self.client.subscribe_topic(topic, handle)

    def truncate(self, topics: Iterable[str]) -> None:
        """Free the scheduler's stored events of ``topics`` (delivery goes on)."""
        try:
            self.client.run_on_scheduler(_close_topics, topics=list(topics), client_id=None)
        except Exception:
            logger.debug("could not truncate event topics on the scheduler", exc_info=True)

    def release(self, timeout: float = 5.0) -> None:
        """Close every topic of this job, on the scheduler and here; idempotent."""
        topics = list(self._closed)
        if not topics:
            return
        try:
            marked = self.client.run_on_scheduler(
                _close_topics, topics=topics, client_id=self.client.id,
                prefixes=JOB_TOPIC_PREFIXES,
            )
        except Exception:
            logger.debug("could not close event topics on the scheduler", exc_info=True)
            marked = None
        for topic in topics:
            closed = self._closed.pop(topic)
            if marked is not None and topic in marked and closed.wait(timeout):
                continue
            if marked is None:  # the scheduler still counts this client as a subscriber
                with contextlib.suppress(Exception):
                    self.client.unsubscribe_topic(topic)
            handlers = self.client._event_handlers  # noqa: SLF001
            handlers.pop(topic, None)


def _is_closed_marker(event: Any) -> bool:
    try:
        return event[1] == CLOSED
    except (TypeError, IndexError, KeyError):
        return False


def _close_topics(
    dask_scheduler: Any, topics: list[str], client_id: str | None,
    prefixes: tuple[str, ...] = (),
) -> list[str]:
    """On the scheduler. Without ``client_id``: drop the stored events of ``topics``. With it:
    send that client a closing marker on each topic it subscribed to (after the events already
    queued for it), unsubscribe it and remove the topics nobody else follows, as well as any
    topic of ``prefixes`` that nobody follows any more. Returns the topics that were marked."""
    broker = getattr(dask_scheduler, "_broker", None)
    if broker is None:
        return []
    known = broker._topics  # noqa: SLF001 - no public way to drop a topic
    marked = []
    for name in topics:
        topic = known.get(name)
        if topic is None:
            continue
        topic.truncate()
        if client_id is None:
            continue
        if client_id in topic.subscribers:
            from distributed.metrics import time

            msg = {"op": "event", "topic": name, "event": (time(), dict(CLOSED))}
            dask_scheduler.send_all({client_id: [msg]}, worker_msgs={})
            topic.unsubscribe(client_id)
            marked.append(name)
        if not topic.subscribers:
            del known[name]
    if client_id is not None and prefixes:
        for name in [n for n, t in known.items() if n.startswith(prefixes) and not t.subscribers]:
            del known[name]
    return marked
