"""Launch one torch.distributed rank per Dask worker and form the process group ourselves.

Dask is only the control plane: it places one long-running task per rank on a chosen worker and
carries small control messages. The data plane is a torch process group (gloo, or NCCL when
every rank has CUDA) that we build explicitly, because ``torchrun``-style environment variables
and fixed ports do not exist on a user's ad-hoc cluster.

Each rank trains in its *own process*, started by the Dask task (see ``rank.py``). A failed or
cancelled rank then simply exits, which closes its gloo sockets at once, so the other ranks fail
in milliseconds. (Measured: a rank that fails inside the worker process keeps its sockets open,
because gloo's in-flight work pins the ProcessGroup, and its peers sit out the group timeout.)

Rendezvous, and why it is done this way (no Dask client is ever opened inside a task, because
parallalx's hardened cluster refuses one to a worker device's certificate):

* Before the ranks, the driver runs one short task pinned to rank 0's worker,
  :func:`open_rendezvous`: it opens a ``TCPStore`` *server* on port 0 (the OS picks a free port)
  for that worker process (held by a child of its forkserver, :class:`StoreServer`, because the
  worker itself never imports torch), keeps it in a per-process registry keyed by job *and
  attempt*, and
  returns the port as its result. There is no window in which another process could take the
  port (which a "find a free port, close it, report it" first phase would have), and a fresh
  key per attempt means a stale port from a crashed attempt can never be used.
* The rank tasks get host and port as plain arguments (:class:`RankSpec`). The host is the host
  part of rank 0's worker address *as the scheduler sees it*, because that is the address we
  already know reaches that machine, unlike whatever its hostname resolves to.
* Rank 0's task claims the registered store (:func:`claim_rendezvous`) and keeps it open while
  the job runs; every rank process, rank 0's included, connects to it as a store client. The
  store is closed in rank 0's ``finally``; if rank 0's task never ran or never claimed it, the
  driver's cleanup task (:func:`close_rendezvous`) closes it, and an unclaimed store also
  expires on its own after a deadline, so the port is open only while the job runs.
* Each rank sets ``GLOO_SOCKET_IFNAME`` to the interface that routes toward rank 0's host (gloo
  otherwise binds to the hostname's address: 127.0.0.1, docker0 or a VPN).
* ``init_process_group`` gets an explicit, short timeout (gloo's default is 30 minutes) that also
  bounds every collective, which is how a frozen peer is eventually detected.
* Like gloo's own traffic, the store's TCP connections are unauthenticated and unencrypted;
  they carry only rendezvous keys, never the job's data or credentials.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import functools
import ipaddress
import os
import socket
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from distributed import Client, Future
from distributed.comm.addressing import get_address_host

from .errors import RankInfraError

# One process group per worker process: torch keeps the default group in process-global state.
_WORKER_SLOT = threading.Lock()


@dataclass(frozen=True)
class RankSpec:
    """Everything a rank task needs to join its group (plain data, cheap to pickle)."""

    job_id: str
    attempt: int
    rank: int
    world_size: int
    worker: str
    master_host: str
    backend: str
    timeout_s: float
    device: str = "cpu"
    master_port: int = 0
    #: the worker's torch has gloo's TLS transport (``gloo_tls_available``, from its probe)
    gloo_tls: bool = False
    #: the worker's TLS key, certificate and CA files (set on the worker, see ``tls_files_of``)
    tls_files: tuple[str, str, str] | None = None
    #: how rank traffic travels, decided by the ranks together (``agree_on_rank_tls``)
    rank_traffic: str = ""


# --------------------------------------------------------------------------- rendezvous store
# (job_id, attempt) -> [StoreServer, expiry timer]; one registry per worker process.
_STORES: dict[tuple[str, int], list[Any]] = {}
_STORES_LOCK = threading.Lock()


class StoreServer:
    """A ``TCPStore`` server held open by a child of the worker's forkserver
    (``torch_processes.py``: the worker process itself never imports torch).

    The child leaves when :meth:`close` closes its pipe, or when this worker process dies
    (the pipe reaches EOF either way), so the port is open no longer than its owner lives.
    Where there is no forkserver the store lives in this process, as a plain ``TCPStore``.
    """

    def __init__(self, host: str, timeout_s: float) -> None:
        from .torch_processes import forkserver_available, start_child, stop_child

        self._stop_child = stop_child
        self._proc: Any = None
        self._conn: Any = None
        self._store: Any = None
        if not forkserver_available():
            self._store = _tcp_store_server(host, timeout_s)
            self.port = int(self._store.port)
            return
        self._proc, self._conn = start_child(_store_main, host, timeout_s, name="parallalx-rdzv")
        try:
            kind, value = self._conn.recv()
        except (EOFError, OSError):
            self.close()
            raise RankInfraError(
                f"the rendezvous store's process exited with code {self._proc.exitcode}"
            ) from None
        if kind != "port":
            self.close()
            raise RankInfraError(f"could not open the rendezvous store on {host}:\n{value}")
        self.port = int(value)

    def close(self) -> None:
        self._store = None  # the last reference: the server thread stops, the port closes
        if self._proc is not None:
            proc, self._proc = self._proc, None
            self._stop_child(proc, self._conn)

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()


def _tcp_store_server(host: str, timeout_s: float) -> Any:
    import torch.distributed as dist

    return dist.TCPStore(
        host,
        0,
        None,
        is_master=True,
        timeout=_dt.timedelta(seconds=timeout_s),
        wait_for_workers=False,
    )


def _store_main(host: str, timeout_s: float, conn: Any) -> None:
    """A store process: open the server, report its port, serve until the pipe closes."""
    import traceback

    try:
        store = _tcp_store_server(host, timeout_s)
        conn.send(("port", int(store.port)))
    except BaseException:  # noqa: BLE001 - reported to the worker as text
        with contextlib.suppress(OSError):
            conn.send(("error", traceback.format_exc()))
        os._exit(1)
    with contextlib.suppress(EOFError, OSError):
        while True:
            conn.recv()  # nothing is ever sent: this returns at EOF
    os._exit(0)  # the kernel closes the listener; no destructor can hang on a client


def open_rendezvous(job_id: str, attempt: int, host: str, timeout_s: float, ttl_s: float) -> int:
    """Dask task on rank 0's worker: open the attempt's TCPStore server, return its port.

    The server belongs to this worker (not to a rank process) so its port can be returned
    before the ranks start. If no rank 0 claims it within ``ttl_s`` it is closed.
    """
    key = (job_id, int(attempt))
    with _STORES_LOCK:
        entry = _STORES.get(key)
        if entry is not None:  # a resubmitted task: same store, same port
            return int(entry[0].port)
    store = StoreServer(host, timeout_s)
    timer = threading.Timer(ttl_s, _expire, args=(key, store))
    timer.daemon = True
    with _STORES_LOCK:
        _STORES[key] = [store, timer]
    timer.start()
    return int(store.port)


def _expire(key: tuple[str, int], store: StoreServer) -> None:
    with _STORES_LOCK:
        entry = _STORES.get(key)
        if entry is None or entry[0] is not store:
            return
        del _STORES[key]
    store.close()


def claim_rendezvous(job_id: str, attempt: int) -> StoreServer | None:
    """Rank 0's task takes ownership of the store (None if it expired or never existed).

    The caller closes it when the job ends (:meth:`StoreServer.close`).
    """
    with _STORES_LOCK:
        entry = _STORES.pop((job_id, int(attempt)), None)
    if entry is None:
        return None
    entry[1].cancel()
    return entry[0]


def close_rendezvous(job_id: str, attempt: int) -> bool:
    """Dask cleanup task: close an attempt's store that no rank 0 claimed (True if one was)."""
    store = claim_rendezvous(job_id, attempt)
    if store is None:
        return False
    store.close()
    return True


def open_rendezvous_stores() -> list[tuple[str, int]]:
    """Keys of the unclaimed stores in this process (for tests and diagnostics)."""
    with _STORES_LOCK:
        return sorted(_STORES)


def host_of(address: str) -> str:
    """Host part of a Dask address (``tls://10.0.0.5:4321`` -> ``10.0.0.5``)."""
    return get_address_host(address)


def interface_for(host: str) -> str | None:
    """Name of the local network interface used to reach ``host`` (``lo`` for 127.0.0.1).

    A connected UDP socket sends nothing but makes the kernel pick the route, and its local
    address identifies the interface (matched through psutil). ``None`` if it cannot be found,
    in which case gloo's own choice is left alone.
    """
    import psutil

    try:
        infos = socket.getaddrinfo(host, 9, type=socket.SOCK_DGRAM)
    except OSError:
        return None
    for family, _type, _proto, _canon, sockaddr in infos:
        try:
            with socket.socket(family, socket.SOCK_DGRAM) as s:
                s.connect(sockaddr)
                local = s.getsockname()[0]
        except OSError:
            continue
        try:
            local_ip = ipaddress.ip_address(local.split("%")[0])
        except ValueError:
            continue
        for name, addrs in psutil.net_if_addrs().items():
            for a in addrs:
                try:
                    if ipaddress.ip_address(a.address.split("%")[0]) == local_ip:
                        return name
                except ValueError:
                    continue
    return None


def choose_backend(gpu_per_rank: Sequence[str | None]) -> str:
    """NCCL only when every rank has its own GPU; gloo for CPU-only, mixed and shared groups.

    ``gpu_per_rank`` holds each rank's GPU identity (its UUID) or None without CUDA. NCCL
    refuses two ranks on one GPU ("Duplicate GPU detected"), which happens when two workers of
    one machine see the same card; gloo still moves their CUDA tensors, just through the host.
    """
    gpus = list(gpu_per_rank)
    if not gpus or any(g is None for g in gpus):
        return "gloo"
    return "nccl" if len(set(gpus)) == len(gpus) else "gloo"


def order_workers(workers: Sequence[str], prefer_host: str | None = None) -> list[str]:
    """Stable rank order: workers on ``prefer_host`` (the driver's) first, then by address.

    Rank 0 ships checkpoints back to the driver, so putting it next to the driver keeps that
    traffic local when possible.
    """
    return sorted(workers, key=lambda w: (host_of(w) != prefer_host, w))


def ship_to_each(client: Client, obj: Any, workers: Sequence[str]) -> dict[str, Future]:
    """One copy of ``obj`` on each worker, each sent by this client.

    Not ``scatter(broadcast=True)``: that replicates between workers, so a device would decode
    what another device handed it (and could tamper with it on the way).
    """
    return {w: client.scatter([obj], workers=[w], hash=False)[0] for w in workers}


def submit_ranks(
    client: Client,
    fn: Callable[..., Any],
    workers: Sequence[str],
    make_spec: Callable[[int, str], RankSpec],
    *args: Any,
    per_worker: Mapping[str, Any] | None = None,
    key_prefix: str = "parallalx-rank",
) -> list[Future]:
    """Submit ``fn(spec, [per_worker[addr],] *args)`` once per worker, pinned to it (never
    moved, never retried).

    ``allow_other_workers=False`` and ``retries=0``: a rank is meaningless elsewhere; if its
    worker dies the task stays pending on the scheduler and the driver cancels it.
    """
    futures = []
    for rank, addr in enumerate(workers):
        spec = make_spec(rank, addr)
        own = (per_worker[addr],) if per_worker is not None else ()
        futures.append(
            client.submit(
                fn,
                spec,
                *own,
                *args,
                key=f"{key_prefix}-{spec.job_id}-{spec.attempt}-{rank}",
                workers=[addr],
                allow_other_workers=False,
                pure=False,
                retries=0,
            )
        )
    return futures


@contextlib.contextmanager
def worker_slot(timeout_s: float) -> Iterator[None]:
    """Hold this worker process's single process-group slot (another job may still be leaving)."""
    if not _WORKER_SLOT.acquire(timeout=timeout_s):
        raise RankInfraError("another training job still holds this worker's process group")
    try:
        yield
    finally:
        _WORKER_SLOT.release()


GLOO_TLS_ENV = (
    "GLOO_DEVICE_TRANSPORT_TCP_TLS_PKEY",
    "GLOO_DEVICE_TRANSPORT_TCP_TLS_CERT",
    "GLOO_DEVICE_TRANSPORT_TCP_TLS_CA_FILE",
)


def tls_files_of(worker: Any) -> tuple[str, str, str] | None:
    """The key, certificate and CA files a Dask worker's own TLS uses, if it has them."""
    sec = getattr(worker, "security", None)
    files = tuple(
        str(getattr(sec, name, None) or "")
        for name in ("tls_worker_key", "tls_worker_cert", "tls_ca_file")
    )
    return files if all(f and os.path.isfile(f) for f in files) else None  # type: ignore[return-value]


@functools.lru_cache(maxsize=1)
def gloo_tls_available() -> bool:
    """Whether this torch build has gloo's TLS transport (PyPI's wheels do not).

    Not by creating a TLS device: c10d reads ``GLOO_DEVICE_TRANSPORT`` once per process, so
    a probe would leave the process on that transport. The TLS device factory is the only
    code that names its certificate variables, so their name in the library tells. Cached:
    a worker's probe pays the scan (~0.4 s for 400 MB) once.
    """
    import mmap

    import torch

    lib = os.path.join(os.path.dirname(torch.__file__), "lib")
    try:
        names = [n for n in os.listdir(lib) if n.startswith(("libtorch_cpu.", "torch_cpu."))]
    except OSError:
        return False
    for name in names:
        try:
            with open(os.path.join(lib, name), "rb") as f, mmap.mmap(
                f.fileno(), 0, access=mmap.ACCESS_READ
            ) as m:
                if m.find(GLOO_TLS_ENV[0].encode()) >= 0:
                    return True
        except (OSError, ValueError):
            continue
    return False


def agree_on_rank_tls(store: Any, spec: RankSpec) -> str:
    """Decide with the other ranks (through the rendezvous store) how rank traffic travels.

    Every rank must use the same gloo transport, so TLS is used only where every rank can:
    gloo, a torch built with the TLS transport, and the worker's cluster certificate. Returns
    the line the preflight report shows.
    """
    if spec.backend != "gloo":
        mine, why = "0", f"{spec.backend} traffic between ranks is not encrypted"
    elif spec.tls_files is None:
        mine, why = "0", "not encrypted: a worker has no TLS certificate files to use for it"
    elif not spec.gloo_tls:
        mine, why = "0", "not encrypted: this torch build has no gloo TLS transport"
    else:
        mine, why = "1", "encrypted (gloo TLS with the cluster's certificates)"
    store.set(f"parallalx/rank-tls/{spec.rank}", mine)
    votes = [store.get(f"parallalx/rank-tls/{r}") for r in range(spec.world_size)]
    if all(v == b"1" for v in votes):
        assert spec.tls_files is not None
        os.environ["GLOO_DEVICE_TRANSPORT"] = "TCP_TLS"
        for name, path in zip(GLOO_TLS_ENV, spec.tls_files, strict=True):
            os.environ[name] = path
        return why
    if mine == "1":
        return "not encrypted: another rank's torch has no gloo TLS transport"
    return why


def set_gloo_interface(master_host: str) -> str | None:
    """Point gloo at the interface that routes to rank 0 (call in the rank process only)."""
    iface = interface_for(master_host)
    if iface:
        os.environ["GLOO_SOCKET_IFNAME"] = iface
    return iface


@dataclass
class RankGroup:
    """The default process group's rendezvous: how rank traffic travels, and the store that
    lets the group re-form on fewer ranks (:func:`regroup`)."""

    traffic: str
    store: Any


def regroup(spec: RankSpec, group: RankGroup, ranks: Sequence[int], tag: str) -> RankSpec | None:
    """Re-form the default process group on ``ranks`` (every rank calls, at the same point).

    ``auto`` leaves slow or surplus devices idle after measuring them all: re-forming here costs
    milliseconds, where a new attempt would start new rank processes. Idle ranks get None and
    leave; the others get their spec in the new group.
    """
    import torch.distributed as dist

    # Every rank has received everything of the old group (the plan's broadcast) before any
    # closes its sockets: a rank still reading would see "Connection reset by peer".
    dist.barrier()
    dist.destroy_process_group()
    if spec.rank not in ranks:
        return None
    new_rank = list(ranks).index(spec.rank)
    store = dist.HashStore() if len(ranks) == 1 else dist.PrefixStore(tag, group.store)
    dist.init_process_group(
        spec.backend,
        store=store,
        rank=new_rank,
        world_size=len(ranks),
        timeout=_dt.timedelta(seconds=spec.timeout_s),
    )
    return replace(spec, rank=new_rank, world_size=len(ranks))


@contextlib.contextmanager
def process_group(spec: RankSpec) -> Iterator[RankGroup]:
    """Rendezvous through rank 0's TCPStore, initialise the default process group and yield
    it with how rank traffic travels (:func:`agree_on_rank_tls`).

    Runs in the rank's own process; every rank is a client of the store that
    :func:`open_rendezvous` opened in rank 0's worker. Connection and timeout failures become
    :class:`RankInfraError` so the driver re-forms the group.
    """
    import torch.distributed as dist

    timeout = _dt.timedelta(seconds=spec.timeout_s)
    store = None
    try:
        if not spec.master_port:
            raise ValueError("no rendezvous port in the rank spec")
        store = dist.TCPStore(
            spec.master_host, spec.master_port, None, is_master=False, timeout=timeout
        )
        traffic = agree_on_rank_tls(store, spec)
        dist.init_process_group(
            spec.backend,
            store=store,
            rank=spec.rank,
            world_size=spec.world_size,
            timeout=timeout,
        )
    except Exception as exc:  # rendezvous failures are always infrastructure
        raise RankInfraError(f"rendezvous failed on rank {spec.rank}: {exc!r}") from exc
    try:
        yield RankGroup(traffic, store)
    finally:
        # Only on success does this run to completion; on failure the rank process exits
        # right after reporting (os._exit), which closes every socket at once.
        with contextlib.suppress(Exception):
            dist.destroy_process_group()
        del store


def side_group(timeout_s: float, backend: str | None = None) -> Any:
    """A further process group of all ranks (collective: every rank calls it at the same point).

    torch gives new groups gloo's 30-minute default timeout, not the training group's: a frozen
    peer would then hold a rank in a collective on the side group until the driver kills it.
    """
    import torch.distributed as dist

    return dist.new_group(backend=backend, timeout=_dt.timedelta(seconds=timeout_s))
