"""RFC 5321 MAIL FROM / RCPT TO argument parsing."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mssante_operator.smtp.address import Address, PathError, parse_mail_from, parse_rcpt_to


def test_mail_from_variants() -> None:
    assert parse_mail_from("FROM:<Jean.Martin@Hopital.Example>") == (
        Address("Jean.Martin", "hopital.example"),
        [],
    )
    assert parse_mail_from("from: <a@b.c> SIZE=10 RET=HDRS") == (Address("a", "b.c"), ["SIZE=10", "RET=HDRS"])
    assert parse_mail_from("FROM:<>") == (None, [])
    assert parse_mail_from("FROM:<> ENVID=x") == (None, ["ENVID=x"])
    assert parse_mail_from('FROM:<"odd >name"@b.c>') == (Address('"odd >name"', "b.c"), [])
    assert parse_mail_from("FROM:<@relay.example:a@b.c>") == (Address("a", "b.c"), [])
    assert parse_mail_from("FROM:<a@[192.0.2.1]>") == (Address("a", "[192.0.2.1]"), [])
    assert parse_mail_from("FROM:<a@[IPv6:2001:db8::1]>") == (Address("a", "[ipv6:2001:db8::1]"), [])


def test_rcpt_to_variants() -> None:
    assert parse_rcpt_to("TO:<x@y.z> NOTIFY=NEVER") == (Address("x", "y.z"), ["NOTIFY=NEVER"])
    postmaster, _ = parse_rcpt_to("TO:<Postmaster>")
    assert postmaster.is_postmaster and postmaster.domain == ""


@pytest.mark.parametrize(
    ("arg", "expected"),
    [
        ("<a@b.c>", "501 5.5.4 Syntax: MAIL FROM"),
        ("FROM:a@b.c", "501 5.1.7 Invalid sender address: the sender address must be enclosed"),
        ("FROM:<a@b.c", "501 5.1.7 Invalid sender address: the sender address is missing its closing"),
        ("FROM:<a@b.c>SIZE=1", "501 5.1.7 Invalid sender address: expected a space"),
        ("FROM:<ab.c>", "501 5.1.7 Invalid sender address: address has no '@domain'"),
        ("FROM:<a..b@c.d>", "501 5.1.7 Invalid sender address: invalid character or dot placement"),
        ("FROM:<a@-b.c>", "501 5.1.7 Invalid sender address: invalid character in domain label"),
        ("FROM:<a@b..c>", "501 5.1.7 Invalid sender address: empty label"),
        ("FROM:<" + "x" * 65 + "@b.c>", "501 5.1.7 Invalid sender address: local part is longer than 64"),
        ("FROM:<a@[300.1.1.1]>", "501 5.1.7 Invalid sender address: invalid address literal"),
        ("FROM:<jérôme@b.c>", "553 5.6.7 Non-ASCII sender address needs SMTPUTF8"),
    ],
)
def test_mail_from_errors(arg: str, expected: str) -> None:
    with pytest.raises(PathError) as info:
        parse_mail_from(arg)
    assert str(info.value.reply).startswith(expected)


@pytest.mark.parametrize(
    ("arg", "expected"),
    [
        ("TO:<>", "501 5.1.3 Invalid recipient address: the null address"),
        ("FROM:<a@b.c>", "501 5.5.4 Syntax: RCPT TO"),
        ("TO:<a b@c.d>", "501 5.1.3 Invalid recipient address"),
    ],
)
def test_rcpt_to_errors(arg: str, expected: str) -> None:
    with pytest.raises(PathError) as info:
        parse_rcpt_to(arg)
    assert str(info.value.reply).startswith(expected)


@given(st.emails())
def test_valid_emails_parse(email: str) -> None:
    local, _, domain = email.rpartition("@")
    if len(local) > 64 or len(email) > 254:
        return
    address, params = parse_rcpt_to(f"TO:<{email}>")
    assert params == []
    assert address == Address(local, domain.lower())


@given(st.text(max_size=80))
def test_random_arguments_never_crash(arg: str) -> None:
    for parse in (parse_mail_from, parse_rcpt_to):
        for prefix in ("", "FROM:<", "TO:<"):
            try:
                parse(prefix + arg)
            except PathError as exc:
                assert exc.reply.code in (501, 553)
