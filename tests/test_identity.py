import os
import stat

import pytest

from parallalx_jupyter.identity import (
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
