"""The pure parts of submission: message preparation (hypothesis) and the policy decisions."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mssante_operator.auth import AuthIdentity, AuthMethod, AuthResult, Mechanism
from mssante_operator.smtp.address import parse_mail_from
from mssante_operator.smtp.message import (
    MessageFormatError,
    from_addresses,
    parse_header_block,
    prepare_submission,
    sending_software,
)
from mssante_operator.smtp.ports import Verdict
from mssante_operator.smtp.submission import header_from_decision, remote_recipient_decision, sender_decision
from mssante_operator.smtp.submission_ports import DirectoryListing

NOW = datetime(2026, 11, 22, 2, 0, tzinfo=UTC)
RECEIVED = (
    b"Received: from client ([127.0.0.1])\r\n"
    b"\tby mail.test with ESMTPSA id Q1; Sun, 22 Nov 2026 02:00:00 +0000\r\n"
)
JEAN = "jean.martin@hopital.mssante.test"

_name = st.from_regex(r"X-[A-Za-z0-9-]{1,20}", fullmatch=True)
_value = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=60)
_raw_value = st.binary(max_size=60).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))


@st.composite
def header_blocks(draw: st.DrawFn) -> tuple[list[bytes], bool, bool]:
    fields = [f"From: <{JEAN}>\r\n".encode()]
    for name, value in draw(st.lists(st.tuples(_name, _raw_value), max_size=8)):
        line = name.encode() + b": " + value + b"\r\n"
        if draw(st.booleans()):
            line += b"\t" + value + b"\r\n"  # a folded continuation line
        fields.append(line)
    has_date = draw(st.booleans())
    has_id = draw(st.booleans())
    if has_date:
        fields.append(b"Date: Sat, 21 Nov 2026 10:00:00 +0100\r\n")
    if has_id:
        fields.append(b"Message-ID: <abc@client.test>\r\n")
    order = draw(st.permutations(fields))
    return list(order), has_date, has_id


@given(header_blocks(), st.binary(max_size=200))
@settings(max_examples=200, deadline=None)
def test_prepared_message_keeps_the_client_bytes_and_adds_what_is_missing(
    block: tuple[list[bytes], bool, bool], body: bytes
) -> None:
    fields, has_date, has_id = block
    body = body.replace(b"\r", b"").replace(b"\n", b"\r\n")
    content = b"".join(fields) + b"\r\n" + body
    prepared = prepare_submission(content, received=RECEIVED, now=NOW, queue_id="Q1", hostname="mail.test")
    assert prepared.raw.startswith(RECEIVED)
    assert prepared.raw.endswith(content)  # byte for byte, X-MSS-* and folding included
    added = prepared.raw[len(RECEIVED) : len(prepared.raw) - len(content)]
    assert (b"Date: " in added) is not has_date
    assert (b"Message-ID: " in added) is not has_id
    head = parse_header_block(prepared.raw)
    assert len(head.get_all("Date")) == 1 and len(head.get_all("Message-ID")) == 1
    assert prepared.from_addresses == (JEAN,)
    assert (prepared.added_date, prepared.added_message_id) == (not has_date, not has_id)


@given(st.binary(max_size=400))
@settings(max_examples=300, deadline=None)
def test_random_bytes_never_crash(content: bytes) -> None:
    block = parse_header_block(content)
    assert 0 <= block.body_offset <= len(content)
    sending_software(block)
    try:
        prepared = prepare_submission(content, received=RECEIVED, now=NOW, queue_id="Q1", hostname="h.test")
    except MessageFormatError as exc:
        assert str(exc)
    else:
        assert prepared.raw.endswith(content)


def test_sending_software_is_read_and_kept_verbatim() -> None:
    content = b"From: <a@b.test>\r\nX-MSS-NIL: LGC-Hopital/12.3\r\n (build 7)\r\nX-mss-ins: O\r\n\r\nbody\r\n"
    prepared = prepare_submission(content, received=RECEIVED, now=NOW, queue_id="Q", hostname="h.test")
    assert prepared.software == "LGC-Hopital/12.3 (build 7)"
    assert b"X-MSS-NIL: LGC-Hopital/12.3\r\n (build 7)\r\nX-mss-ins: O\r\n" in prepared.raw


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"Subject: x\r\n\r\nbody\r\n", "no From: header"),
        (b"From: <a@b.test>\r\nFrom: <c@d.test>\r\n\r\n", "2 From: header fields"),
        (b"From: undisclosed\r\n\r\n", "no usable mail address"),
        (b"not a header line\r\nFrom: <a@b.test>\r\n\r\n", "no From: header"),
    ],
)
def test_from_problems_are_named(content: bytes, message: str) -> None:
    with pytest.raises(MessageFormatError, match=message):
        from_addresses(parse_header_block(content))


def test_from_with_display_name_and_several_addresses() -> None:
    block = parse_header_block(
        b'From: "Martin, Jean" <a@b.test>,\r\n =?utf-8?q?Dr_=C3=89?= <c@d.test>\r\n\r\n'
    )
    assert from_addresses(block) == ["a@b.test", "c@d.test"]


# -- decisions -------------------------------------------------------------------------------------


def _auth(*mailboxes: str) -> AuthResult:
    identity = AuthIdentity(AuthMethod.PASSWORD, Mechanism.PLAIN, f"mailbox:{mailboxes[0]}")
    return AuthResult(True, identity, tuple(mailboxes), "ok", "Authentication successful")


def test_sender_decisions() -> None:
    own, _ = parse_mail_from(f"FROM:<{JEAN}>")
    other, _ = parse_mail_from("FROM:<claire@hopital.mssante.test>")
    assert sender_decision(None, own).reply.code == 530
    assert sender_decision(_auth(JEAN), own).allowed
    assert sender_decision(_auth(JEAN), None).allowed  # null sender: DSN / MDN
    refused = sender_decision(_auth(JEAN), other)
    assert (refused.reply.code, refused.reply.enhanced, refused.reason) == (553, "5.7.1", "not_own_sender")
    assert not header_from_decision(_auth(JEAN), (JEAN, "claire@hopital.mssante.test")).allowed
    assert header_from_decision(_auth(JEAN), (JEAN.upper(),)).allowed


def test_remote_recipient_decisions() -> None:
    ok = Verdict(True)
    outside = Verdict(False, "recipient domain x.test is not in the MSSanté trust list")
    decision = remote_recipient_decision("a@x.test", outside, DirectoryListing.UNKNOWN, unlisted="accept")
    assert (decision.reply.code, decision.reply.enhanced) == (
        550,
        "5.7.1",
    ) and "x.test" in decision.reply.text
    temporary = remote_recipient_decision(
        "a@x.test", Verdict(False, "not loaded", temporary=True), DirectoryListing.UNKNOWN, unlisted="accept"
    )
    assert temporary.reply.code == 451
    assert remote_recipient_decision("a@x.test", ok, DirectoryListing.NOT_LISTED, unlisted="accept").allowed
    refused = remote_recipient_decision("a@x.test", ok, DirectoryListing.NOT_LISTED, unlisted="refuse")
    assert (refused.reply.code, refused.reply.enhanced) == (550, "5.1.1")
    assert remote_recipient_decision("a@x.test", ok, DirectoryListing.UNKNOWN, unlisted="refuse").allowed
