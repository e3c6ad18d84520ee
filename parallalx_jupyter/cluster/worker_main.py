"""Self-contained bootstrap for a parallalx Dask worker, run *by path*:

    <python> /path/to/parallalx_jupyter/cluster/worker_main.py --config worker.json

The interpreter may be any environment that has ``distributed`` (the device user's chosen
kernel/venv) - ``parallalx_jupyter`` need not be installed there. This file therefore imports
only the standard library, ``dask``/``distributed``, ``_guard.py``, ``_boundary.py``,
``_livetls.py`` and ``quiet.py`` (loaded by file path from its own directory), and
``../training/torch_processes.py`` (by path too). Its directory
is removed from ``sys.path`` so that sibling modules (``scheduler.py``, ``tls.py``, ...) can
never shadow anything in the worker environment.

What it does:

* builds ``Security(require_encryption=True)`` from the device's cert/key and the cluster CA
  (mutual TLS, TLS >= 1.2); the same cert is used for the worker listener and for the
  worker's outgoing connections. Its contexts check the cluster's CRL (``crl_file``, kept
  from the join and from the scheduler's ``parallalx-crl`` pushes), so a revoked certificate
  fails the handshake here too, and pick up a renewed ``cert_file`` without a restart
  (``_livetls.py``);
* starts a ``distributed.Worker`` subclass whose incoming comms go through the admission guard
  (``_guard.worker_policy``): ``run``, ``run_coroutine``, ``upload_file``, ``plugin-add`` and
  ``plugin-remove`` are blocked for everyone (also through Dask's own ``blocked_handlers``);
  other devices' workers may only ``ping`` and ``get_data`` the inputs of their own tasks
  (the scheduler is asked); everything else needs the scheduler's or the main device's
  certificate;
* puts the pickle boundary (``_boundary.py``) in front of every TLS comm before any opens:
  from another device this worker accepts plain msgpack data only, so no device's pickle is
  ever decoded here;
* binds the worker listener to the configured interface and its HTTP server to 127.0.0.1;
* exits 77 (``EXIT_REFUSED``) when the scheduler refuses admission (revoked/unknown device) so
  the supervisor stops retrying, 0 after a normal close (the supervisor restarts it: that is
  how a worker "reconnects" - distributed 2026.8 workers do not reconnect by themselves, see
  ``Worker._register_with_scheduler``: "Worker reconnection is not supported");
* once joined, starts the forkserver that rank processes are forked from, which imports
  torch in its own process (``training/torch_processes.py``, loaded by path like the
  siblings), so the first job does not wait for that import;
* exits when its stdin reaches EOF (the supervising process is gone), killing its process
  group, so no orphan survives the controlling process.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import logging
import os
import sys
import tempfile
import time

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.getcwd()) != _HERE]

logger = logging.getLogger("parallalx_jupyter.cluster.worker_main")


def _load_sibling(filename: str, name: str):
    """Load a dependency-free module of this directory by path (see the module docstring)."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, os.path.join(_HERE, filename))
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _load_guard():
    return _load_sibling("_guard.py", "parallalx_cluster_guard")


def _write_status(path: str | None, **status) -> None:
    if not path:
        return
    status.setdefault("pid", os.getpid())
    status.setdefault("time", time.time())
    d = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=d, prefix=".status.")
    with os.fdopen(fd, "w") as f:
        json.dump(status, f)
    os.replace(tmp, path)


def _security(cfg: dict):
    """``(Security, WorkerTLS)``: mutual TLS with this device's cert, TLS >= 1.2, and every
    context it makes kept current - the cluster's CRL (the one this worker kept, then what the
    scheduler pushes) and a renewed certificate are loaded into them without a restart (see
    ``_livetls.py``)."""
    livetls = _load_sibling("_livetls.py", "parallalx_cluster_livetls")
    live = livetls.LiveTLS(cfg["ca_file"], cfg["cert_file"], cfg["key_file"])
    worker_tls = livetls.WorkerTLS(
        live, cfg.get("crl_file"), float(cfg.get("tls_poll_interval") or 2.0)
    )
    worker_tls.load_initial_crl()
    return live.security(str(cfg.get("tls_min_version", "1.2"))), worker_tls


def _refused(exc: BaseException, marker: str) -> str | None:
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if marker in str(exc):
            return str(exc)[:500]
        exc = exc.__cause__ or exc.__context__
    return None


def _prestart_rank_processes() -> None:
    """Start the rank forkserver now that the worker has joined, so that the first job finds
    torch imported (``training/torch_processes.py``, loaded by path: this process imports
    neither torch nor parallalx). Off with ``PARALLALX_PRESTART_RANKS=0``."""
    path = os.path.join(os.path.dirname(_HERE), "training", "torch_processes.py")
    try:
        spec = importlib.util.spec_from_file_location("parallalx_torch_processes", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        if module.prestart_wanted():
            module.prestart()
    except Exception:  # noqa: BLE001 - the first job's probe starts it instead
        logger.warning("could not start the rank forkserver", exc_info=True)


async def _run(cfg: dict, parent_watch: bool) -> int:

    import dask
    from distributed import Worker

    guard = _load_guard()
    boundary = _load_sibling("_boundary.py", "parallalx_cluster_boundary")
    # Before any comm opens: no other device's pickle ever reaches this worker's decoder.
    boundary.install(guard.boundary_mode_for_worker(cfg.get("device_id")))
    policy = guard.worker_policy(frozenset(cfg.get("extra_blocked_handlers") or ()))
    worker_cls = guard.make_guarded_worker_class(
        Worker, policy, tuple(boundary.SAFE_FIRST_SERIALIZERS), cfg.get("device_id")
    )
    status_file = cfg.get("status_file")
    stopping = guard.stop_requested(parent_watch)
    security, worker_tls = _security(cfg)

    # Dask's own periodic work (profiler, ticks, monitors) slowed down: the work of a parallalx
    # job runs in rank subprocesses next to this worker, on the same cores (see quiet.py).
    quiet = _load_sibling("quiet.py", "parallalx_cluster_quiet")
    with dask.config.set({**quiet.QUIET_DASK_CONFIG,
                          "distributed.comm.require-encryption": True}):
        worker = worker_cls(
            cfg["scheduler_address"],
            name=cfg.get("name") or cfg["device_id"],
            nthreads=int(cfg.get("nthreads") or 1),
            memory_limit=cfg.get("memory_limit") or "auto",
            resources=cfg.get("resources") or None,
            security=security,
            host=cfg.get("listen_host") or "127.0.0.1",
            port=int(cfg.get("listen_port") or 0),
            protocol="tls",
            contact_address=cfg.get("contact_address"),
            dashboard_address="127.0.0.1:0",
            local_directory=cfg.get("local_directory"),
            death_timeout=cfg.get("death_timeout"),
        )
        # the scheduler's CRL pushes (parallalx-crl) and renewed-certificate pick-up
        worker_tls.install(worker)
        if worker_tls.own_revoked:
            _write_status(status_file, state="refused", reason="certificate revoked (CRL)")
            return guard.EXIT_REFUSED
        _write_status(status_file, state="starting")
        start = asyncio.ensure_future(worker.start())
        stop_wait = asyncio.ensure_future(stopping.wait())
        revoked = asyncio.ensure_future(worker_tls.scheduler_refusal(
            cfg["scheduler_address"], security.get_connection_args("worker")["ssl_context"]))
        await asyncio.wait([start, stop_wait, revoked], return_when=asyncio.FIRST_COMPLETED)
        if revoked.done() and not start.done():
            start.cancel()
            await worker.close(reason="parallalx-revoked")
            logger.error("%s", revoked.result())
            _write_status(status_file, state="refused", reason=revoked.result())
            return guard.EXIT_REFUSED
        revoked.cancel()
        if not start.done():
            start.cancel()
            await worker.close(reason="parallalx-stop")
            _write_status(status_file, state="stopped", reason="stopped before joining")
            return 0
        exc = start.exception()
        if exc is not None:
            reason = _refused(exc, guard.DENIED_MARKER)
            if reason is not None:
                logger.error("admission refused by the scheduler: %s", reason)
                _write_status(status_file, state="refused", reason=reason)
                return guard.EXIT_REFUSED
            logger.error("worker failed to start: %r", exc)
            _write_status(status_file, state="failed", reason=repr(exc)[:500])
            return 1
        _write_status(status_file, state="running", address=worker.address)
        _prestart_rank_processes()
        finished = asyncio.ensure_future(worker.finished())
        await asyncio.wait([finished, stop_wait], return_when=asyncio.FIRST_COMPLETED)
        if not finished.done():
            await worker.close(reason="parallalx-stop")
        _write_status(status_file, state="closed", address=worker.address)
        return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="worker_main.py")
    parser.add_argument("--config", required=True)
    parser.add_argument("--no-parent-watch", action="store_true")
    args = parser.parse_args(argv)
    with open(args.config) as f:
        cfg = json.load(f)
    logging.basicConfig(
        level=getattr(logging, str(cfg.get("log_level", "INFO")).upper(), logging.INFO),
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    if cfg.get("cuda_visible_devices") is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(cfg["cuda_visible_devices"])
    return asyncio.run(_run(cfg, parent_watch=not args.no_parent_watch))


if __name__ == "__main__":
    sys.exit(main())
