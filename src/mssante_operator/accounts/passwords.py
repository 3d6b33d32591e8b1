"""Password hashing (argon2id via argon2-cffi) and the minimal password rules.

Hashing and verifying cost tens of milliseconds of CPU on purpose: from an asyncio front end call
them through `asyncio.to_thread`.
"""

from __future__ import annotations

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

MIN_PASSWORD_LENGTH = 12
MAX_PASSWORD_LENGTH = 1024

# argon2-cffi's defaults follow RFC 9106's second recommended profile (argon2id, 64 MiB, t=3).
_hasher = PasswordHasher()


class PasswordError(ValueError):
    """A password that cannot be used; the message says why (never the password itself)."""


class PasswordHashError(ValueError):
    """A stored hash that is not an argon2 hash this server understands."""


def check_password(password: str) -> str:
    """Return the password if it meets the rules, else raise PasswordError naming the rule."""
    if not isinstance(password, str):
        raise PasswordError("password must be text")
    if len(password) < MIN_PASSWORD_LENGTH:
        raise PasswordError(f"password is too short: at least {MIN_PASSWORD_LENGTH} characters are required")
    if len(password) > MAX_PASSWORD_LENGTH:
        raise PasswordError(f"password is longer than {MAX_PASSWORD_LENGTH} characters")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in password):
        raise PasswordError("password contains control characters (a stray newline or tab?)")
    if len(set(password)) < 4:
        raise PasswordError("password uses fewer than 4 distinct characters")
    return password


def hash_password(password: str) -> str:
    """An argon2id hash (PHC string) of a password that passes `check_password`."""
    return _hasher.hash(check_password(password))


def verify_password(password_hash: str, password: str) -> bool:
    """True when `password` matches; False when it does not.

    Raises PasswordHashError when the stored value is not an argon2 hash (a damaged record is
    not the same as a wrong password and must be seen by an operator).
    """
    try:
        return _hasher.verify(password_hash, password)
    except VerifyMismatchError:
        return False
    except InvalidHashError:
        raise PasswordHashError("stored password hash is not a valid argon2 hash") from None
    except VerificationError:
        return False


def needs_rehash(password_hash: str) -> bool:
    """True when the hash was made with weaker parameters than today's: re-hash after a good login."""
    try:
        return _hasher.check_needs_rehash(password_hash)
    except (InvalidHashError, ValueError):
        raise PasswordHashError("stored password hash is not a valid argon2 hash") from None
