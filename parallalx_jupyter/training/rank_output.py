"""What a launched function prints, sent home: each rank's stdout and stderr reach the job.

torchrun shows every rank's output in the terminal that started it; Accelerate's
``notebook_launcher`` shows it in the cell. A rank here runs on another device, where its
output would only reach the worker's log, so a script's ``print`` progress and a library's
warnings would never be seen. :class:`OutputForwarder` replaces the rank process's file
descriptors 1 and 2 with pipes (so C++ and subprocess output is caught too, not only
``sys.stdout``), still copies everything to the original descriptors (the worker's log keeps
it), and sends the text in batches on the rank's ship channel: at most one message per
stream every :data:`BATCH_S`, at most :data:`BYTES_PER_S` per rank and stream on average (a
loop printing every step must not flood the scheduler), with the number of bytes left out
said in the text where it cuts.
"""

from __future__ import annotations

import codecs
import contextlib
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

BATCH_S = 0.25
BYTES_PER_S = 64 * 1024
BURST_BYTES = 256 * 1024  # what a quiet rank may send at once (its budget's ceiling)
READ_BYTES = 65536
STREAMS = (("stdout", 1), ("stderr", 2))


class OutputForwarder:
    """Forward fds 1 and 2 of this process through ``send`` until :meth:`close`."""

    def __init__(self, send: Callable[[dict[str, Any]], None], **fields: Any) -> None:
        self._send = send
        self._fields = fields
        self._lock = threading.Lock()
        self._pending: dict[str, list[bytes]] = {name: [] for name, _ in STREAMS}
        self._budget = {name: float(BURST_BYTES) for name, _ in STREAMS}
        # a character split between two reads is decoded whole, in the later batch
        self._decoders = {name: codecs.getincrementaldecoder("utf-8")("replace")
                          for name, _ in STREAMS}
        self._last = time.monotonic()
        self._saved: dict[int, int] = {}
        self._readers: list[threading.Thread] = []
        self._closed = threading.Event()
        self._flusher: threading.Thread | None = None

    def start(self) -> OutputForwarder:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        for name, fd in STREAMS:
            read_end, write_end = os.pipe()
            self._saved[fd] = os.dup(fd)
            os.dup2(write_end, fd)
            os.close(write_end)
            reader = threading.Thread(target=self._read, args=(name, read_end, self._saved[fd]),
                                      name=f"rank-{name}", daemon=True)
            reader.start()
            self._readers.append(reader)
        # print() in a process without a terminal buffers 8 kB: the user expects each line
        with contextlib.suppress(Exception):
            sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
        self._flusher = threading.Thread(target=self._flush_loop, name="rank-output",
                                         daemon=True)
        self._flusher.start()
        return self

    def close(self, timeout: float = 1.0) -> None:
        """Put the descriptors back, read what is left, send it. A child process that still
        holds a pipe (a data-loader worker, a daemon the function started) keeps its reader
        from seeing EOF: it is given ``timeout`` to drain, then left behind with what it
        reads after that unsent (the worker's log still gets it)."""
        if not self._saved:
            return
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        for fd, saved in self._saved.items():
            os.dup2(saved, fd)  # the pipe's last write end closes: its reader sees EOF
        for reader in self._readers:
            reader.join(timeout)
        for saved in self._saved.values():
            os.close(saved)
        self._saved.clear()
        self._closed.set()
        if self._flusher is not None:
            self._flusher.join(timeout)
        self._flush()

    def _read(self, name: str, fd: int, copy_to: int) -> None:
        while True:
            try:
                data = os.read(fd, READ_BYTES)
            except OSError:
                data = b""
            if not data:
                os.close(fd)
                return
            with contextlib.suppress(OSError):
                os.write(copy_to, data)
            with self._lock:
                self._pending[name].append(data)

    def _flush_loop(self) -> None:
        while not self._closed.wait(BATCH_S):
            self._flush()

    def _flush(self) -> None:
        with self._lock:
            now = time.monotonic()
            elapsed, self._last = now - self._last, now
            batches = []
            for name, parts in self._pending.items():
                budget = min(BURST_BYTES, self._budget[name] + elapsed * BYTES_PER_S)
                data = b"".join(parts)
                parts.clear()
                keep = data[: max(0, int(budget))]
                self._budget[name] = budget - len(keep)
                text = self._decoders[name].decode(keep)
                if len(keep) < len(data):
                    text += (f"\n[parallalx: {len(data) - len(keep)} bytes of {name} left out: "
                             f"more than {BYTES_PER_S // 1024} kB/s]\n")
                if text:
                    batches.append({**self._fields, "kind": "output", "stream": name,
                                    "text": text})
        for batch in batches:
            self._send(batch)
