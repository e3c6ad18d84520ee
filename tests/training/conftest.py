"""Real Dask clusters over mutual TLS for the training tests.

The scheduler and every worker are separate ``distributed`` processes started from the CLI
(``--no-nanny``: the PID we hold is the worker itself, so SIGKILL/SIGSTOP hit exactly one
worker and nothing restarts it behind the test's back). A throwaway CA and leaf certificates
are generated with ``cryptography``; ``require_encryption`` is on for every process.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # the package is not necessarily pip-installed in CI
    sys.path.insert(0, str(REPO))


# --------------------------------------------------------------------------- TLS material
def _write_tls(directory: Path) -> dict[str, str]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = dt.datetime.now(dt.timezone.utc)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def dump_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
        path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        path.chmod(0o600)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(name("parallalx test CA"))
        .issuer_name(name("parallalx test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    paths = {"ca": str(directory / "ca.pem")}
    Path(paths["ca"]).write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    for role in ("node", "client"):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(name(f"parallalx test {role}"))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
                ),
                critical=False,
            )
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .sign(ca_key, hashes.SHA256())
        )
        paths[f"{role}_cert"] = str(directory / f"{role}.pem")
        paths[f"{role}_key"] = str(directory / f"{role}-key.pem")
        Path(paths[f"{role}_cert"]).write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        dump_key(key, Path(paths[f"{role}_key"]))
    return paths


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return _write_tls(tmp_path_factory.mktemp("tls"))


# --------------------------------------------------------------------------- cluster
class TLSCluster:
    """Scheduler + N worker processes on 127.0.0.1, all over mutual TLS."""

    def __init__(self, tls: dict[str, str], workdir: Path, n_workers: int) -> None:
        self.tls = tls
        self.workdir = workdir
        self.n_workers = n_workers
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.scheduler: subprocess.Popen[bytes] | None = None
        self.address = ""
        self.client = None
        self.env = dict(
            os.environ,
            PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
            OMP_NUM_THREADS="1",
            MKL_NUM_THREADS="1",
            DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION="True",
            DASK_DISTRIBUTED__SCHEDULER__WORKER_TTL="300s",
            DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED="False",
        )

    @property
    def tls_args(self) -> list[str]:
        t = self.tls
        return ["--tls-ca-file", t["ca"], "--tls-cert", t["node_cert"], "--tls-key", t["node_key"]]

    def security(self):  # noqa: ANN201 - distributed.Security
        from distributed.security import Security

        return Security(
            tls_ca_file=self.tls["ca"],
            tls_client_cert=self.tls["client_cert"],
            tls_client_key=self.tls["client_key"],
            require_encryption=True,
        )

    def _spawn(self, args: list[str], log: str) -> subprocess.Popen[bytes]:
        out = open(self.workdir / log, "wb")  # noqa: SIM115 - closed with the process
        return subprocess.Popen(
            [sys.executable, "-m", *args],
            env=self.env,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=self.workdir,
        )

    def start(self) -> TLSCluster:
        from distributed import Client

        sched_file = self.workdir / "scheduler.json"
        self.scheduler = self._spawn(
            [
                "distributed.cli.dask_scheduler",
                "--protocol", "tls",
                "--host", "127.0.0.1",
                "--port", "0",
                "--no-dashboard",
                "--scheduler-file", str(sched_file),
                *self.tls_args,
            ],
            "scheduler.log",
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while not sched_file.exists():
            if time.monotonic() > deadline or self.scheduler.poll() is not None:
                raise RuntimeError(f"scheduler did not start: {self.log('scheduler.log')}")
            time.sleep(0.1)
        time.sleep(0.1)
        self.address = json.loads(sched_file.read_text())["address"]
        assert self.address.startswith("tls://")
        for i in range(self.n_workers):
            self.add_worker(f"w{i}")
        self.client = Client(self.address, security=self.security(), timeout="60s")
        self.client.wait_for_workers(self.n_workers, timeout=120)
        return self

    def add_worker(self, name: str) -> None:
        self.procs[name] = self._spawn(
            [
                "distributed.cli.dask_worker", self.address,
                "--no-nanny",
                "--nthreads", "1",
                "--name", name,
                "--host", "127.0.0.1",
                "--no-dashboard",
                "--memory-limit", "0",
                "--death-timeout", "60",
                *self.tls_args,
            ],
            f"{name}.log",
        )  # fmt: skip

    def log(self, name: str) -> str:
        p = self.workdir / name
        return p.read_text(errors="replace")[-4000:] if p.exists() else ""

    def workers_by_name(self) -> dict[str, str]:
        info = self.client.sync(self.client.scheduler.identity, n_workers=-1)["workers"]
        return {str(w["name"]): addr for addr, w in info.items()}

    def name_of(self, address: str) -> str:
        return {a: n for n, a in self.workers_by_name().items()}[address]

    def signal(self, name: str, sig: int, tree: bool = False) -> None:
        """Signal a worker process, or (``tree``) it and its rank processes, like a whole
        machine going to sleep."""
        import psutil

        pids = [self.procs[name].pid]
        if tree:
            pids += [c.pid for c in psutil.Process(pids[0]).children(recursive=True)]
        for pid in pids:
            os.kill(pid, sig)

    def close(self) -> None:
        """Fast teardown: workers are killed (a graceful close waits on stuck rank threads)."""
        if self.client is not None:
            try:
                self.client.close(timeout=5)
            except Exception:
                pass
        for p in self.procs.values():
            if p.poll() is None:
                try:
                    p.kill()
                except ProcessLookupError:
                    pass
        if self.scheduler is not None and self.scheduler.poll() is None:
            self.scheduler.terminate()
        for p in [*self.procs.values(), self.scheduler]:
            if p is None:
                continue
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)


def _cluster(tls: dict[str, str], tmp: Path, n: int) -> Iterator[TLSCluster]:
    cluster = TLSCluster(tls, tmp, n)
    try:
        yield cluster.start()
    finally:
        cluster.close()


@pytest.fixture(scope="module")
def cluster2(tls_files: dict[str, str], tmp_path_factory: pytest.TempPathFactory):
    """Two workers, shared by the non-destructive tests of a module."""
    yield from _cluster(tls_files, tmp_path_factory.mktemp("cluster2"), 2)


@pytest.fixture
def cluster3(tls_files: dict[str, str], tmp_path: Path):
    """Three fresh workers for a test that kills or freezes one."""
    yield from _cluster(tls_files, tmp_path, 3)


@pytest.fixture
def unstarted_tls_cluster(tls_files: dict[str, str], tmp_path: Path) -> TLSCluster:
    """TLS material, environment and command-line pieces for a test that starts its own
    processes (e.g. in network namespaces), with nothing started yet."""
    return TLSCluster(tls_files, tmp_path, 0)
