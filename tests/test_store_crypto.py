"""Master key file handling and the body/key encryption primitives."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from mssante_operator.store.crypto import (
    KEY_SIZE,
    BodyIntegrityError,
    CryptoError,
    KeyFileError,
    KeyUnwrapError,
    MasterKey,
    decrypt_body,
    encrypt_body,
    new_data_key,
    unwrap_key,
    wrap_key,
)


def test_generate_creates_0600_file_of_32_bytes(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "master.key"
    key = MasterKey.generate(path)
    info = path.stat()
    assert stat.S_IMODE(info.st_mode) == 0o600
    assert info.st_size == KEY_SIZE
    assert MasterKey.load(path).fingerprint == key.fingerprint
    # no temporary file left behind
    assert [p.name for p in path.parent.iterdir()] == ["master.key"]


def test_generate_refuses_to_replace(tmp_path: Path) -> None:
    path = tmp_path / "master.key"
    first = MasterKey.generate(path)
    with pytest.raises(KeyFileError, match="already exists"):
        MasterKey.generate(path)
    assert MasterKey.load(path).fingerprint == first.fingerprint


def test_load_or_generate_is_idempotent(tmp_path: Path) -> None:
    path = tmp_path / "master.key"
    a = MasterKey.load_or_generate(path)
    b = MasterKey.load_or_generate(path)
    assert a.fingerprint == b.fingerprint


def test_generated_keys_differ(tmp_path: Path) -> None:
    a = MasterKey.generate(tmp_path / "a.key")
    b = MasterKey.generate(tmp_path / "b.key")
    assert a.fingerprint != b.fingerprint


def test_load_missing_file_says_how_to_create(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match=r"does not exist.*keys generate"):
        MasterKey.load(tmp_path / "nope.key")


@pytest.mark.parametrize("size", [0, 16, 31, 33, 44, 64])
def test_load_wrong_size(tmp_path: Path, size: int) -> None:
    path = tmp_path / "master.key"
    path.write_bytes(os.urandom(size))
    path.chmod(0o600)
    with pytest.raises(KeyFileError, match=rf"is {size} bytes, expected exactly 32"):
        MasterKey.load(path)


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o660, 0o602, 0o620])
def test_load_refuses_group_or_world_access(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "master.key"
    MasterKey.generate(path)
    path.chmod(mode)
    with pytest.raises(KeyFileError, match=rf"mode {mode:04o}.*chmod 600"):
        MasterKey.load(path)


def test_load_accepts_0400(tmp_path: Path) -> None:
    path = tmp_path / "master.key"
    MasterKey.generate(path)
    path.chmod(0o400)
    MasterKey.load(path)


def test_load_refuses_directory_and_symlink(tmp_path: Path) -> None:
    d = tmp_path / "dir.key"
    d.mkdir(mode=0o700)
    with pytest.raises(KeyFileError, match="not a regular file"):
        MasterKey.load(d)
    real = tmp_path / "real.key"
    MasterKey.generate(real)
    link = tmp_path / "link.key"
    link.symlink_to(real)
    with pytest.raises(KeyFileError, match="symbolic link"):
        MasterKey.load(link)


def test_repr_does_not_leak_key(tmp_path: Path) -> None:
    path = tmp_path / "master.key"
    key = MasterKey.generate(path)
    raw = path.read_bytes()
    assert raw.hex() not in repr(key)
    assert key.fingerprint in repr(key)


def test_wrap_unwrap_round_trip_and_wrong_master(tmp_path: Path) -> None:
    a = MasterKey(os.urandom(32))
    b = MasterKey(os.urandom(32))
    data_key = new_data_key()
    wrapped = a.wrap(data_key)
    assert len(wrapped) == 40 and data_key not in wrapped
    assert a.unwrap(wrapped) == data_key
    with pytest.raises(KeyUnwrapError, match="wrapped by a different key"):
        b.unwrap(wrapped)
    with pytest.raises(KeyUnwrapError, match="is 39 bytes"):
        a.unwrap(wrapped[:-1])


def test_wrap_key_checks_sizes() -> None:
    with pytest.raises(CryptoError, match="must be 32 bytes"):
        wrap_key(os.urandom(16), new_data_key())
    with pytest.raises(CryptoError, match="must be 32 bytes"):
        wrap_key(new_data_key(), os.urandom(8))
    kek, key = new_data_key(), new_data_key()
    assert unwrap_key(kek, wrap_key(kek, key)) == key


def test_encrypt_decrypt_round_trip() -> None:
    key = new_data_key()
    plaintext = b"Subject: secret\r\n\r\npatient data"
    blob = encrypt_body(key, plaintext, b"aad")
    assert plaintext not in blob
    assert len(blob) == 12 + len(plaintext) + 16
    assert decrypt_body(key, blob, b"aad") == plaintext
    # fresh nonce every time
    assert encrypt_body(key, plaintext, b"aad") != blob


def test_every_flipped_byte_is_detected() -> None:
    key = new_data_key()
    blob = encrypt_body(key, b"hello world, this is a body", b"body:1")
    for i in range(len(blob)):
        tampered = bytearray(blob)
        tampered[i] ^= 0x01
        with pytest.raises(BodyIntegrityError, match="failed authentication"):
            decrypt_body(key, bytes(tampered), b"body:1")


def test_wrong_aad_truncation_and_wrong_key_detected() -> None:
    key = new_data_key()
    blob = encrypt_body(key, b"body", b"body:1")
    with pytest.raises(BodyIntegrityError):
        decrypt_body(key, blob, b"body:2")
    with pytest.raises(BodyIntegrityError):
        decrypt_body(new_data_key(), blob, b"body:1")
    with pytest.raises(BodyIntegrityError, match="shorter than nonce and tag"):
        decrypt_body(key, blob[:20], b"body:1")
    with pytest.raises(BodyIntegrityError):
        decrypt_body(key, blob[:-1], b"body:1")
