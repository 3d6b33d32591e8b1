"""The response serializer."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mssante_operator.imap import response as r
from mssante_operator.imap.response import NIL, Atom, Code, Concat, Literal, Stream


@pytest.mark.parametrize(
    ("value", "utf8", "wire"),
    [
        (b"hello", False, b'"hello"'),
        (b"", False, b'""'),
        (b'say "hi" \\o/', False, b'"say \\"hi\\" \\\\o/"'),
        (b"two\r\nlines", False, b"{10}\r\ntwo\r\nlines"),
        (b"bare\nlf", False, b"{7}\r\nbare\nlf"),
        (b"nul\0", False, b"{4}\r\nnul\0"),
        ("Résultat".encode(), False, b"{9}\r\nR\xc3\xa9sultat"),
        ("Résultat".encode(), True, '"Résultat"'.encode()),
        (b"\xff\xfe", True, b"{2}\r\n\xff\xfe"),
        (b"x" * 1025, False, b"{1025}\r\n" + b"x" * 1025),
        ("texte", False, b'"texte"'),
    ],
)
def test_string_picks_quoted_or_literal(value: bytes | str, utf8: bool, wire: bytes) -> None:
    assert r.string(value, utf8=utf8) == wire


def test_render_values() -> None:
    assert r.render(None) == b"NIL"
    assert r.render(42) == b"42"
    assert r.render((1, "a", None, (Atom("\\Seen"),), [])) == b'(1 "a" NIL (\\Seen) ())'
    assert r.render(Concat(((1,), (2,)))) == b"(1)(2)"
    assert r.render(Literal(b"abc")) == b"{3}\r\nabc"
    assert r.render(Literal(b"a\0c", binary=True)) == b"~{3}\r\na\0c"
    assert r.render(Stream(4, [b"ab", b"cd"])) == b"{4}\r\nabcd"
    assert r.render(NIL) == b"NIL"
    with pytest.raises(TypeError):
        r.render(True)


def test_a_stream_must_produce_what_it_announced() -> None:
    with pytest.raises(ValueError, match="announced 5 octets but produced 4"):
        r.render(Stream(5, [b"abcd"]))
    with pytest.raises(ValueError, match="announced 3"):
        b"".join(r.fetch_chunks(1, [("BODY[]", Stream(3, [b"abcd"]))]))


def test_status_lines_and_codes() -> None:
    assert r.tagged("a1", "OK", "LOGIN completed") == b"a1 OK LOGIN completed\r\n"
    assert r.tagged("a1", "NO", "no such mailbox", Code.TRYCREATE) == b"a1 NO [TRYCREATE] no such mailbox\r\n"
    assert r.untagged("BYE", "logging out") == b"* BYE logging out\r\n"
    assert (
        r.untagged("PREAUTH", "welcome", Code.capability(["IMAP4rev1"]))
        == b"* PREAUTH [CAPABILITY IMAP4rev1] welcome\r\n"
    )
    assert r.untagged("BAD", "empty command line") == b"* BAD empty command line\r\n"
    assert r.continuation() == b"+ Ready for literal data\r\n"
    assert r.continuation_data(b"") == b"+ \r\n"
    assert r.continuation_data(b"Username:") == b"+ VXNlcm5hbWU6\r\n"


def test_text_cannot_inject_lines_or_codes() -> None:
    line = r.tagged("a", "NO", "bad\r\n* OK [ALERT] pwned", "X]Y")
    assert line.count(b"\r\n") == 1 and line.endswith(b"\r\n")
    assert line.startswith(b"a NO [X Y] bad  * OK")
    assert r.tagged("a", "OK", "") == b"a OK done\r\n"
    assert r.tagged("a", "OK", "café") == b"a OK caf?\r\n"
    assert r.tagged("a", "OK", "café", utf8=True) == "a OK café\r\n".encode()


def test_code_builders() -> None:
    assert Code.uidvalidity(7) == "UIDVALIDITY 7"
    assert Code.uidnext(8) == "UIDNEXT 8"
    assert Code.unseen(3) == "UNSEEN 3"
    assert Code.highestmodseq(99) == "HIGHESTMODSEQ 99"
    assert Code.permanentflags(["\\Seen", "\\*"]) == "PERMANENTFLAGS (\\Seen \\*)"
    assert Code.appenduid(38505, [3955]) == "APPENDUID 38505 3955"
    assert (
        Code.copyuid(38505, [304, 319, 320, 321], [3956, 3957, 3958, 3959])
        == "COPYUID 38505 304,319:321 3956:3959"
    )
    assert Code.copyuid(1, [5, 6, 2], [10, 11, 12]) == "COPYUID 1 5:6,2 10:12"
    with pytest.raises(ValueError, match="as many"):
        Code.copyuid(1, [1, 2], [3])
    assert Code.modified([7, 9, 8]) == "MODIFIED 7:9"
    assert Code.badcharset() == "BADCHARSET (UTF-8 US-ASCII)"


def test_untagged_data() -> None:
    assert r.capability(["IMAP4rev1", "IDLE"]) == b"* CAPABILITY IMAP4rev1 IDLE\r\n"
    assert r.enabled([]) == b"* ENABLED\r\n"
    assert r.enabled(["CONDSTORE"]) == b"* ENABLED CONDSTORE\r\n"
    assert r.exists(23) == b"* 23 EXISTS\r\n"
    assert r.recent(0) == b"* 0 RECENT\r\n"
    assert r.expunge(5) == b"* 5 EXPUNGE\r\n"
    assert r.vanished([405, 407, 406, 410]) == b"* VANISHED 405:407,410\r\n"
    assert r.vanished([1], earlier=True) == b"* VANISHED (EARLIER) 1\r\n"
    assert r.vanished([]) == b""
    assert r.flags(["\\Seen", "$Urgent"]) == b"* FLAGS (\\Seen $Urgent)\r\n"
    assert r.search([2, 3, 6]) == b"* SEARCH 2 3 6\r\n"
    assert r.search([]) == b"* SEARCH\r\n"
    assert r.search([2], modseq=917162500) == b"* SEARCH 2 (MODSEQ 917162500)\r\n"
    assert r.esearch("A282", uid=True, minimum=2, maximum=47, count=3) == (
        b'* ESEARCH (TAG "A282") UID MIN 2 MAX 47 COUNT 3\r\n'
    )
    assert r.esearch("a", uid=False, all_numbers=[1, 2, 3, 5]) == b'* ESEARCH (TAG "a") ALL 1:3,5\r\n'
    assert r.esearch("a", uid=False, all_numbers=[]) == b'* ESEARCH (TAG "a")\r\n'
    assert r.sort([3, 1]) == b"* SORT 3 1\r\n"
    assert r.quota("", [("STORAGE", 10, 512)]) == b'* QUOTA "" (STORAGE 10 512)\r\n'
    assert r.quotaroot("INBOX", [""]) == b'* QUOTAROOT "INBOX" ""\r\n'
    assert r.namespace([("", "/")]) == b'* NAMESPACE (("" "/")) NIL NIL\r\n'
    assert r.id_response(None) == b"* ID NIL\r\n"
    assert r.id_response([("name", "x"), ("os", None)]) == b'* ID ("name" "x" "os" NIL)\r\n'


def test_list_and_status_encode_mailbox_names() -> None:
    assert r.list_response(["\\HasNoChildren", "\\Sent"], "/", "Envoyés") == (
        b'* LIST (\\HasNoChildren \\Sent) "/" "Envoy&AOk-s"\r\n'
    )
    assert r.list_response([], "/", "Envoyés", utf8=True) == '* LIST () "/" "Envoyés"\r\n'.encode()
    assert r.list_response(["\\Noselect"], None, "") == b'* LIST (\\Noselect) NIL ""\r\n'
    assert r.list_response([], "/", "inbox") == b'* LIST () "/" "INBOX"\r\n'
    assert r.list_response([], "/", "Projets", childinfo=["SUBSCRIBED"]) == (
        b'* LIST () "/" "Projets" ("CHILDINFO" ("SUBSCRIBED"))\r\n'
    )
    assert r.list_response([], "/", "a", kind="LSUB") == b'* LSUB () "/" "a"\r\n'
    assert r.status("Éléments", [("MESSAGES", 3), ("UIDNEXT", 9)]) == (
        b'* STATUS "&AMk-l&AOk-ments" (MESSAGES 3 UIDNEXT 9)\r\n'
    )
    assert r.mailbox_name('a"b') == b'"a\\"b"'


def test_internal_date_format() -> None:
    when = dt.datetime(1996, 7, 17, 2, 44, 25, tzinfo=dt.timezone(-dt.timedelta(hours=7)))
    assert r.imap_date_time(when) == "17-Jul-1996 02:44:25 -0700"
    assert r.imap_date_time(dt.datetime(2025, 1, 6, 9, 5, 0)) == "06-Jan-2025 09:05:00 +0000"
    assert r.imap_date_time(
        dt.datetime(2025, 1, 6, tzinfo=dt.timezone(dt.timedelta(hours=5, minutes=30)))
    ).endswith("+0530")


def test_fetch_serialisation() -> None:
    items = [
        ("UID", 7),
        ("FLAGS", (Atom("\\Seen"),)),
        ("MODSEQ", (12,)),
        ("BODY[HEADER]", b"Subject: x\r\n\r\n"),
    ]
    assert (
        r.fetch(3, items)
        == b"* 3 FETCH (UID 7 FLAGS (\\Seen) MODSEQ (12) BODY[HEADER] {14}\r\nSubject: x\r\n\r\n)\r\n"
    )
    assert r.fetch(1, [("BODY[1]<0>", None)]) == b"* 1 FETCH (BODY[1]<0> NIL)\r\n"


def test_large_fetch_bodies_stream_in_chunks() -> None:
    chunks = [b"x" * 65536 for _ in range(16)]
    produced: list[int] = []

    def body() -> object:
        for i, chunk in enumerate(chunks):
            produced.append(i)
            yield chunk

    out = r.fetch_chunks(9, [("UID", 4), ("BODY[]", Stream(16 * 65536, body())), ("RFC822.SIZE", 1048576)])
    first = next(out)
    assert first == b"* 9 FETCH (UID 4 BODY[] {1048576}\r\n"
    assert produced == []  # nothing of the body produced before the caller asks for it
    body_chunks = [next(out) for _ in range(16)]
    assert body_chunks == chunks  # passed through, never joined
    assert next(out) == b" RFC822.SIZE 1048576)\r\n"
    assert list(out) == []


def test_streams_nested_in_lists() -> None:
    value = [("BINARY[1]", (1, Stream(2, iter([b"a", b"b"])), Literal(b"\0", binary=True)))]
    chunks = list(r.fetch_chunks(1, value))  # type: ignore[arg-type]
    assert b"".join(chunks) == b"* 1 FETCH (BINARY[1] (1 {2}\r\nab ~{1}\r\n\0))\r\n"


values = st.recursive(
    st.one_of(st.none(), st.integers(0, 2**63), st.binary(max_size=30), st.text(max_size=10),
              st.builds(Atom, st.sampled_from(["\\Seen", "NIL", "$x"]))),
    lambda inner: st.lists(inner, max_size=4).map(tuple),
    max_leaves=12,
)  # fmt: skip


@given(
    st.lists(st.tuples(st.sampled_from(["UID", "FLAGS", "BODY[]", "ENVELOPE"]), values), max_size=5),
    st.booleans(),
)
def test_chunks_join_to_the_whole(items: list[tuple[str, r.Value]], utf8: bool) -> None:
    whole = r.fetch(1, items, utf8=utf8)
    assert b"".join(r.fetch_chunks(1, items, utf8=utf8)) == whole
    assert whole.startswith(b"* 1 FETCH (") and whole.endswith(b")\r\n")
