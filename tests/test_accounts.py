"""Account policy: owners by mailbox type, sizes, passwords."""

from __future__ import annotations

import pytest
from argon2 import PasswordHasher

from mssante_operator.accounts import (
    AccountError,
    PasswordError,
    PasswordHashError,
    check_password,
    hash_password,
    needs_rehash,
    parse_mailbox_type,
    parse_size,
    password_allowed,
    status_change,
    validate_new_mailbox,
    validate_owner,
    verify_password,
)
from mssante_operator.config import MailboxType
from mssante_operator.store.models import MailboxStatus

RPPS_ID = "810000000009"
ADELI_ID = "0751234567"
FINESS = "1750000018"


def test_per_requires_valid_national_id() -> None:
    assert validate_owner(MailboxType.PER, RPPS_ID, None).owner_national_id == RPPS_ID
    assert validate_owner(MailboxType.PER, ADELI_ID, FINESS).structure_id == FINESS
    with pytest.raises(AccountError, match="needs its owner's national id"):
        validate_owner(MailboxType.PER, None, FINESS)
    with pytest.raises(AccountError, match=r"fails its check digit \(Luhn\)"):
        validate_owner(MailboxType.PER, "810000000008", None)
    with pytest.raises(AccountError, match="ADELI number must be 9 characters"):
        validate_owner(MailboxType.PER, "07512345X7", None)
    with pytest.raises(AccountError, match="8\\+RPPS"):
        validate_owner(MailboxType.PER, "12345", None)


@pytest.mark.parametrize("kind", [MailboxType.ORG, MailboxType.APP])
def test_org_and_app_need_structure_and_no_person(kind: MailboxType) -> None:
    assert validate_owner(kind, None, FINESS).structure_id == FINESS
    with pytest.raises(AccountError, match="needs a structure id"):
        validate_owner(kind, None, None)
    with pytest.raises(AccountError, match="not a person"):
        validate_owner(kind, RPPS_ID, FINESS)
    with pytest.raises(AccountError, match=r"structure id: .*must start with 1"):
        validate_owner(kind, None, "9123")


def test_cab_needs_one_or_both() -> None:
    assert validate_owner(MailboxType.CAB, RPPS_ID, None).owner_national_id == RPPS_ID
    assert validate_owner(MailboxType.CAB, None, FINESS).structure_id == FINESS
    with pytest.raises(AccountError, match="CAB mailbox needs"):
        validate_owner(MailboxType.CAB, None, " ")


def test_validate_new_mailbox() -> None:
    req = validate_new_mailbox(
        "Jean.Martin@Hopital.fr", "per", owner_national_id=RPPS_ID, display_name=" Dr Jean ", quota="2G"
    )
    assert req.address == "jean.martin@hopital.fr" and req.type is MailboxType.PER
    assert req.display_name == "Dr Jean" and req.quota_bytes == 2 * 1024**3
    with pytest.raises(AccountError, match="one of PER, ORG, APP, CAB"):
        validate_new_mailbox("a@b.fr", "XYZ")
    with pytest.raises(AccountError, match="exactly one '@'"):
        validate_new_mailbox("nope", "PER", owner_national_id=RPPS_ID)
    with pytest.raises(AccountError, match="control characters"):
        validate_new_mailbox("a@b.fr", "PER", owner_national_id=RPPS_ID, display_name="a\x00b")


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("2G", 2 * 1024**3),
        ("500M", 500 * 1024**2),
        ("1.5GiB", 3 * 1024**3 // 2),
        ("1024", 1024),
        ("10kb", 10240),
    ],
)
def test_parse_size(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("bad", ["", "G", "2X", "-1G", "0", "two"])
def test_parse_size_errors(bad: str) -> None:
    with pytest.raises(AccountError, match="size"):
        parse_size(bad)


def test_parse_mailbox_type() -> None:
    assert parse_mailbox_type(" org ") is MailboxType.ORG


def test_password_rules() -> None:
    assert check_password("correct horse battery") == "correct horse battery"
    with pytest.raises(PasswordError, match="at least 12"):
        check_password("short")
    with pytest.raises(PasswordError, match="control characters"):
        check_password("a long password\n")
    with pytest.raises(PasswordError, match="distinct"):
        check_password("aaaaaaaaaaaaaaaa")


def test_hash_and_verify() -> None:
    h = hash_password("correct horse battery")
    assert h.startswith("$argon2id$")
    assert "correct horse battery" not in h
    assert verify_password(h, "correct horse battery")
    assert not verify_password(h, "correct horse batterY")
    assert not needs_rehash(h)
    assert hash_password("correct horse battery") != h  # salted
    with pytest.raises(PasswordHashError):
        verify_password("not a hash", "x")
    with pytest.raises(PasswordHashError):
        needs_rehash("not a hash")


def test_weak_parameters_need_rehash() -> None:
    weak = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1).hash("correct horse battery")
    assert verify_password(weak, "correct horse battery")
    assert needs_rehash(weak)


def test_password_policy_and_status_change() -> None:
    assert not password_allowed(MailboxType.PER, []).allowed
    assert "password_allowed_types" in password_allowed(MailboxType.PER, []).reason
    assert password_allowed(MailboxType.PER, [MailboxType.PER]).allowed
    assert status_change(MailboxStatus.ACTIVE, MailboxStatus.SUSPENDED).allowed
    assert "already" in status_change(MailboxStatus.ACTIVE, MailboxStatus.ACTIVE).reason
    assert not status_change(MailboxStatus.CLOSED, MailboxStatus.SUSPENDED).allowed
