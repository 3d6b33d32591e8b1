"""Encryption at rest: the master key file, mailbox data keys, body encryption.

Key hierarchy:

* the **master key** (32 random bytes in a file readable by the server's user only) wraps
* one **data key** per mailbox (AES-256, `Mailbox.wrapped_data_key`, AES key wrap RFC 3394), which wraps
* one **content key** per message body (AES-256-GCM), so a body is encrypted once however many
  local recipients it has; the outbound queue wraps the content key with the master key directly.

Ciphertext layout: ``nonce (12) || ciphertext || tag (16)``. The associated data binds the
ciphertext to its body id, so ciphertexts cannot be swapped between rows undetected.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.keywrap import InvalidUnwrap, aes_key_unwrap, aes_key_wrap

KEY_SIZE = 32
NONCE_SIZE = 12
TAG_SIZE = 16
WRAPPED_KEY_SIZE = KEY_SIZE + 8  # RFC 3394 adds one 64-bit block


class CryptoError(Exception):
    """Base of every encryption-at-rest failure; the message says what failed, never key material."""


class KeyFileError(CryptoError):
    """The master key file is missing, unreadable, the wrong size or too widely readable."""


class KeyUnwrapError(CryptoError):
    """A wrapped key did not unwrap: it was wrapped by another key, or the stored value is damaged."""


class BodyIntegrityError(CryptoError):
    """A body ciphertext failed authentication: tampered with, swapped, truncated or the wrong key."""


def _check_key(key: bytes, what: str) -> None:
    if not isinstance(key, bytes | bytearray) or len(key) != KEY_SIZE:
        size = len(key) if isinstance(key, bytes | bytearray) else type(key).__name__
        raise CryptoError(f"{what} must be {KEY_SIZE} bytes, got {size}")


def new_data_key() -> bytes:
    """A fresh random AES-256 key (mailbox data key or body content key)."""
    return AESGCM.generate_key(bit_length=256)


def wrap_key(kek: bytes, key: bytes) -> bytes:
    """Wrap `key` (32 bytes) with the key-encryption key `kek` (RFC 3394 AES key wrap)."""
    _check_key(kek, "key-encryption key")
    _check_key(key, "key to wrap")
    return aes_key_wrap(bytes(kek), bytes(key))


def unwrap_key(kek: bytes, wrapped: bytes, *, what: str = "key") -> bytes:
    """Inverse of `wrap_key`; raise KeyUnwrapError if `wrapped` was not wrapped by `kek`."""
    _check_key(kek, "key-encryption key")
    if len(wrapped) != WRAPPED_KEY_SIZE:
        raise KeyUnwrapError(f"wrapped {what} is {len(wrapped)} bytes, expected {WRAPPED_KEY_SIZE}")
    try:
        return aes_key_unwrap(bytes(kek), bytes(wrapped))
    except InvalidUnwrap:
        raise KeyUnwrapError(
            f"the {what} does not unwrap: it was wrapped by a different key, or the stored value is damaged"
        ) from None


def encrypt_body(key: bytes, plaintext: bytes, aad: bytes) -> bytes:
    """AES-256-GCM: ``nonce || ciphertext || tag`` with a fresh random nonce."""
    _check_key(key, "content key")
    nonce = os.urandom(NONCE_SIZE)
    return nonce + AESGCM(bytes(key)).encrypt(nonce, plaintext, aad)


def decrypt_body(key: bytes, blob: bytes, aad: bytes) -> bytes:
    """Inverse of `encrypt_body`; raise BodyIntegrityError if anything does not authenticate."""
    _check_key(key, "content key")
    if len(blob) < NONCE_SIZE + TAG_SIZE:
        raise BodyIntegrityError(
            f"body ciphertext is {len(blob)} bytes, shorter than nonce and tag ({NONCE_SIZE + TAG_SIZE})"
        )
    try:
        return AESGCM(bytes(key)).decrypt(blob[:NONCE_SIZE], blob[NONCE_SIZE:], aad)
    except InvalidTag:
        raise BodyIntegrityError(
            "body ciphertext failed authentication: it was altered, truncated, swapped with another "
            "body's, or its key is wrong"
        ) from None


class MasterKey:
    """The instance master key. Load it from its file; it never appears in logs or reprs."""

    __slots__ = ("_key",)

    def __init__(self, key: bytes) -> None:
        _check_key(key, "master key")
        self._key = bytes(key)

    def __repr__(self) -> str:
        return f"MasterKey(fingerprint={self.fingerprint})"

    @property
    def fingerprint(self) -> str:
        """A short, non-secret identifier of the key, to tell two key files apart."""
        return hashlib.sha256(b"mssante-operator master key fingerprint\x00" + self._key).hexdigest()[:16]

    def wrap(self, key: bytes) -> bytes:
        return wrap_key(self._key, key)

    def unwrap(self, wrapped: bytes) -> bytes:
        try:
            return unwrap_key(self._key, wrapped, what="key wrapped by the master key")
        except KeyUnwrapError as exc:
            raise KeyUnwrapError(
                f"{exc} (is this the master key file the store was created with? "
                f"fingerprint {self.fingerprint})"
            ) from None

    @classmethod
    def load(cls, path: Path) -> MasterKey:
        """Read the key file; refuse a missing file, a wrong size, or group/other permissions."""
        path = Path(path)
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0))
        except FileNotFoundError:
            raise KeyFileError(
                f"master key file {path} does not exist; create it with `mssante-operator keys generate`"
                " (only for a new instance: an existing store needs its original key, restore it from backup)"
            ) from None
        except PermissionError:
            raise KeyFileError(f"master key file {path}: permission denied for this user") from None
        except OSError as exc:
            if path.is_symlink():
                raise KeyFileError(
                    f"master key file {path} is a symbolic link; point the setting at the file itself"
                ) from None
            raise KeyFileError(f"master key file {path}: cannot open: {exc.strerror}") from None
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise KeyFileError(f"master key file {path} is not a regular file")
            if info.st_mode & 0o077:
                raise KeyFileError(
                    f"master key file {path} has mode {stat.S_IMODE(info.st_mode):04o}: group or others "
                    f"can access it; run `chmod 600 {path}`"
                )
            if info.st_size != KEY_SIZE:
                raise KeyFileError(
                    f"master key file {path} is {info.st_size} bytes, expected exactly {KEY_SIZE} "
                    "(raw random bytes, as written by `mssante-operator keys generate`)"
                )
            data = os.read(fd, KEY_SIZE + 1)
        finally:
            os.close(fd)
        if len(data) != KEY_SIZE:
            raise KeyFileError(f"master key file {path}: read {len(data)} bytes, expected {KEY_SIZE}")
        return cls(data)

    @classmethod
    def generate(cls, path: Path) -> MasterKey:
        """Create a new key file (mode 0600) atomically; refuse to replace an existing one."""
        path = Path(path)
        if path.exists() or path.is_symlink():
            raise KeyFileError(
                f"master key file {path} already exists; refusing to replace it (every stored message "
                "would become unreadable)"
            )
        directory = path.parent
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        key = new_data_key()
        tmp = directory / f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o600)
        try:
            try:
                os.fchmod(fd, 0o600)  # the umask cannot widen 0600, but be explicit
                os.write(fd, key)
                os.fsync(fd)
            finally:
                os.close(fd)
            # link() fails if the target exists, unlike rename(): two concurrent generators cannot
            # overwrite each other's key.
            try:
                os.link(tmp, path)
            except FileExistsError:
                raise KeyFileError(f"master key file {path} already exists; refusing to replace it") from None
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        return cls(key)

    @classmethod
    def load_or_generate(cls, path: Path) -> MasterKey:
        """Load the key file, creating it first if it does not exist (safe to call on every start)."""
        path = Path(path)
        if not path.exists() and not path.is_symlink():
            try:
                return cls.generate(path)
            except KeyFileError:
                # Lost a race with another generator: load the winner's key below.
                if not path.exists():
                    raise
        return cls.load(path)
