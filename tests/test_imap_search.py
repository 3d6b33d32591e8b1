"""The Python SEARCH evaluator (the store's fallback for encrypted bodies)."""

from __future__ import annotations

import datetime as dt

import pytest

from mssante_operator.imap.commands import Search
from mssante_operator.imap.parser import parse_commands
from mssante_operator.imap.search import SearchMessage, decode_header_text, matches

RAW = (
    b"From: =?UTF-8?Q?Ren=C3=A9e_Dupont?= <renee@hopital-a.mssante.fr>\r\n"
    b"To: secretariat@cabinet-b.mssante.fr\r\n"
    b"Subject: =?UTF-8?B?Q29tcHRlIHJlbmR1IGQnaG9zcGl0YWxpc2F0aW9u?=\r\n"
    b"Date: Mon, 6 Jan 2025 23:30:00 +0100\r\n"
    b"X-MSS-INS: O\r\n"
    b"Content-Type: multipart/mixed; boundary=b\r\n\r\n"
    b"--b\r\nContent-Type: text/plain; charset=iso-8859-1\r\n"
    b"Content-Transfer-Encoding: quoted-printable\r\n\r\n"
    b"Glyc=E9mie normale, ordonnance jointe.\r\n"
    b"--b\r\nContent-Type: application/pdf\r\nContent-Transfer-Encoding: base64\r\n\r\nJVBERi0xLjQK\r\n"
    b"--b--\r\n"
)
MSG = SearchMessage(
    uid=42, flags=frozenset({"\\Seen", "$Urgent"}), modseq=17, size=len(RAW),
    internal_date=dt.datetime(2025, 1, 7, 8, 0, tzinfo=dt.UTC), raw=RAW, seq=3,
)  # fmt: skip


def check(criteria: str) -> bool:
    events = parse_commands(f"t SEARCH CHARSET UTF-8 {criteria}\r\n".encode())
    command = events[-1]
    assert isinstance(command, Search), command
    return matches(command.key, MSG, max_uid=100, count=10)


@pytest.mark.parametrize(
    ("criteria", "expected"),
    [
        ("ALL", True),
        ("SEEN", True),
        ("UNSEEN", False),
        ("FLAGGED", False),
        ("UNFLAGGED", True),
        ("KEYWORD $urgent", True),
        ("UNKEYWORD $Urgent", False),
        ("NEW", False),
        ("OLD", True),
        ('FROM "renée"', True),  # encoded words are decoded for matching
        ("FROM hopital-a", True),
        ("FROM cabinet", False),
        ("TO secretariat", True),
        ('SUBJECT "compte RENDU"', True),
        ("SUBJECT ordonnance", False),
        ('HEADER X-MSS-INS "O"', True),
        ('HEADER X-MSS-INS ""', True),
        ('HEADER X-MSS-MES ""', False),
        ('BODY "glycémie"', True),  # quoted-printable and ISO-8859-1 decoded
        ("BODY hospitalisation", False),
        ("TEXT hospitalisation", True),
        ("TEXT JVBERi0xLjQK", False),  # attachments are not text
        ("BEFORE 7-Jan-2025", False),
        ("ON 7-Jan-2025", True),
        ("SINCE 7-Jan-2025", True),
        ("SENTON 6-Jan-2025", True),
        ("SENTBEFORE 6-Jan-2025", False),
        ("SENTSINCE 7-Jan-2025", False),
        (f"LARGER {len(RAW) - 1}", True),
        (f"SMALLER {len(RAW)}", False),
        ("UID 40:45", True),
        ("UID 43:*", False),
        ("UID *", False),
        ("3", True),
        ("4:*", False),
        ("MODSEQ 17", True),
        ("MODSEQ 18", False),
        ("NOT SEEN", False),
        ("OR UNSEEN FROM renee", True),
        ("(SEEN FLAGGED)", False),
        ("SEEN NOT FLAGGED UID 42", True),
    ],
)
def test_search_keys(criteria: str, expected: bool) -> None:
    assert check(criteria) is expected


def test_decode_header_text() -> None:
    assert decode_header_text(b"=?UTF-8?Q?Ren=C3=A9e?= Dupont") == "Renée Dupont"
    assert decode_header_text("Zoé".encode()) == "Zoé"
    assert decode_header_text(b"=?bogus-charset?Q?x?=") == "=?bogus-charset?Q?x?="


def test_missing_date_and_unknown_charset() -> None:
    msg = SearchMessage(1, frozenset(), 1, 10, dt.datetime(2025, 1, 1, tzinfo=dt.UTC),
                        b"Content-Type: text/plain; charset=x-unknown\r\n\r\nhello")  # fmt: skip
    events = parse_commands(b"t SEARCH SENTON 1-Jan-2025\r\nu SEARCH BODY hello\r\n")
    assert isinstance(events[0], Search) and isinstance(events[1], Search)
    assert not matches(events[0].key, msg, max_uid=1)
    assert matches(events[1].key, msg, max_uid=1)


@pytest.mark.parametrize(
    ("criteria", "level"),
    [
        ("SEEN UID 1:5 LARGER 10 SINCE 1-Jan-2025 MODSEQ 3", "none"),
        ("FROM dupont", "summary"),
        ("HEADER X-Priority 1", "header"),
        ("NOT SENTSINCE 1-Jan-2025", "summary"),
        ("OR SEEN (UNSEEN BODY x)", "full"),
        ("OR FROM a TEXT b", "full"),
    ],
)
def test_content_needed(criteria: str, level: str) -> None:
    from mssante_operator.imap.search import content_needed

    command = parse_commands(f"t SEARCH {criteria}\r\n".encode())[-1]
    assert isinstance(command, Search)
    assert content_needed(command.key) == level
