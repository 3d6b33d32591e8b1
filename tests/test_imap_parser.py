"""The IMAP command parser: every command, every error path, framing, limits, properties."""
# ruff: noqa: E501  (command tables read best one command per line)

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mssante_operator.imap import commands as c
from mssante_operator.imap import response
from mssante_operator.imap.commands import NEED_DATA, PAUSED, Event
from mssante_operator.imap.parser import CommandParser, parse_commands
from mssante_operator.imap.sequence import SAVED, SequenceSet

S = SequenceSet.parse


def one(line: bytes, **options: int) -> Event:
    events = [e for e in parse_commands(line, **options) if not isinstance(e, c.ContinuationRequest)]
    assert len(events) == 1, events
    return events[0]


def bad(line: bytes, **options: int) -> c.BadCommand:
    event = one(line, **options)
    assert isinstance(event, c.BadCommand), event
    return event


TZ1 = dt.timezone(dt.timedelta(hours=1))

# ----------------------------------------------------------------------------------- every command

VALID: list[tuple[bytes, c.Command]] = [
    (b"a1 CAPABILITY", c.Capability("a1")),
    (b"a1 capability", c.Capability("a1")),
    (b"a1 NOOP", c.Noop("a1")),
    (b"a1 LOGOUT", c.Logout("a1")),
    (b"a1 STARTTLS", c.StartTLS("a1")),
    (b"A.b]1 CHECK", c.Check("A.b]1")),
    (b"a1 CLOSE", c.Close("a1")),
    (b"a1 UNSELECT", c.Unselect("a1")),
    (b"a1 EXPUNGE", c.Expunge("a1")),
    (b"a1 UID EXPUNGE 3:5,9", c.Expunge("a1", S("3:5,9"))),
    (b"a1 NAMESPACE", c.Namespace("a1")),
    (b"a1 IDLE", c.Idle("a1")),
    (b"a1 AUTHENTICATE PLAIN", c.Authenticate("a1", "PLAIN")),
    (b"a1 AUTHENTICATE plain AGpvZQBzZWNyZXQ=", c.Authenticate("a1", "PLAIN", b"\0joe\0secret")),
    (b"a1 AUTHENTICATE EXTERNAL =", c.Authenticate("a1", "EXTERNAL", b"")),
    (b"a1 LOGIN joe secret", c.Login("a1", "joe", b"secret")),
    (b'a1 LOGIN "jo\\"e" "p a\\\\ss"', c.Login("a1", 'jo"e', b"p a\\ss")),
    (b"a1 LOGIN {3+}\r\njoe {6+}\r\nsecret", c.Login("a1", "joe", b"secret")),
    (b"a1 ENABLE CONDSTORE qresync", c.Enable("a1", ("CONDSTORE", "QRESYNC"))),
    (b"a1 SELECT inbox", c.Select("a1", "INBOX")),
    (b'a1 SELECT "Envoy&AOk-s"', c.Select("a1", "Envoyés")),
    (b"a1 EXAMINE Archives/2024", c.Examine("a1", "Archives/2024")),
    (b"a1 SELECT INBOX (CONDSTORE)", c.Select("a1", "INBOX", condstore=True)),
    (
        b"a1 SELECT INBOX (QRESYNC (67890007 20050715194045000 41:211,214:541))",
        c.Select("a1", "INBOX", qresync=c.QResync(67890007, 20050715194045000, S("41:211,214:541"))),
    ),
    (
        b"a1 EXAMINE INBOX (QRESYNC (67890007 90060115194045000 1:29997 (5000,7500,9000 4964,7348,8922)))",
        c.Examine(
            "a1", "INBOX", qresync=c.QResync(67890007, 90060115194045000, S("1:29997"), (S("5000,7500,9000"), S("4964,7348,8922")))
        ),
    ),
    (
        b"a1 SELECT INBOX (QRESYNC (1 2 (3 4)))",
        c.Select("a1", "INBOX", qresync=c.QResync(1, 2, None, (S("3"), S("4")))),
    ),
    (b"a1 CREATE Projets", c.Create("a1", "Projets")),
    (b"a1 CREATE Envoi (USE (\\Sent))", c.Create("a1", "Envoi", ("\\Sent",))),
    (b"a1 DELETE Projets", c.Delete("a1", "Projets")),
    (b"a1 RENAME Projets Archives/Projets", c.Rename("a1", "Projets", "Archives/Projets")),
    (b"a1 SUBSCRIBE Projets", c.Subscribe("a1", "Projets")),
    (b"a1 UNSUBSCRIBE Projets", c.Unsubscribe("a1", "Projets")),
    (b'a1 LIST "" *', c.List("a1", "", ("*",))),
    (b'a1 LIST "" ""', c.List("a1", "", ("",))),
    (b"a1 LIST Archives/ %", c.List("a1", "Archives/", ("%",))),
    (b'a1 LIST "" Envoy&AOk-s/%', c.List("a1", "", ("Envoyés/%",))),
    (
        b'a1 LIST (SUBSCRIBED RECURSIVEMATCH) "" (INBOX "Sent*") RETURN (CHILDREN SPECIAL-USE)',
        c.List("a1", "", ("INBOX", "Sent*"), frozenset({"SUBSCRIBED", "RECURSIVEMATCH"}),
               frozenset({"CHILDREN", "SPECIAL-USE"}), (), True),
    ),
    (
        b'a1 LIST "" % RETURN (STATUS (MESSAGES UNSEEN SIZE))',
        c.List("a1", "", ("%",), frozenset(), frozenset({"STATUS"}), ("MESSAGES", "UNSEEN", "SIZE"), True),
    ),
    (b'a1 LIST (SPECIAL-USE) "" *', c.List("a1", "", ("*",), frozenset({"SPECIAL-USE"}), extended=True)),
    (b'a1 LIST () "" * RETURN ()', c.List("a1", "", ("*",), extended=True)),
    (b'a1 LSUB "" *', c.Lsub("a1", "", "*")),
    (
        b"a1 STATUS INBOX (MESSAGES UIDNEXT UIDVALIDITY UNSEEN HIGHESTMODSEQ SIZE)",
        c.Status("a1", "INBOX", ("MESSAGES", "UIDNEXT", "UIDVALIDITY", "UNSEEN", "HIGHESTMODSEQ", "SIZE")),
    ),
    (b"a1 APPEND INBOX {5+}\r\nHello", c.Append("a1", "INBOX", (), None, b"Hello", 5)),
    (
        b'a1 APPEND Drafts (\\Seen \\Draft $Label) "06-Jan-2025 10:00:00 +0100" {3}\r\nabc',
        c.Append("a1", "Drafts", ("\\Seen", "\\Draft", "$Label"), dt.datetime(2025, 1, 6, 10, tzinfo=TZ1), b"abc", 3),
    ),
    (
        b'a1 APPEND INBOX " 6-Jan-2025 10:00:00 -0030" ~{3}\r\na\0c',
        c.Append("a1", "INBOX", (), dt.datetime(2025, 1, 6, 10, tzinfo=dt.timezone(-dt.timedelta(minutes=30))),
                 b"a\0c", 3, True),
    ),
    (b"a1 APPEND {5}\r\nINBOX () {2}\r\nhi", c.Append("a1", "INBOX", (), None, b"hi", 2)),
    (b"a1 FETCH 1 FLAGS", c.Fetch("a1", S("1"), (c.FetchAtt("FLAGS"),))),
    (b"a1 FETCH 1:* ALL", c.Fetch("a1", S("1:*"), tuple(c.FetchAtt(n) for n in c.FETCH_MACROS["ALL"]), macro="ALL")),
    (b"a1 FETCH 2 fast", c.Fetch("a1", S("2"), tuple(c.FetchAtt(n) for n in c.FETCH_MACROS["FAST"]), macro="FAST")),
    (b"a1 FETCH 2 FULL", c.Fetch("a1", S("2"), tuple(c.FetchAtt(n) for n in c.FETCH_MACROS["FULL"]), macro="FULL")),
    (
        b"a1 FETCH 1:3,*,5:2 (UID RFC822.SIZE INTERNALDATE ENVELOPE BODYSTRUCTURE BODY RFC822.HEADER)",
        c.Fetch("a1", S("1:3,*,5:2"), tuple(c.FetchAtt(n) for n in
                ("UID", "RFC822.SIZE", "INTERNALDATE", "ENVELOPE", "BODYSTRUCTURE", "BODY", "RFC822.HEADER"))),
    ),
    (
        b"a1 FETCH 1 (BODY[] BODY.PEEK[1.2.MIME] BODY[TEXT]<0.2048> body.peek[header.fields (From Subject)])",
        c.Fetch("a1", S("1"), (
            c.FetchAtt("BODY", c.Section()),
            c.FetchAtt("BODY", c.Section((1, 2), "MIME"), peek=True),
            c.FetchAtt("BODY", c.Section((), "TEXT"), (0, 2048)),
            c.FetchAtt("BODY", c.Section((), "HEADER.FIELDS", ("From", "Subject")), peek=True),
        )),
    ),
    (
        b"a1 FETCH 1 (BODY[3.HEADER.FIELDS.NOT (Received)] BODY[2] BODY[4.1.TEXT])",
        c.Fetch("a1", S("1"), (
            c.FetchAtt("BODY", c.Section((3,), "HEADER.FIELDS.NOT", ("Received",))),
            c.FetchAtt("BODY", c.Section((2,))),
            c.FetchAtt("BODY", c.Section((4, 1), "TEXT")),
        )),
    ),
    (
        b"a1 FETCH 1 (BINARY[2] BINARY.PEEK[1.2]<10.20> BINARY.SIZE[2] BINARY[])",
        c.Fetch("a1", S("1"), (
            c.FetchAtt("BINARY", c.Section((2,))),
            c.FetchAtt("BINARY", c.Section((1, 2)), (10, 20), peek=True),
            c.FetchAtt("BINARY.SIZE", c.Section((2,))),
            c.FetchAtt("BINARY", c.Section()),
        )),
    ),
    (
        b"a1 UID FETCH 300:* (FLAGS) (CHANGEDSINCE 12345 VANISHED)",
        c.Fetch("a1", S("300:*"), (c.FetchAtt("FLAGS"),), uid=True, changedsince=12345, vanished=True),
    ),
    (b"a1 FETCH 1 (FLAGS MODSEQ) (CHANGEDSINCE 7)", c.Fetch("a1", S("1"), (c.FetchAtt("FLAGS"), c.FetchAtt("MODSEQ")), changedsince=7)),
    (b"a1 STORE 1:3 +FLAGS (\\Deleted)", c.Store("a1", S("1:3"), "+", ("\\Deleted",))),
    (b"a1 STORE 1 -FLAGS.SILENT \\seen $Important", c.Store("a1", S("1"), "-", ("\\Seen", "$Important"), silent=True)),
    (b"a1 STORE 1 FLAGS ()", c.Store("a1", S("1"), "", ())),
    (
        b"a1 UID STORE 7,9 (UNCHANGEDSINCE 320162338) +FLAGS.SILENT (\\Deleted)",
        c.Store("a1", S("7,9"), "+", ("\\Deleted",), silent=True, uid=True, unchangedsince=320162338),
    ),
    (b"a1 COPY 2:4 Archives", c.Copy("a1", S("2:4"), "Archives")),
    (b'a1 UID COPY 2:4 "Envoy&AOk-s"', c.Copy("a1", S("2:4"), "Envoyés", uid=True)),
    (b"a1 MOVE 1 Trash", c.Move("a1", S("1"), "Trash")),
    (b"a1 UID MOVE 10:20 Trash", c.Move("a1", S("10:20"), "Trash", uid=True)),
    (b"a1 ID NIL", c.Id("a1", None)),
    (b'a1 ID ("name" "Thunderbird" "version" NIL)', c.Id("a1", (("name", "Thunderbird"), ("version", None)))),
    (b"a1 ID ()", c.Id("a1", ())),
    (b'a1 GETQUOTA ""', c.GetQuota("a1", "")),
    (b"a1 GETQUOTAROOT INBOX", c.GetQuotaRoot("a1", "INBOX")),
    (b'a1 SETQUOTA "" (STORAGE 512)', c.SetQuota("a1", "", (("STORAGE", 512),))),
    (
        b"a1 SORT (REVERSE DATE SUBJECT) UTF-8 ALL",
        c.Sort("a1", (("DATE", True), ("SUBJECT", False)), "UTF-8", c.SearchAll()),
    ),
    (b"a1 UID THREAD REFERENCES UTF-8 SINCE 1-Feb-1994", c.Thread("a1", "REFERENCES", "UTF-8", c.SearchDate("SINCE", dt.date(1994, 2, 1)), uid=True)),
]  # fmt: skip


@pytest.mark.parametrize(("line", "expected"), VALID, ids=[v[0][:50].decode("latin-1") for v in VALID])
def test_every_command_parses(line: bytes, expected: c.Command) -> None:
    assert one(line + b"\r\n") == expected


def test_login_password_is_not_in_repr() -> None:
    assert "secret" not in repr(one(b"a LOGIN joe secret\r\n"))


# --------------------------------------------------------------------------------------------- SEARCH

SEARCHES: list[tuple[bytes, c.SearchKey]] = [
    (b"ALL", c.SearchAll()),
    (b"SEEN", c.SearchFlag("\\Seen")),
    (b"unseen", c.SearchFlag("\\Seen", False)),
    (b"ANSWERED", c.SearchFlag("\\Answered")),
    (b"UNANSWERED", c.SearchFlag("\\Answered", False)),
    (b"DELETED", c.SearchFlag("\\Deleted")),
    (b"UNDELETED", c.SearchFlag("\\Deleted", False)),
    (b"DRAFT", c.SearchFlag("\\Draft")),
    (b"UNDRAFT", c.SearchFlag("\\Draft", False)),
    (b"FLAGGED", c.SearchFlag("\\Flagged")),
    (b"UNFLAGGED", c.SearchFlag("\\Flagged", False)),
    (b"RECENT", c.SearchFlag("\\Recent")),
    (b"OLD", c.SearchFlag("\\Recent", False)),
    (b"NEW", c.SearchAnd((c.SearchFlag("\\Recent"), c.SearchFlag("\\Seen", False)))),
    (b"KEYWORD $Urgent", c.SearchFlag("$Urgent")),
    (b"UNKEYWORD $Urgent", c.SearchFlag("$Urgent", False)),
    (b"FROM dupont", c.SearchHeader("From", "dupont")),
    (b'TO "marie curie"', c.SearchHeader("To", "marie curie")),
    (b"CC x", c.SearchHeader("Cc", "x")),
    (b"BCC x", c.SearchHeader("Bcc", "x")),
    (b"SUBJECT {15}\r\nCompte rendu \xc3\xa9", c.SearchHeader("Subject", "Compte rendu é")),
    (b'HEADER X-MSS-INS ""', c.SearchHeader("X-MSS-INS", "")),
    (b"BODY ordonnance", c.SearchText("BODY", "ordonnance")),
    (b"TEXT ordonnance", c.SearchText("TEXT", "ordonnance")),
    (b"BEFORE 1-Feb-2024", c.SearchDate("BEFORE", dt.date(2024, 2, 1))),
    (b'ON "15-mar-2024"', c.SearchDate("ON", dt.date(2024, 3, 15))),
    (b"SINCE 01-Jan-2024", c.SearchDate("SINCE", dt.date(2024, 1, 1))),
    (b"SENTBEFORE 1-Feb-2024", c.SearchDate("BEFORE", dt.date(2024, 2, 1), sent=True)),
    (b"SENTON 1-Feb-2024", c.SearchDate("ON", dt.date(2024, 2, 1), sent=True)),
    (b"SENTSINCE 1-Feb-2024", c.SearchDate("SINCE", dt.date(2024, 2, 1), sent=True)),
    (b"LARGER 10000", c.SearchSize("LARGER", 10000)),
    (b"SMALLER 10", c.SearchSize("SMALLER", 10)),
    (b"UID 1:100,200", c.SearchSet(S("1:100,200"), uid=True)),
    (b"2:4,*", c.SearchSet(S("2:4,*"))),
    (b"NOT SEEN", c.SearchNot(c.SearchFlag("\\Seen"))),
    (b"OR SEEN FLAGGED", c.SearchOr(c.SearchFlag("\\Seen"), c.SearchFlag("\\Flagged"))),
    (b"OR (SEEN FROM a) NOT TO b", c.SearchOr(c.SearchAnd((c.SearchFlag("\\Seen"), c.SearchHeader("From", "a"))),
                                             c.SearchNot(c.SearchHeader("To", "b")))),
    (b"(SEEN)", c.SearchFlag("\\Seen")),
    (b"MODSEQ 620162338", c.SearchModSeq(620162338)),
    (b'MODSEQ "/flags/\\\\draft" all 620162338', c.SearchModSeq(620162338, ("/flags/\\draft", "all"))),
    (b"SEEN FROM x 1:5", c.SearchAnd((c.SearchFlag("\\Seen"), c.SearchHeader("From", "x"), c.SearchSet(S("1:5"))))),
]  # fmt: skip


@pytest.mark.parametrize(("criteria", "key"), SEARCHES, ids=[s[0][:40].decode("latin-1") for s in SEARCHES])
def test_search_keys(criteria: bytes, key: c.SearchKey) -> None:
    assert one(b"t SEARCH " + criteria + b"\r\n") == c.Search("t", key)


def test_search_charset_return_and_uid() -> None:
    assert one(b"t UID SEARCH RETURN (MIN MAX COUNT ALL) CHARSET utf-8 SEEN\r\n") == c.Search(
        "t", c.SearchFlag("\\Seen"), uid=True, charset="UTF-8", returns=("MIN", "MAX", "COUNT", "ALL")
    )
    assert one(b"t SEARCH RETURN () ALL\r\n") == c.Search("t", c.SearchAll(), returns=())
    assert one(b"t SEARCH CHARSET ISO-8859-1 FROM x\r\n").charset == "ISO-8859-1"  # type: ignore[attr-defined]


SEARCHRES_VALID: list[tuple[bytes, c.Command]] = [
    (b"a1 SEARCH RETURN (SAVE) FLAGGED", c.Search("a1", c.SearchFlag("\\Flagged"), returns=("SAVE",))),
    (b"a1 UID SEARCH RETURN (SAVE MIN) $ SMALLER 9", c.Search("a1", c.SearchAnd((c.SearchSet(SAVED), c.SearchSize("SMALLER", 9))), uid=True, returns=("SAVE", "MIN"))),
    (b"a1 SEARCH UID $", c.Search("a1", c.SearchSet(SAVED, uid=True))),
    (b"a1 FETCH $ (FLAGS)", c.Fetch("a1", SAVED, (c.FetchAtt("FLAGS"),))),
    (b"a1 UID STORE $ +FLAGS (\\Seen)", c.Store("a1", SAVED, "+", ("\\Seen",), uid=True)),
    (b"a1 UID COPY $ Archives", c.Copy("a1", SAVED, "Archives", uid=True)),
    (b"a1 MOVE $ Archives", c.Move("a1", SAVED, "Archives")),
    (b"a1 UID EXPUNGE $", c.Expunge("a1", SAVED)),
]  # fmt: skip


@pytest.mark.parametrize(("line", "expected"), SEARCHRES_VALID, ids=[v[0].decode() for v in SEARCHRES_VALID])
def test_searchres_syntax(line: bytes, expected: c.Command) -> None:
    assert one(line + b"\r\n") == expected


@given(
    st.lists(
        st.tuples(st.integers(1, 2**32 - 1), st.integers(1, 2**32 - 1) | st.none()), min_size=1, max_size=5
    )
)
def test_dollar_never_hides_in_a_sequence_set(ranges: list[tuple[int, int | None]]) -> None:
    """`$` alone is the saved result; anywhere inside a set it is refused, never half-parsed."""
    text = ",".join(f"{a}:{'*' if b is None else b}" for a, b in ranges)
    assert SequenceSet.parse(text).saved is False
    for at in range(len(text) + 1):
        mixed = text[:at] + "$" + text[at:]
        event = parse_commands(b"a1 UID FETCH " + mixed.encode() + b" FLAGS\r\n")[0]
        assert isinstance(event, c.BadCommand), mixed
        assert event.tag == "a1"


# ---------------------------------------------------------------------------------------- error paths

ERRORS: list[tuple[bytes, str | None, str]] = [
    (b"", None, "empty command line"),
    (b"a1", "a1", "missing command name"),
    (b"a1 ", "a1", "expected a command name"),
    (b"* NOOP", None, "invalid or missing tag"),
    (b"+ NOOP", None, "invalid or missing tag"),
    (b"a(1 NOOP", "a", "invalid character '('"),
    (b" NOOP", None, "invalid or missing tag"),
    (b"a1 FROB", "a1", "unknown command 'FROB'"),
    (b"a1 UID NOOP", "a1", "UID NOOP is not a command"),
    (b"a1 NOOP now", "a1", "takes no arguments"),
    (b"a1 NOOP)", "a1", "after the end of the command"),
    (b"a1 CAPABILITY  ", "a1", "takes no arguments"),
    (b"a1 LOGIN joe", "a1", "before the password"),
    (b"a1 LOGIN joe  secret", "a1", "expected a password"),
    (b'a1 LOGIN "joe secret', "a1", "unterminated quoted string"),
    (b'a1 LOGIN "jo\\e" x', "a1", "invalid escape"),
    (b"a1 LOGIN \xff\xfe x", "a1", "user name is not valid UTF-8"),
    (b"a1 SELECT \xff", "a1", "neither modified UTF-7 nor valid UTF-8"),
    (b'a1 LOGIN "\xff" x', "a1", "not valid UTF-8"),
    (b"a1 AUTHENTICATE", "a1", "before the SASL mechanism"),
    (b"a1 AUTHENTICATE PLAIN !!!", "a1", "initial response is not valid base64"),
    (b"a1 AUTHENTICATE PLAIN ", "a1", "empty SASL initial response"),
    (b"a1 AUTHENTICATE PLAIN AGpv=ZQ", "a1", "not valid base64"),
    (b"a1 ENABLE", "a1", "before a capability"),
    (b"a1 SELECT", "a1", "before the mailbox name"),
    (b"a1 SELECT INBOX (", "a1", "expected a SELECT parameter"),
    (b"a1 SELECT INBOX (CONDSTORE", "a1", "to close the SELECT parameters"),
    (b"a1 SELECT INBOX (FOO)", "a1", "unknown SELECT parameter 'FOO'"),
    (b"a1 SELECT INBOX (QRESYNC (0 5))", "a1", "UIDVALIDITY must not be zero"),
    (b"a1 SELECT INBOX (QRESYNC (1 5 1:*))", "a1", "'*' is not allowed"),
    (b"a1 SELECT INBOX (QRESYNC (1 5) QRESYNC (1 5))", "a1", "QRESYNC given twice"),
    (b"a1 SELECT &AOk", "a1", "never closed"),
    (b"a1 SELECT R&D", "a1", "never closed"),
    (b"a1 SELECT R&D-", "a1", "impossible length"),
    (b"a1 CREATE x (USE (\\Sent)", "a1", "to close the CREATE parameters"),
    (b"a1 CREATE x (FOO (\\Sent))", "a1", "only CREATE parameter is USE"),
    (b"a1 RENAME a", "a1", "before the new mailbox name"),
    (b"a1 LIST", "a1", "before the reference name"),
    (b'a1 LIST ""', "a1", "before the mailbox pattern"),
    (b'a1 LIST (FOO) "" *', "a1", "unknown LIST selection option 'FOO'"),
    (b'a1 LIST (RECURSIVEMATCH) "" *', "a1", "RECURSIVEMATCH needs another selection option"),
    (b'a1 LIST "" * RETURN (FOO)', "a1", "unknown LIST return option 'FOO'"),
    (b'a1 LIST "" * RETURN (STATUS (FOO))', "a1", "unknown STATUS item 'FOO'"),
    (b'a1 LIST "" * RETOUR ()', "a1", "expected RETURN"),
    (b'a1 LIST "" (INBOX', "a1", "to close the pattern list"),
    (b"a1 STATUS INBOX ()", "a1", "empty STATUS item list"),
    (b"a1 STATUS INBOX (MESSAGES", "a1", "to close the STATUS item list"),
    (b"a1 STATUS INBOX (MESSAGES BOGUS)", "a1", "unknown STATUS item 'BOGUS'"),
    (b"a1 STATUS INBOX MESSAGES", "a1", "to open the STATUS item list"),
    (b'a1 APPEND INBOX "hello"', "a1", "invalid date-time 'hello'"),
    (b"a1 APPEND INBOX hello", "a1", "must be a literal, found 'h'"),
    (b'a1 APPEND INBOX (\\Seen {3+}\r\nabc', "a1", "expected a flag, found '{'"),
    (b'a1 APPEND INBOX (\\Recent) {3+}\r\nabc', "a1", "\\Recent cannot be set"),
    (b'a1 APPEND INBOX "1-Jan-2024" {3+}\r\nabc', "a1", "invalid date-time"),
    (b'a1 APPEND INBOX "31-Feb-2024 10:00:00 +0000" {3+}\r\nabc', "a1", "invalid date-time: day is out of range"),
    (b'a1 APPEND INBOX "01-Foo-2024 10:00:00 +0000" {3+}\r\nabc', "a1", "invalid month 'Foo'"),
    (b"a1 APPEND INBOX {3+}\r\nabc (\\Seen)", "a1", "the message literal is missing after the flags"),
    (b'a1 APPEND INBOX {3+}\r\nabc "01-Jan-2024 10:00:00 +0000"', "a1", "message literal is missing after the date"),
    (b"a1 APPEND INBOX {3+}\r\nabc {3+}\r\ndef junk", "a1", "must be a literal, found 'j'"),
    (b"a1 APPEND INBOX {3+}\r\nabc{3+}\r\ndef", "a1", "expected SP before the message, found '{'"),
    (b"a1 APPEND INBOX {3+}\r\nabc {-3+}", "a1", "literal size cannot be negative"),
    (b"a1 APPEND INBOX {3+}\r\nabc ", "a1", "must be a literal, found end of line"),
    (b"a1 APPEND INBOX UTF8 (~{3+}\r\nabc)", "a1", "APPEND UTF8 needs ENABLE UTF8=ACCEPT first"),
    (b"a1 APPEND INBOX CATENATE (TEXT {3+}\r\nabc)", "a1", "APPEND CATENATE is not supported"),
    (b"a1 LOGIN ~{3+}\r\nabc x", "a1", "literal8"),
    (b"a1 LOGIN {3+} x", "a1", "a literal must end its line"),
    (b"a1 LOGIN {-3} x", "a1", "cannot be negative"),
    (b"a1 LOGIN {-3}", "a1", "cannot be negative"),
    (b"a1 LOGIN {3x}", "a1", "malformed literal"),
    (b"a1 EXPUNGE 1:3", "a1", "EXPUNGE takes no arguments"),
    (b"a1 UID EXPUNGE", "a1", "before the UID set"),
    (b"a1 SEARCH", "a1", "before the search criteria"),
    (b"a1 SEARCH FOO", "a1", "unknown search key 'FOO'"),
    (b"a1 SEARCH (SEEN", "a1", "to close the search criteria group"),
    (b"a1 SEARCH SEEN)", "a1", "after the end of the command"),
    (b"a1 SEARCH ()", "a1", "expected a search key"),
    (b"a1 SEARCH OR SEEN", "a1", "before the second OR operand"),
    (b"a1 SEARCH NOT", "a1", "before the negated search key"),
    (b"a1 SEARCH FROM", "a1", "before the FROM string"),
    (b"a1 SEARCH SINCE 2024-01-01", "a1", "invalid date '2024-01-01'"),
    (b"a1 SEARCH SINCE 32-Jan-2024", "a1", "invalid date: day is out of range"),
    (b"a1 SEARCH LARGER -5", "a1", "cannot be negative"),
    (b"a1 SEARCH LARGER 99999999999999999999999", "a1", "too large"),
    (b"a1 SEARCH UID 0", "a1", "invalid sequence set"),
    (b"a1 SEARCH 1,$", "a1", "'$' stands alone"),
    (b"a1 FETCH $:4 FLAGS", "a1", "'$' stands alone"),
    (b"a1 SELECT INBOX (QRESYNC (1 5 $))", "a1", "'$' (the saved search result) is not allowed here"),
    (b"a1 SEARCH RETURN (KEEP) ALL", "a1", "unknown SEARCH return option 'KEEP'"),
    (b"a1 SEARCH MODSEQ \"/flags/x\" nope 5", "a1", "invalid MODSEQ entry type"),
    (b"a1 FETCH", "a1", "before the sequence set"),
    (b"a1 FETCH 1", "a1", "before the FETCH items"),
    (b"a1 FETCH 0 FLAGS", "a1", "numbers start at 1"),
    (b"a1 FETCH 1:2:3 FLAGS", "a1", "more than one"),
    (b"a1 FETCH x FLAGS", "a1", "expected a sequence set"),
    (b"a1 FETCH 1 (FLAGS", "a1", "to close the FETCH item list"),
    (b"a1 FETCH 1 FLAGS)", "a1", "after the end of the command"),
    (b"a1 FETCH 1 ((FLAGS))", "a1", "expected a FETCH item"),
    (b"a1 FETCH 1 (FLAGS ALL)", "a1", "macro ALL cannot be combined"),
    (b"a1 FETCH 1 FOO", "a1", "unknown FETCH item 'FOO'"),
    (b"a1 FETCH 1 BODY.PEEK", "a1", "needs a section"),
    (b"a1 FETCH 1 BODY[", "a1", "unexpected end of line in section"),
    (b"a1 FETCH 1 BODY[1", "a1", "after the section part number, found end of line"),
    (b"a1 FETCH 1 BODY[0]", "a1", "must not be zero"),
    (b"a1 FETCH 1 BODY[FOO]", "a1", "unknown section specifier 'FOO'"),
    (b"a1 FETCH 1 BODY[MIME]", "a1", "MIME needs a part number"),
    (b"a1 FETCH 1 BODY[HEADER.FIELDS]", "a1", "before the header field list"),
    (b"a1 FETCH 1 BODY[HEADER.FIELDS ()]", "a1", "expected a header field name"),
    (b"a1 FETCH 1 BODY[HEADER.FIELDS (From]", "a1", "to close the header field list"),
    (b'a1 FETCH 1 BODY[HEADER.FIELDS ("a b")]', "a1", "invalid header field name"),
    (b"a1 FETCH 1 BODY[]<5>", "a1", "between the partial origin and length"),
    (b"a1 FETCH 1 BODY[]<5.0>", "a1", "partial length must not be zero"),
    (b"a1 FETCH 1 BODY[]<-5.3>", "a1", "cannot be negative"),
    (b"a1 FETCH 1 BODY[]<5.3", "a1", "to close the partial range"),
    (b"a1 FETCH 1 BINARY[1.TEXT]", "a1", "part numbers only"),
    (b"a1 FETCH 1 BINARY[TEXT]", "a1", "to close the BINARY section"),
    (b"a1 FETCH 1 BINARY.SIZE[1]<0.5>", "a1", "does not take a partial"),
    (b"a1 FETCH 1 FLAGS[1]", "a1", "does not take a section"),
    (b"a1 FETCH 1 FLAGS (CHANGEDSINCE)", "a1", "before the CHANGEDSINCE"),
    (b"a1 FETCH 1 FLAGS (CHANGEDSINCE 0)", "a1", "must not be zero"),
    (b"a1 FETCH 1 FLAGS (FOO)", "a1", "unknown FETCH modifier 'FOO'"),
    (b"a1 FETCH 1 FLAGS (CHANGEDSINCE 5 VANISHED)", "a1", "VANISHED is only allowed in UID FETCH"),
    (b"a1 UID FETCH 1 FLAGS (VANISHED)", "a1", "VANISHED requires CHANGEDSINCE"),
    (b"a1 STORE 1 FLAGS", "a1", "before the flags"),
    (b"a1 STORE 1 LABELS (x)", "a1", "unknown STORE item 'LABELS'"),
    (b"a1 STORE 1 +FLAGS (\\Seen", "a1", "to close the flag list"),
    (b"a1 STORE 1 +FLAGS (\\*)", "a1", "\\* is not a flag"),
    (b"a1 STORE 1 +FLAGS (\\Recent)", "a1", "\\Recent cannot be set"),
    (b"a1 STORE 1 (UNCHANGEDSINCE) FLAGS x", "a1", "before the UNCHANGEDSINCE"),
    (b"a1 STORE 1 (FOO 5) FLAGS x", "a1", "only STORE modifier is UNCHANGEDSINCE"),
    (b"a1 COPY 1", "a1", "before the destination mailbox"),
    (b"a1 MOVE 1:x Trash", "a1", "not a number"),
    (b"a1 ID", "a1", "before the ID parameters"),
    (b'a1 ID ("name")', "a1", "before the ID field value"),
    (b'a1 ID ("name" "x"', "a1", "to close the ID parameter list"),
    (b"a1 ID (name x)", "a1", "expected an ID field name"),
    (b'a1 ID ("' + b"x" * 31 + b'" NIL)', "a1", "limited to 30 octets"),
    (b"a1 SETQUOTA \"\" (STORAGE x)", "a1", "expected the quota limit"),
    (b"a1 SORT () UTF-8 ALL", "a1", "empty sort criterion list"),
    (b"a1 SORT (REVERSE) UTF-8 ALL", "a1", "REVERSE must be followed"),
    (b"a1 SORT (FOO) UTF-8 ALL", "a1", "unknown sort key 'FOO'"),
    (b"a1 THREAD FOO UTF-8 ALL", "a1", "unknown threading algorithm"),
    (b"a1 SELECT \x00", "a1", "expected mailbox name"),
    (b'a1 LOGIN "x\ry" z', "a1", "byte 0x0d is not allowed in a quoted string"),
    (b'a1 LOGIN "x\x00y" z', "a1", "byte 0x00 is not allowed in a quoted string"),
    (b'a1 LIST "" )', "a1", "expected a mailbox pattern, found ')'"),
    (b'a1 APPEND INBOX "01-Jan-2024 10:00:00 +0060" {3+}\r\nabc', "a1", "invalid time zone"),
    (b"a1 SEARCH SINCE 1-Foo-2024", "a1", "invalid month 'Foo' in date"),
    (b"a1 SELECT INBOX (QRESYNC (1 2 (1:* 3)))", "a1", "'*' is not allowed in QRESYNC sequence match data"),
    (b"a1 SORT (REVERSE REVERSE DATE) UTF-8 ALL", "a1", "REVERSE given twice"),
    (b'a1 ID ("name" "' + b"v" * 1025 + b'")', "a1", "limited to 1024 octets"),
    (b"a1 ID (" + b" ".join(b'"k%d" "v"' % i for i in range(31)) + b")", "a1", "at most 30 ID field-value pairs"),
    (b"a1 UID FROB {3}", "a1", "UID FROB is not a command"),
    (b"a1 {3}", "a1", "unknown command '{3}'"),
]  # fmt: skip


@pytest.mark.parametrize(("line", "tag", "reason"), ERRORS, ids=[e[0][:50].decode("latin-1") for e in ERRORS])
def test_error_paths_name_the_problem(line: bytes, tag: str | None, reason: str) -> None:
    event = bad(line + b"\r\n")
    assert event.tag == tag
    assert reason in event.reason, event.reason
    assert not event.fatal


@pytest.mark.parametrize(("line", "tag", "reason"), ERRORS[:60])
def test_an_error_never_loses_sync(line: bytes, tag: str | None, reason: str) -> None:
    events = parse_commands(line + b"\r\nz9 NOOP\r\n")
    assert events[-1] == c.Noop("z9")


def test_deep_nesting_is_bounded() -> None:
    event = bad(b"a SEARCH " + b"(" * 40 + b"SEEN" + b")" * 40 + b"\r\n", max_depth=32)
    assert "nested deeper than 32" in event.reason
    event = bad(b"a SEARCH " + b"NOT " * 40 + b"SEEN\r\n", max_depth=32)
    assert "nested deeper" in event.reason
    assert isinstance(one(b"a SEARCH " + b"(" * 10 + b"SEEN" + b")" * 10 + b"\r\n"), c.Search)


# ------------------------------------------------------------------------------------------- framing


def test_pipelined_commands_in_one_feed() -> None:
    events = parse_commands(b"a NOOP\r\nb CAPABILITY\r\nc LOGIN {3+}\r\njoe x\r\nd BOGUS\r\ne LOGOUT\r\n")
    assert events[0] == c.Noop("a")
    assert events[1] == c.Capability("b")
    assert events[2] == c.Login("c", "joe", b"x")
    assert isinstance(events[3], c.BadCommand) and events[3].tag == "d"
    assert events[4] == c.Logout("e")


def test_bare_lf_line_endings_are_accepted() -> None:
    assert parse_commands(b"a NOOP\nb NOOP\n") == [c.Noop("a"), c.Noop("b")]


def test_synchronising_literal_asks_for_continuation() -> None:
    p = CommandParser()
    p.feed(b"a LOGIN {3}\r\n")
    assert p.next_event() == c.ContinuationRequest("a", "LOGIN", 3)
    assert p.next_event() is NEED_DATA
    p.feed(b"joe {6}\r\n")
    assert p.next_event() == c.ContinuationRequest("a", "LOGIN", 6)
    p.feed(b"secret\r\n")
    assert p.next_event() == c.Login("a", "joe", b"secret")
    assert p.next_event() is NEED_DATA


def test_literal_announced_and_never_sent_makes_the_parser_wait() -> None:
    p = CommandParser()
    p.feed(b"a LOGIN {30+}\r\njoe")
    assert p.next_event() is NEED_DATA
    assert p.next_event() is NEED_DATA
    # What follows is literal data, even if it looks like a command.
    p.feed(b" x\r\nb NOOP\r\nc NOOP\r\n\r\n")
    assert p.next_event() is NEED_DATA
    p.feed(b"12345 pw\r\n")
    event = p.next_event()
    assert isinstance(event, c.Login) and event.username == "joe x\r\nb NOOP\r\nc NOOP\r\n\r\n12345"


def test_uid_prefixed_sync_literal_reports_the_real_command() -> None:
    assert parse_commands(b"a UID COPY 1 {5}\r\n") == [c.ContinuationRequest("a", "COPY", 5)]


def test_rejected_sync_literal_resumes_at_next_command() -> None:
    p = CommandParser()
    p.feed(b"a APPEND INBOX {10}\r\n")
    assert p.next_event() == c.ContinuationRequest("a", "APPEND", 10)
    p.reject_literal()
    p.feed(b"b NOOP\r\n")
    assert p.next_event() == c.Noop("b")


def test_sync_literal_of_unknown_command_is_refused_before_the_data() -> None:
    p = CommandParser()
    p.feed(b"a FROB {10}\r\nb NOOP\r\n")
    event = p.next_event()
    assert isinstance(event, c.BadCommand) and event.tag == "a" and "unknown command" in event.reason
    assert p.next_event() == c.Noop("b")
    p.feed(b"* LOGIN {5}\r\nc NOOP\r\n")
    assert p.next_event() == c.BadCommand(None, "invalid or missing tag")
    assert p.next_event() == c.Noop("c")


def test_non_sync_literal_of_a_bad_command_is_skipped() -> None:
    events = parse_commands(b"a FROB {5+}\r\nb NOO\r\nc NOOP\r\n")
    assert events == [c.BadCommand("a", "unknown command 'FROB'"), c.Noop("c")]


def test_huge_sync_literal_is_refused_without_waiting() -> None:
    p = CommandParser(max_literal=1000)
    p.feed(b"a LOGIN {1001}\r\nb NOOP\r\n")
    event = p.next_event()
    assert event == c.BadCommand("a", "literal of 1001 octets exceeds the limit of 1000", "TOOBIG")
    assert p.next_event() == c.Noop("b")


def test_absurd_literal_size() -> None:
    event = bad(b"a LOGIN {99999999999999999999999999999999}\r\n")
    assert event.code == "TOOBIG"


def test_huge_append_is_refused_with_toobig() -> None:
    p = CommandParser(max_append=100)
    p.feed(b"a APPEND INBOX {101}\r\n")
    event = p.next_event()
    # RFC 7889: a well-formed APPEND whose message is over the limit is a NO [TOOBIG], not a BAD.
    assert event == c.RefusedLiteral("a", "message of 101 octets exceeds the limit of 100", "TOOBIG")
    p.feed(b"a APPEND INBOX {100}\r\n")
    assert p.next_event() == c.ContinuationRequest("a", "APPEND", 100)


def test_append_mailbox_literal_uses_the_small_limit() -> None:
    p = CommandParser(max_literal=10, max_append=1000)
    p.feed(b"a APPEND {11}\r\n")
    event = p.next_event()
    assert isinstance(event, c.BadCommand) and "literal of 11" in event.reason


def test_huge_non_sync_literal_is_fatal() -> None:
    p = CommandParser(max_literal=1000)
    p.feed(b"a LOGIN {5000+}\r\n" + b"x" * 100)
    event = p.next_event()
    assert isinstance(event, c.BadCommand) and event.fatal and event.code == "TOOBIG" and event.tag == "a"
    assert p.next_event() is PAUSED


def test_command_size_is_bounded_across_literals() -> None:
    data = b"a LOGIN {600+}\r\n" + b"x" * 600 + b" {600+}\r\n"
    event = parse_commands(data, max_literal=1000, max_command=1000)[-1]
    assert isinstance(event, c.BadCommand) and "command exceeds the limit of 1000" in event.reason


def test_long_line_is_refused_as_soon_as_the_limit_is_crossed() -> None:
    p = CommandParser(max_line=100)
    p.feed(b"tag7 SEARCH " + b"X" * 200)
    event = p.next_event()
    assert event == c.BadCommand("tag7", "command line too long (limit 100 octets)", "TOOBIG")
    p.feed(b"Y" * 500)
    assert p.next_event() is NEED_DATA
    p.feed(b"Y\r\nb NOOP\r\n")
    assert p.next_event() == c.Noop("b")
    assert p.buffered == 0


def test_long_complete_line_is_refused() -> None:
    events = parse_commands(b"t LOGIN " + b"x" * 300 + b"\r\nb NOOP\r\n", max_line=100)
    assert events[0] == c.BadCommand("t", "command line too long (limit 100 octets)", "TOOBIG")
    assert events[1] == c.Noop("b")


def test_long_line_after_a_literal_keeps_the_tag() -> None:
    events = parse_commands(b"t LOGIN {3+}\r\njoe " + b"x" * 300 + b"\r\nb NOOP\r\n", max_line=100)
    assert events[0].tag == "t"  # type: ignore[attr-defined]
    assert events[1] == c.Noop("b")


def test_idle_done() -> None:
    p = CommandParser()
    p.feed(b"a IDLE\r\n")
    assert p.next_event() == c.Idle("a")
    p.expect_idle_done("a")
    p.feed(b"done\r\nb NOOP\r\n")
    assert p.next_event() == c.Done()
    assert p.next_event() == c.Noop("b")
    p.expect_idle_done("x")
    p.feed(b"c NOOP\r\n")
    assert p.next_event() == c.BadCommand("x", "expected DONE to end IDLE")


def test_sasl_continuation_lines() -> None:
    p = CommandParser()
    p.expect_auth_response("a")
    p.feed(b"AGpvZQBzZWNyZXQ=\r\n")
    assert p.next_event() == c.AuthResponse("a", b"\0joe\0secret")
    p.expect_auth_response("a")
    p.feed(b"*\r\n")
    assert p.next_event() == c.AuthCancel("a")
    p.expect_auth_response("a")
    p.feed(b"not base64!\r\n")
    assert p.next_event() == c.BadCommand("a", "AUTHENTICATE response is not valid base64")
    p.expect_auth_response("a")
    p.feed(b"\r\n")
    assert p.next_event() == c.AuthResponse("a", b"")


def test_starttls_pauses_and_discards_what_was_pipelined() -> None:
    p = CommandParser()
    p.feed(b"a STARTTLS\r\nb LOGIN joe secret\r\n")
    assert p.next_event() == c.StartTLS("a")
    assert p.next_event() is PAUSED
    assert p.resume(discard=True) == len(b"b LOGIN joe secret\r\n")
    assert p.next_event() is NEED_DATA
    p.feed(b"c NOOP\r\n")
    assert p.next_event() == c.Noop("c")


def test_refused_starttls_keeps_pipelined_commands() -> None:
    p = CommandParser()
    p.feed(b"a STARTTLS\r\nb NOOP\r\n")
    assert p.next_event() == c.StartTLS("a")
    p.resume(discard=False)
    assert p.next_event() == c.Noop("b")


def test_utf8_mode_for_mailbox_names() -> None:
    p = CommandParser()
    p.utf8 = True
    p.feed(b'a SELECT "R&D"\r\nb SELECT "Envoy\xc3\xa9s"\r\n')
    assert p.next_event() == c.Select("a", "R&D")
    assert p.next_event() == c.Select("b", "Envoyés")


class ChunkSink:
    def __init__(self, size: int) -> None:
        self.size = size
        self.chunks: list[bytes] = []
        self.discarded = False

    def write(self, data: bytes) -> None:
        self.chunks.append(data)

    def discard(self) -> None:
        self.discarded = True


def test_large_append_streams_to_a_sink() -> None:
    sinks: list[ChunkSink] = []

    def factory(size: int) -> ChunkSink:
        sinks.append(ChunkSink(size))
        return sinks[-1]

    p = CommandParser(sink_factory=factory, sink_threshold=10)
    p.feed(b"a APPEND INBOX {25+}\r\n0123456789")
    assert p.next_event() is NEED_DATA
    p.feed(b"0123456789")
    assert p.next_event() is NEED_DATA
    p.feed(b"01234\r\n")
    event = p.next_event()
    assert isinstance(event, c.Append) and event.message is sinks[0] and event.size == 25
    assert b"".join(sinks[0].chunks) == b"0123456789" * 2 + b"01234"
    assert len(sinks[0].chunks) == 3  # never buffered whole
    # Small messages stay in memory.
    p.feed(b"b APPEND INBOX {3+}\r\nabc\r\n")
    assert p.next_event() == c.Append("b", "INBOX", (), None, b"abc", 3)
    # A command that fails after its message was streamed discards the sink.
    p.feed(b"c APPEND INBOX {12+}\r\n0123456789ab junk\r\n")
    assert isinstance(p.next_event(), c.BadCommand)
    assert sinks[1].discarded
    p.feed(b"d APPEND INBOX {12}\r\n")
    assert isinstance(p.next_event(), c.ContinuationRequest)
    p.reject_literal()
    assert not sinks[-1].discarded or len(sinks) == 3


# ------------------------------------------------------------------------------- MULTIAPPEND (RFC 3502)


def test_multiappend_parses_each_message_with_its_own_flags_and_date() -> None:
    p = CommandParser()
    p.feed(b'a APPEND Drafts (\\Seen) "06-Jan-2025 10:00:00 +0100" {3}\r\n')
    assert p.next_event() == c.ContinuationRequest("a", "APPEND", 3)
    p.feed(b"one {3}\r\n")
    assert p.next_event() == c.ContinuationRequest("a", "APPEND", 3)
    p.feed(b"two (\\Flagged $X) ~{3}\r\n")
    assert p.next_event() == c.ContinuationRequest("a", "APPEND", 3)
    p.feed(b't\0o " 7-Feb-2025 23:30:00 -0500" {5+}\r\nthree\r\nb NOOP\r\n')
    event = p.next_event()
    assert event == c.MultiAppend(
        "a",
        "Drafts",
        (
            c.AppendMessage(("\\Seen",), dt.datetime(2025, 1, 6, 10, tzinfo=TZ1), b"one", 3),
            c.AppendMessage((), None, b"two", 3),
            c.AppendMessage(("\\Flagged", "$X"), None, b"t\0o", 3, binary=True),
            c.AppendMessage(
                (), dt.datetime(2025, 2, 7, 23, 30, tzinfo=dt.timezone(-dt.timedelta(hours=5))), b"three", 5
            ),
        ),
    )
    assert isinstance(event, c.MultiAppend) and [m.message for m in event.messages] == [
        b"one",
        b"two",
        b"t\0o",
        b"three",
    ]
    assert event.size == 14
    assert p.next_event() == c.Noop("b")


def test_one_message_is_still_a_plain_append() -> None:
    assert one(b"a APPEND INBOX (\\Seen) {2+}\r\nhi\r\n") == c.Append(
        "a", "INBOX", ("\\Seen",), None, b"hi", 2
    )


def test_multiappend_with_a_literal_mailbox_and_utf8_messages() -> None:
    p = CommandParser()
    p.utf8 = True
    p.feed(b"a APPEND {5+}\r\nINBOX UTF8 (~{2+}\r\nhi) (\\Seen) UTF8 (~{2+}\r\nho)\r\n")
    event = p.next_event()
    assert event == c.MultiAppend(
        "a",
        "INBOX",
        (c.AppendMessage((), None, b"hi", 2, True), c.AppendMessage(("\\Seen",), None, b"ho", 2, True)),
    )


def test_multiappend_per_message_limit_is_a_no_toobig_and_the_stream_stays_in_step() -> None:
    p = CommandParser(max_append=10, max_multiappend=100)
    p.feed(b"a APPEND INBOX {3}\r\n")
    assert isinstance(p.next_event(), c.ContinuationRequest)
    p.feed(b"abc {11}\r\n")
    assert p.next_event() == c.RefusedLiteral("a", "message of 11 octets exceeds the limit of 10", "TOOBIG")
    assert not p.mid_command  # the client will not send it: the next line is a new command
    p.feed(b"b NOOP\r\n")
    assert p.next_event() == c.Noop("b")


def test_multiappend_total_limit_counts_only_the_messages() -> None:
    p = CommandParser(max_append=10, max_multiappend=25)
    p.feed(b"a APPEND INBOX {10}\r\n")
    assert isinstance(p.next_event(), c.ContinuationRequest)
    p.feed(b"0123456789 {10}\r\n")
    assert isinstance(p.next_event(), c.ContinuationRequest)
    p.feed(b"0123456789 {6}\r\n")
    assert p.next_event() == c.RefusedLiteral(
        "a", "APPEND messages total 26 octets, over the limit of 25", "TOOBIG"
    )
    p.feed(b"b APPEND INBOX {10}\r\n")  # a new command starts from zero
    assert p.next_event() == c.ContinuationRequest("b", "APPEND", 10)


def test_a_single_append_is_bounded_by_max_append_only() -> None:
    p = CommandParser(max_append=100, max_multiappend=50)
    p.feed(b"a APPEND INBOX {80}\r\n")
    assert p.next_event() == c.ContinuationRequest("a", "APPEND", 80)
    p.feed(b"x" * 80 + b" {1}\r\n")  # a second message: now the total counts
    assert p.next_event() == c.RefusedLiteral(
        "a", "APPEND messages total 81 octets, over the limit of 50", "TOOBIG"
    )


def test_multiappend_message_count_limit() -> None:
    p = CommandParser(max_append_messages=2)
    p.feed(b"a APPEND INBOX {1+}\r\nx {1+}\r\ny {1}\r\n")
    event = p.next_event()
    assert event == c.RefusedLiteral("a", "APPEND of more than 2 messages", "TOOBIG")
    p.feed(b"b APPEND INBOX {1+}\r\nx {1+}\r\ny\r\n")
    assert isinstance(p.next_event(), c.MultiAppend)


def test_multiappend_lines_count_against_max_command() -> None:
    flags = b"(" + b" ".join(b"$K%d" % i for i in range(20)) + b")"
    p = CommandParser(max_command=300)
    stream = b"a APPEND INBOX {1+}\r\nx" + (b" " + flags + b" {1+}\r\nx") * 5 + b"\r\n"
    p.feed(stream)
    event = p.next_event()
    assert (
        isinstance(event, c.BadCommand) and event.fatal and "command exceeds the limit of 300" in event.reason
    )


def test_multiappend_over_the_limit_without_sync_is_fatal_as_for_append() -> None:
    p = CommandParser(max_append=10)
    p.feed(b"a APPEND INBOX {3+}\r\nabc {11+}\r\n01234567890\r\n")
    event = p.next_event()
    assert isinstance(event, c.BadCommand) and event.fatal and event.code == "TOOBIG"
    assert p.next_event() is PAUSED  # closed: nothing more is read


def test_multiappend_discards_every_sink_when_the_command_fails() -> None:
    sinks: list[ChunkSink] = []

    def factory(size: int) -> ChunkSink:
        sinks.append(ChunkSink(size))
        return sinks[-1]

    p = CommandParser(sink_factory=factory, sink_threshold=4)
    p.feed(b"a APPEND INBOX {5+}\r\n01234 {5+}\r\n56789 junk\r\n")
    assert isinstance(p.next_event(), c.BadCommand)
    assert len(sinks) == 2 and all(s.discarded for s in sinks)
    p.feed(b"b APPEND INBOX {5+}\r\n01234 {5}\r\n")
    assert isinstance(p.next_event(), c.ContinuationRequest)
    p.reject_literal()
    # The message already received and the one announced then refused: both dropped.
    assert len(sinks) == 4 and all(s.discarded for s in sinks)


def test_multiappend_huge_or_absurd_sizes() -> None:
    p = CommandParser(max_append=100)
    p.feed(b"a APPEND INBOX {1+}\r\nx {99999999999999999999999999}\r\n")
    event = p.next_event()
    assert isinstance(event, c.RefusedLiteral) and event.code == "TOOBIG"
    p.feed(b"b NOOP\r\n")
    assert p.next_event() == c.Noop("b")


def _multiappend_wire(messages: list[tuple[tuple[str, ...], bool, bytes]], plus: bool) -> bytes:
    out = b"t1 APPEND INBOX"
    for flags, dated, raw in messages:
        if flags:
            out += b" (" + " ".join(flags).encode() + b")"
        if dated:
            out += b' "06-Jan-2025 10:00:00 +0100"'
        out += b" {%d%s}\r\n" % (len(raw), b"+" if plus else b"") + raw
    return out + b"\r\n"


_append_messages = st.lists(
    st.tuples(
        st.lists(st.sampled_from(["\\Seen", "\\Flagged", "\\Draft", "$Label", "Junk"]), unique=True).map(
            tuple
        ),
        st.booleans(),
        st.binary(max_size=40),
    ),
    min_size=1,
    max_size=5,
)


def _events_with_continuations(pieces: list[bytes]) -> list[Event]:
    p = CommandParser(max_line=200, max_literal=100, max_append=100)
    events: list[Event] = []
    for piece in pieces:
        p.feed(piece)
        events.extend(p.events())
    return events


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(_append_messages, st.booleans(), st.data())
def test_multiappend_any_split_gives_the_same_command(
    messages: list[tuple[tuple[str, ...], bool, bytes]], plus: bool, data: st.DataObject
) -> None:
    stream = _multiappend_wire(messages, plus) + b"t2 NOOP\r\n"
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=10)))
    pieces = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    events = _events_with_continuations(pieces)
    assert events == _events_with_continuations([bytes([b]) for b in stream])
    requests = [e for e in events if isinstance(e, c.ContinuationRequest)]
    commands = [e for e in events if not isinstance(e, c.ContinuationRequest)]
    assert len(requests) == (0 if plus else len(messages))  # one `+` per synchronising literal
    assert commands[-1] == c.Noop("t2") and len(commands) == 2
    date = dt.datetime(2025, 1, 6, 10, tzinfo=TZ1)
    expected = [c.AppendMessage(f, date if d else None, raw, len(raw)) for f, d, raw in messages]
    if len(messages) == 1:
        m = expected[0]
        assert commands[0] == c.Append("t1", "INBOX", m.flags, m.date, m.message, m.size)
    else:
        assert commands[0] == c.MultiAppend("t1", "INBOX", tuple(expected))
        assert isinstance(commands[0], c.MultiAppend)
        assert [m.message for m in commands[0].messages] == [raw for _, _, raw in messages]


@settings(max_examples=100, suppress_health_check=[HealthCheck.too_slow])
@given(_append_messages, st.integers(0, 4), st.data())
def test_multiappend_truncated_after_a_message_never_yields_a_command(
    messages: list[tuple[tuple[str, ...], bool, bytes]], drop: int, data: st.DataObject
) -> None:
    """A client that stops mid-command (the connection drops) leaves no command behind."""
    stream = _multiappend_wire(messages, True)
    cut = data.draw(st.integers(0, len(stream) - 1))
    p = CommandParser(max_append=100)
    p.feed(stream[:cut])
    events = list(p.events())
    assert not any(isinstance(e, c.Append | c.MultiAppend) for e in events)
    assert p.mid_command or cut == 0


def test_events_helper_stops_at_need_data() -> None:
    p = CommandParser()
    p.feed(b"a NOOP\r\nb NO")
    assert list(p.events()) == [c.Noop("a")]
    p.feed(b"OP\r\n")
    assert list(p.events()) == [c.Noop("b")]


# ------------------------------------------------------------------------------------------ properties

CORPUS = (
    [line + b"\r\n" for line, _ in VALID]
    + [line + b"\r\n" for line, _, _ in ERRORS]
    + [
        b"a LOGIN {3}\r\njoe {6}\r\nsecret\r\n",
        b"a APPEND INBOX (\\Seen) {11}\r\nHello\r\nWorld\r\n",
        b"x FETCH 1 BODY[HEADER.FIELDS {4}\r\nFrom]\r\n",
    ]
)


def _feed_all(chunks: list[bytes]) -> list[Event]:
    p = CommandParser(max_line=200, max_literal=100)
    events: list[Event] = []
    for chunk in chunks:
        p.feed(chunk)
        while True:
            e = p.next_event()
            if e is NEED_DATA or e is PAUSED:
                if e is PAUSED:
                    p.resume(discard=False)
                    continue
                break
            events.append(e)
    return events


@settings(max_examples=60, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from(CORPUS), min_size=1, max_size=6), st.data())
def test_any_chunking_gives_the_same_events(lines: list[bytes], data: st.DataObject) -> None:
    stream = b"".join(lines)
    whole = _feed_all([stream])
    bytewise = _feed_all([bytes([b]) for b in stream])
    assert bytewise == whole
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=8)))
    pieces = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    assert _feed_all(pieces) == whole


ALLOWED_EVENTS = (c.Command, c.BadCommand, c.ContinuationRequest, c.RefusedLiteral)


@settings(max_examples=300)
@given(st.binary(max_size=300))
def test_random_bytes_only_produce_events(data: bytes) -> None:
    p = CommandParser(max_line=64, max_literal=64)
    p.feed(data)
    for _ in range(len(data) + 2):
        event = p.next_event()
        if event is NEED_DATA or event is PAUSED:
            break
        assert isinstance(event, ALLOWED_EVENTS)
        if isinstance(event, c.BadCommand):
            assert event.reason


printable_line = st.binary(max_size=80).map(lambda b: bytes(x for x in b if x not in b"\r\n{"))


@settings(max_examples=200)
@given(st.lists(printable_line, max_size=5))
def test_after_garbage_lines_the_next_command_is_parsed(garbage: list[bytes]) -> None:
    stream = b"".join(g + b"\r\n" for g in garbage) + b"zz99 NOOP\r\n"
    events = _feed_all([stream])
    assert events[-1] == c.Noop("zz99")


@settings(max_examples=200)
@given(st.binary(max_size=200))
def test_random_bytes_fed_byte_by_byte_never_raise(data: bytes) -> None:
    _feed_all([bytes([b]) for b in data])


# Round trips: commands rendered with the response serializer's string rules parse back equal.

_FLAG_NAMES = {
    "\\Answered": "ANSWERED", "\\Deleted": "DELETED", "\\Draft": "DRAFT", "\\Flagged": "FLAGGED",
    "\\Seen": "SEEN", "\\Recent": "RECENT",
}  # fmt: skip
_UNFLAG = {"\\Answered": "UNANSWERED", "\\Deleted": "UNDELETED", "\\Draft": "UNDRAFT", "\\Flagged": "UNFLAGGED",
           "\\Seen": "UNSEEN", "\\Recent": "OLD"}  # fmt: skip
_MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]


def encode_key(key: c.SearchKey) -> bytes:
    if isinstance(key, c.SearchAll):
        return b"ALL"
    if isinstance(key, c.SearchFlag):
        if key.flag in _FLAG_NAMES:
            return (_FLAG_NAMES if key.present else _UNFLAG)[key.flag].encode()
        return (b"KEYWORD " if key.present else b"UNKEYWORD ") + key.flag.encode()
    if isinstance(key, c.SearchHeader):
        std = {"From", "To", "Cc", "Bcc", "Subject"}
        value = response.string(key.value.encode())
        if key.field in std:
            return key.field.upper().encode() + b" " + value
        return b"HEADER " + response.string(key.field) + b" " + value
    if isinstance(key, c.SearchText):
        return key.where.encode() + b" " + response.string(key.value.encode())
    if isinstance(key, c.SearchDate):
        d = key.date
        return (
            b"SENT" if key.sent else b""
        ) + f"{key.op} {d.day}-{_MONTHS[d.month - 1]}-{d.year:04d}".encode()
    if isinstance(key, c.SearchSize):
        return f"{key.op} {key.size}".encode()
    if isinstance(key, c.SearchSet):
        return (b"UID " if key.uid else b"") + str(key.sequence).encode()
    if isinstance(key, c.SearchModSeq):
        return f"MODSEQ {key.modseq}".encode()
    if isinstance(key, c.SearchNot):
        return b"NOT " + encode_key(key.key)
    if isinstance(key, c.SearchOr):
        return b"OR " + encode_key(key.left) + b" " + encode_key(key.right)
    assert isinstance(key, c.SearchAnd)
    return b"(" + b" ".join(encode_key(k) for k in key.keys) + b")"


atoms = st.text(
    alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789$-_", min_size=1, max_size=12
)
seqsets = st.lists(
    st.tuples(st.one_of(st.none(), st.integers(1, 10**6)), st.one_of(st.none(), st.integers(1, 10**6))),
    min_size=1, max_size=4,
).map(lambda rs: SequenceSet(tuple(rs)))  # fmt: skip
texts = st.text(st.characters(blacklist_categories=("Cs",)), max_size=30)
leaf_keys = st.one_of(
    st.just(c.SearchAll()),
    st.builds(c.SearchFlag, st.sampled_from([*_FLAG_NAMES]) | atoms, st.booleans()),
    st.builds(
        c.SearchHeader,
        st.sampled_from(["From", "To", "Cc", "Bcc", "Subject", "X-MSS-INS", "Received"]),
        texts,
    ),
    st.builds(c.SearchText, st.sampled_from(["BODY", "TEXT"]), texts),
    st.builds(c.SearchDate, st.sampled_from(["BEFORE", "ON", "SINCE"]), st.dates(), st.booleans()),
    st.builds(c.SearchSize, st.sampled_from(["LARGER", "SMALLER"]), st.integers(0, 2**40)),
    st.builds(c.SearchSet, seqsets, st.booleans()),
    st.builds(c.SearchModSeq, st.integers(0, 2**63 - 1)),
)
search_keys = st.recursive(
    leaf_keys,
    lambda inner: st.one_of(
        st.builds(c.SearchNot, inner),
        st.builds(c.SearchOr, inner, inner),
        st.lists(inner, min_size=2, max_size=3).map(lambda ks: c.SearchAnd(tuple(ks))),
    ),
    max_leaves=8,
)


def _canonical(key: c.SearchKey) -> c.SearchKey:
    # KEYWORD of a system flag name is the same flag; hypothesis may produce "\Seen"-free atoms only.
    return key


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(search_keys, st.booleans())
def test_search_round_trip(key: c.SearchKey, uid: bool) -> None:
    line = b"t " + (b"UID " if uid else b"") + b"SEARCH " + encode_key(key) + b"\r\n"
    assert one(line) == c.Search("t", key, uid=uid)


sections = st.one_of(
    st.builds(c.Section, st.lists(st.integers(1, 20), max_size=3).map(tuple)),
    st.builds(c.Section, st.lists(st.integers(1, 20), min_size=1, max_size=3).map(tuple), st.just("MIME")),
    st.builds(
        c.Section, st.lists(st.integers(1, 20), max_size=3).map(tuple), st.sampled_from(["HEADER", "TEXT"])
    ),
    st.builds(
        c.Section,
        st.lists(st.integers(1, 20), max_size=2).map(tuple),
        st.sampled_from(["HEADER.FIELDS", "HEADER.FIELDS.NOT"]),
        st.lists(
            st.sampled_from(["From", "To", "Subject", "X-MSS-CODECDA", "Message-ID"]), min_size=1, max_size=4
        ).map(tuple),
    ),
)
partials = st.one_of(st.none(), st.tuples(st.integers(0, 2**31), st.integers(1, 2**31)))
fetch_atts = st.one_of(
    st.builds(c.FetchAtt, st.sampled_from(sorted({"ENVELOPE", "FLAGS", "INTERNALDATE", "RFC822", "RFC822.HEADER",
                                                   "RFC822.TEXT", "RFC822.SIZE", "BODY", "BODYSTRUCTURE", "UID", "MODSEQ"}))),
    st.builds(c.FetchAtt, st.just("BODY"), sections, partials, st.booleans()),
    st.builds(c.FetchAtt, st.just("BINARY"), st.builds(c.Section, st.lists(st.integers(1, 9), max_size=3).map(tuple)),
              partials, st.booleans()),
    st.builds(c.FetchAtt, st.just("BINARY.SIZE"), st.builds(c.Section, st.lists(st.integers(1, 9), max_size=3).map(tuple))),
)  # fmt: skip


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(seqsets, st.lists(fetch_atts, min_size=1, max_size=5, unique=True), st.booleans())
def test_fetch_round_trip(seq: SequenceSet, atts: list[c.FetchAtt], uid: bool) -> None:
    line = f"t {'UID ' if uid else ''}FETCH {seq} ({' '.join(a.request_text() for a in atts)})\r\n".encode()
    assert one(line) == c.Fetch("t", seq, tuple(atts), uid=uid)


mailbox_names = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"), min_size=1, max_size=30
).filter(lambda n: n.upper() != "INBOX")


@settings(max_examples=200)
@given(mailbox_names, st.booleans())
def test_mailbox_name_round_trip_through_the_serializer(name: str, utf8: bool) -> None:
    p = CommandParser()
    p.utf8 = utf8
    p.feed(b"t SELECT " + response.mailbox_name(name, utf8=utf8) + b"\r\n")
    events = [e for e in p.events() if not isinstance(e, c.ContinuationRequest)]
    assert events == [c.Select("t", name)]


@settings(max_examples=200)
@given(
    st.binary(min_size=1, max_size=60).filter(lambda b: b"\0" not in b),
    st.binary(max_size=60).filter(lambda b: b"\0" not in b),
)
def test_any_string_round_trips_through_login(user: bytes, password: bytes) -> None:
    try:
        name = user.decode("utf-8")
    except UnicodeDecodeError:
        return
    line = b"t LOGIN " + response.string(user) + b" " + response.string(password) + b"\r\n"
    assert one(line) == c.Login("t", name, password)


@settings(max_examples=100)
@given(seqsets, st.sampled_from(["", "+", "-"]), st.lists(st.sampled_from(["\\Seen", "\\Deleted", "\\Answered"]) | atoms,
       max_size=4, unique=True), st.booleans(), st.booleans())  # fmt: skip
def test_store_round_trip(seq: SequenceSet, mode: str, flags: list[str], silent: bool, uid: bool) -> None:
    line = f"t {'UID ' if uid else ''}STORE {seq} {mode}FLAGS{'.SILENT' if silent else ''} ({' '.join(flags)})\r\n"
    assert one(line.encode()) == c.Store("t", seq, mode, tuple(flags), silent, uid)  # type: ignore[arg-type]


def test_eight_bit_atoms_are_accepted_where_strings_are_expected() -> None:
    assert one("t SEARCH CHARSET UTF-8 SUBJECT résultats\r\n".encode()) == c.Search(
        "t", c.SearchHeader("Subject", "résultats"), charset="UTF-8"
    )
    assert one("t SELECT Envoyés\r\n".encode()) == c.Select("t", "Envoyés")
    assert one(b't LIST "" Envoy*\r\n') == c.List("t", "", ("Envoy*",))
    assert bad("t FETCH 1 FLAGSé\r\n".encode()).reason.startswith("unexpected")


def test_long_line_during_idle_and_auth() -> None:
    p = CommandParser(max_line=50)
    p.expect_idle_done("i")
    p.feed(b"x" * 60 + b"\r\n")
    assert p.next_event() == c.BadCommand("i", "line too long (limit 50 octets)")
    p.expect_auth_response("a")
    p.feed(b"x" * 60 + b"\r\nb NOOP\r\n")
    assert p.next_event() == c.BadCommand("a", "line too long (limit 50 octets)")
    assert p.next_event() == c.Noop("b")


def test_rejecting_a_literal_discards_the_sink() -> None:
    sinks: list[ChunkSink] = []

    def factory(size: int) -> ChunkSink:
        sinks.append(ChunkSink(size))
        return sinks[-1]

    p = CommandParser(sink_factory=factory, sink_threshold=1)
    p.feed(b"a APPEND INBOX {12}\r\n")
    assert isinstance(p.next_event(), c.ContinuationRequest)
    p.feed(b"0123")
    assert p.next_event() is NEED_DATA
    p.reject_literal()
    assert sinks[0].discarded


def test_append_utf8_once_enabled() -> None:
    p = CommandParser()
    p.utf8 = True
    p.feed("a APPEND INBOX (\\Seen) UTF8 (~{13+}\r\nSubject: é\r\n)\r\n".encode())
    assert p.next_event() == c.Append("a", "INBOX", ("\\Seen",), None, "Subject: é\r\n".encode(), 13, True)
    p.feed(b"b APPEND INBOX UTF8 (~{1+}\r\nx\r\n")
    event = p.next_event()
    assert isinstance(event, c.BadCommand) and "to close the UTF8 message" in event.reason
