# ruff: noqa: E501
"""SORT and THREAD (RFC 5256)."""

from __future__ import annotations

import datetime as dt

import pytest

from mssante_operator.imap.sort import (
    SortMessage,
    ThreadNode,
    base_subject,
    render_threads,
    sort_messages,
    thread_messages,
)

T0 = dt.datetime(2025, 1, 6, 10, tzinfo=dt.UTC)


@pytest.mark.parametrize(
    ("subject", "base", "reply"),
    [
        (b"Compte rendu", "compte rendu", False),
        (b"Re: Compte rendu", "compte rendu", True),
        (b"RE:  Re: compte   RENDU", "compte rendu", True),
        (b"Fwd: Compte rendu (fwd)", "compte rendu", True),
        (b"[mssante] Re: Compte rendu", "compte rendu", True),
        (b"Re [2]: Compte rendu", "compte rendu", True),
        (b"[Fwd: Compte rendu]", "compte rendu", True),
        (b"=?UTF-8?Q?R=C3=A9sultats?=", "résultats", False),
        (b"[only a blob]", "[only a blob]", False),
        (b"", "", False),
    ],
)
def test_base_subject(subject: bytes, base: str, reply: bool) -> None:
    assert base_subject(subject) == (base, reply)


def msg(number: int, *, subject: str = "s", sender: str = "a@x.fr", to: str = "z@x.fr", cc: str | None = None,
        date: str | None = "Mon, 6 Jan 2025 10:00:00 +0000", size: int = 100, arrival: int = 0,
        msgid: str | None = None, refs: str | None = None, reply_to: str | None = None) -> SortMessage:  # fmt: skip
    lines = [f"From: {sender}", f"To: {to}", f"Subject: {subject}"]
    if cc:
        lines.append(f"Cc: {cc}")
    if date:
        lines.append(f"Date: {date}")
    if msgid:
        lines.append(f"Message-ID: {msgid}")
    if refs:
        lines.append(f"References: {refs}")
    if reply_to:
        lines.append(f"In-Reply-To: {reply_to}")
    header = ("\r\n".join(lines) + "\r\n\r\n").encode()
    return SortMessage(number, number, T0 + dt.timedelta(minutes=arrival), size, header)


def test_sort_keys() -> None:
    m1 = msg(
        1,
        subject="Re: beta",
        sender="Zoé <zoe@x.fr>",
        size=300,
        arrival=5,
        date="Mon, 6 Jan 2025 12:00:00 +0100",
    )
    m2 = msg(
        2, subject="alpha", sender="bob@x.fr", size=100, arrival=1, date="Mon, 6 Jan 2025 10:30:00 +0000"
    )
    m3 = msg(3, subject="gamma", sender='"Alice" <zed@x.fr>', size=200, arrival=3, date=None, cc="c@x.fr")
    all_ = [m1, m2, m3]
    assert sort_messages([("ARRIVAL", False)], all_) == [2, 3, 1]
    assert sort_messages([("SIZE", True)], all_) == [1, 3, 2]
    assert sort_messages([("SUBJECT", False)], all_) == [2, 1, 3]
    assert sort_messages([("FROM", False)], all_) == [2, 3, 1]  # bob, zed, zoe (mailbox part)
    assert sort_messages([("DISPLAYFROM", False)], all_) == [3, 2, 1]  # alice, bob@x.fr, zoé
    # DATE: m1 is 11:00 UTC, m2 10:30 UTC, m3 has no Date: its arrival (10:03) is used.
    assert sort_messages([("DATE", False)], all_) == [3, 2, 1]
    assert sort_messages([("CC", False)], all_) == [1, 2, 3]  # empty CCs first, ties in sequence order
    assert sort_messages([("TO", False), ("ARRIVAL", True)], all_) == [1, 3, 2]
    with pytest.raises(ValueError, match="unknown sort key"):
        sort_messages([("BOGUS", False)], all_)


def test_thread_ordered_subject() -> None:
    messages = [
        msg(1, subject="Résultats", date="Mon, 6 Jan 2025 10:00:00 +0000"),
        msg(2, subject="Autre", date="Mon, 6 Jan 2025 09:00:00 +0000"),
        msg(3, subject="Re: Résultats", date="Mon, 6 Jan 2025 11:00:00 +0000"),
        msg(4, subject="RE: résultats", date="Mon, 6 Jan 2025 12:00:00 +0000"),
        msg(5, subject="Autre", date="Mon, 6 Jan 2025 13:00:00 +0000"),
    ]
    assert render_threads(thread_messages("ORDEREDSUBJECT", messages)) == b"* THREAD (2 5)(1 (3)(4))\r\n"


def test_thread_references() -> None:
    messages = [
        msg(1, subject="Résultats", msgid="<a@x>", date="Mon, 6 Jan 2025 10:00:00 +0000"),
        msg(2, subject="Re: Résultats", msgid="<b@x>", refs="<a@x>", date="Mon, 6 Jan 2025 11:00:00 +0000"),
        msg(
            3,
            subject="Re: Résultats",
            msgid="<c@x>",
            refs="<a@x> <b@x>",
            date="Mon, 6 Jan 2025 12:00:00 +0000",
        ),
        msg(
            4, subject="Re: Résultats", msgid="<d@x>", reply_to="<a@x>", date="Mon, 6 Jan 2025 13:00:00 +0000"
        ),
        msg(5, subject="Autre", msgid="<e@x>", date="Mon, 6 Jan 2025 09:00:00 +0000"),
        # Replies to a message we do not have: a dummy parent with two children.
        msg(6, subject="Re: Lost", msgid="<f@x>", refs="<lost@x>", date="Mon, 6 Jan 2025 14:00:00 +0000"),
        msg(7, subject="Re: Lost", msgid="<g@x>", refs="<lost@x>", date="Mon, 6 Jan 2025 15:00:00 +0000"),
        # A reply whose parent is unknown but whose subject matches an existing thread joins it.
        msg(8, subject="Re: Autre", msgid="<h@x>", date="Mon, 6 Jan 2025 16:00:00 +0000"),
    ]
    assert (
        render_threads(thread_messages("REFERENCES", messages)) == b"* THREAD (5 8)(1 (2 3)(4))((6)(7))\r\n"
    )


def test_reference_loops_and_duplicates_do_not_hang() -> None:
    messages = [
        msg(1, msgid="<a@x>", refs="<b@x>"),
        msg(2, msgid="<b@x>", refs="<a@x>"),
        msg(3, msgid="<a@x>"),
        msg(4),
    ]
    text = render_threads(thread_messages("REFERENCES", messages))
    assert sorted(int(n) for n in text[9:-2].replace(b"(", b" ").replace(b")", b" ").split()) == [1, 2, 3, 4]
    with pytest.raises(ValueError):
        thread_messages("BOGUS", messages)


def test_render_dummy_root() -> None:
    root = ThreadNode(None, [ThreadNode(3), ThreadNode(5)])
    assert render_threads([root, ThreadNode(2)]) == b"* THREAD ((3)(5))(2)\r\n"
    assert render_threads([]) == b"* THREAD\r\n"
