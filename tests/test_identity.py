import os
import stat
import subprocess
import sys
import time

import pytest

from parallalx_jupyter.identity import (
    CERT_FILE,
    KEY_FILE,
    DeviceIdentity,
    display_device_id,
    parse_device_id,
    verify_signature,
)


def test_identity_is_created_once_with_private_files(tmp_path):
    ident = DeviceIdentity.load_or_create(tmp_path / "home")
    again = DeviceIdentity.load_or_create(tmp_path / "home")
    assert ident.device_id == again.device_id
    for path in (ident.key_path, ident.cert_path):
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(tmp_path / "home").st_mode) == 0o700


def test_display_id_round_trips_and_catches_typos(tmp_path):
    ident = DeviceIdentity.load_or_create(tmp_path)
    shown = ident.display_id
    groups = shown.split("-")
    assert len(groups) == 8 and all(len(g) == 7 for g in groups)
    assert parse_device_id(shown) == ident.device_id
    assert parse_device_id(shown.lower()) == ident.device_id
    # change one character inside the first chunk: the check character no longer matches
    first = shown[0]
    typo = ("B" if first != "B" else "C") + shown[1:]
    with pytest.raises(ValueError, match="check character"):
        parse_device_id(typo)
    with pytest.raises(ValueError):
        display_device_id("not-an-id")


def test_signatures_bind_to_the_key(tmp_path):
    a = DeviceIdentity.load_or_create(tmp_path / "a")
    b = DeviceIdentity.load_or_create(tmp_path / "b")
    sig = a.sign(b"hello")
    assert verify_signature(a.public_der, sig, b"hello")
    assert not verify_signature(a.public_der, sig, b"hellO")
    assert not verify_signature(b.public_der, sig, b"hello")
    assert not verify_signature(b"garbage", sig, b"hello")


def test_certificate_is_regenerated_if_it_does_not_match_the_key(tmp_path):
    ident = DeviceIdentity.load_or_create(tmp_path)
    ident.cert_path.write_text("garbage")
    DeviceIdentity.load_or_create(tmp_path)
    assert "BEGIN CERTIFICATE" in ident.cert_path.read_text()


RACER = """
import sys, time
from pathlib import Path
from parallalx_jupyter.identity import DeviceIdentity
base, rounds, me = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
for r in range(rounds):
    (base / f"ready-{r}-{me}").touch()
    while not (base / f"go-{r}").exists():
        time.sleep(0.0002)
    print(r, DeviceIdentity.load_or_create(base / f"home-{r}").device_id, flush=True)
"""


def test_concurrent_first_starts_end_with_one_identity(tmp_path):
    """Separate processes create the same fresh home at the same moment (released together
    each round): every one of them must come out with the same device ID, the one whose key
    is on disk, with a certificate for that key."""
    racers, rounds = 6, 12
    procs = [
        subprocess.Popen([sys.executable, "-c", RACER, str(tmp_path), str(rounds), str(i)],
                         stdout=subprocess.PIPE, text=True)
        for i in range(racers)
    ]
    try:
        for r in range(rounds):
            deadline = time.monotonic() + 60
            while not all((tmp_path / f"ready-{r}-{i}").exists() for i in range(racers)):
                assert time.monotonic() < deadline, "racers did not get ready"
                assert all(p.poll() in (None, 0) for p in procs), "a racer failed"
                time.sleep(0.005)
            (tmp_path / f"go-{r}").touch()
        outputs = [p.communicate(timeout=120)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert all(p.returncode == 0 for p in procs)
    seen: dict[int, set[str]] = {}
    for out in outputs:
        for row in out.splitlines():
            r, device_id = row.split()
            seen.setdefault(int(r), set()).add(device_id)
    assert sorted(seen) == list(range(rounds))
    split = {r: len(ids) for r, ids in seen.items() if len(ids) != 1}
    assert not split, f"identities per round, where more than one: {split}"
    for r, ids in seen.items():
        on_disk = DeviceIdentity.load_or_create(tmp_path / f"home-{r}")
        assert {on_disk.device_id} == ids
        assert on_disk._cert_matches_key()
        leftovers = sorted(p.name for p in (tmp_path / f"home-{r}").iterdir())
        assert leftovers == sorted([KEY_FILE, CERT_FILE]), leftovers


def test_an_unreadable_key_is_named_not_replaced(tmp_path):
    """A key file that cannot be read stops the load with its path instead of being replaced
    by a new key (that would silently change the device ID)."""
    ident = DeviceIdentity.load_or_create(tmp_path)
    ident.key_path.write_text("half a key")
    with pytest.raises(ValueError, match=str(ident.key_path)):
        DeviceIdentity.load_or_create(tmp_path)
    assert ident.key_path.read_text() == "half a key"


def test_exclusive_create_never_replaces_a_file(tmp_path):
    from parallalx_jupyter.files import create_private_exclusive

    path = tmp_path / "key.pem"
    assert create_private_exclusive(path, b"first") is True
    assert create_private_exclusive(path, b"second") is False
    assert path.read_bytes() == b"first"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["key.pem"]
