"""ENVELOPE / BODYSTRUCTURE against hand-checked strings; byte-exact section extraction."""
# ruff: noqa: E501  (expected IMAP structures read best on one line)

from __future__ import annotations

import base64

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mssante_operator.imap import mime
from mssante_operator.imap.commands import Section
from mssante_operator.imap.response import render


def crlf(text: str) -> bytes:
    return text.replace("\n", "\r\n").encode("utf-8")


MIXED = crlf(
    """Return-Path: <jean.dupont@hopital-a.mssante.fr>
Received: from mx.hopital-a.mssante.fr by mx.example; Mon, 6 Jan 2025 10:00:01 +0100
From: "Dupont, Jean (Dr)" <jean.dupont@hopital-a.mssante.fr>
To: =?UTF-8?Q?Marie_Cur=C3=A9?= <marie.cure@cabinet-b.mssante.fr>
Cc: undisclosed-recipients:;
Subject: =?UTF-8?B?Q29tcHRlIHJlbmR1IGQnaG9zcGl0YWxpc2F0aW9u?=
Date: Mon, 6 Jan 2025 10:00:00 +0100
Message-ID: <20250106.1@hopital-a.mssante.fr>
In-Reply-To: <prev@cabinet-b.mssante.fr>
X-MSS-NIL: DPI-Hopital-A 4.2
X-MSS-CODECDA: 11490-0
X-MSS-INS: O
MIME-Version: 1.0
Content-Type: multipart/mixed;
 boundary="----=_Part_0"

This is a multi-part message in MIME format.
------=_Part_0
Content-Type: multipart/alternative; boundary="alt"

--alt
Content-Type: text/plain; charset=utf-8
Content-Transfer-Encoding: quoted-printable

Bonjour,
Veuillez trouver ci-joint le compte rendu.
--alt
Content-Type: text/html; charset=utf-8

<p>Bonjour,</p>
--alt--
------=_Part_0
Content-Type: application/pdf; name="CR_hospitalisation.pdf"
Content-Disposition: attachment; filename="CR_hospitalisation.pdf"
Content-Transfer-Encoding: base64

JVBERi0xLjQKJcOkw7zDtsOfCjIgMCBvYmoK
------=_Part_0
Content-Type: application/zip; name="IHE_XDM.ZIP"
Content-Disposition: attachment; filename="IHE_XDM.ZIP"; size=8
Content-Transfer-Encoding: base64

UEsDBBQAAAAIAA==
------=_Part_0--
"""
)

TEXT_PART = '("TEXT" "PLAIN" ("charset" "utf-8") NIL NIL "QUOTED-PRINTABLE" 52 2 NIL NIL NIL NIL)'
HTML_PART = '("TEXT" "HTML" ("charset" "utf-8") NIL NIL "7BIT" 15 1 NIL NIL NIL NIL)'
PDF_PART = (
    '("APPLICATION" "PDF" ("name" "CR_hospitalisation.pdf") NIL NIL "BASE64" 36 NIL '
    '("ATTACHMENT" ("filename" "CR_hospitalisation.pdf")) NIL NIL)'
)
ZIP_PART = (
    '("APPLICATION" "ZIP" ("name" "IHE_XDM.ZIP") NIL NIL "BASE64" 16 NIL '
    '("ATTACHMENT" ("filename" "IHE_XDM.ZIP" "size" "8")) NIL NIL)'
)


def structure(raw: bytes, *, extended: bool = True) -> str:
    return render(mime.body_structure(mime.parse_message(raw), extended=extended)).decode()


def test_bodystructure_mixed_with_alternative_pdf_and_ihe_xdm() -> None:
    assert structure(MIXED) == (
        f'(({TEXT_PART}{HTML_PART} "ALTERNATIVE" ("boundary" "alt") NIL NIL NIL){PDF_PART}{ZIP_PART} '
        '"MIXED" ("boundary" "----=_Part_0") NIL NIL NIL)'
    )


def test_body_is_bodystructure_without_extension_data() -> None:
    assert structure(MIXED, extended=False) == (
        '((("TEXT" "PLAIN" ("charset" "utf-8") NIL NIL "QUOTED-PRINTABLE" 52 2)'
        '("TEXT" "HTML" ("charset" "utf-8") NIL NIL "7BIT" 15 1) "ALTERNATIVE")'
        '("APPLICATION" "PDF" ("name" "CR_hospitalisation.pdf") NIL NIL "BASE64" 36)'
        '("APPLICATION" "ZIP" ("name" "IHE_XDM.ZIP") NIL NIL "BASE64" 16) "MIXED")'
    )


def test_envelope_keeps_encoded_words_raw_and_handles_groups() -> None:
    env = render(mime.envelope(mime.parse_message(MIXED))).decode()
    dupont = '(("Dupont, Jean (Dr)" NIL "jean.dupont" "hopital-a.mssante.fr"))'
    assert env == (
        '("Mon, 6 Jan 2025 10:00:00 +0100" "=?UTF-8?B?Q29tcHRlIHJlbmR1IGQnaG9zcGl0YWxpc2F0aW9u?=" '
        f"{dupont} {dupont} {dupont} "
        '(("=?UTF-8?Q?Marie_Cur=C3=A9?=" NIL "marie.cure" "cabinet-b.mssante.fr")) '
        '((NIL NIL "undisclosed-recipients" NIL)(NIL NIL NIL NIL)) NIL '
        '"<prev@cabinet-b.mssante.fr>" "<20250106.1@hopital-a.mssante.fr>")'
    )


def test_sections_of_the_mixed_message() -> None:
    root = mime.parse_message(MIXED)
    header_end = MIXED.index(b"\r\n\r\n") + 4
    assert mime.section_bytes(root, Section()) == MIXED
    assert mime.section_bytes(root, Section((), "HEADER")) == MIXED[:header_end]
    assert mime.section_bytes(root, Section((), "TEXT")) == MIXED[header_end:]
    assert (
        mime.section_bytes(root, Section((1, 1))) == b"Bonjour,\r\nVeuillez trouver ci-joint le compte rendu."
    )
    assert mime.section_bytes(root, Section((1, 2))) == b"<p>Bonjour,</p>"
    assert mime.section_bytes(root, Section((1,))) == crlf(
        """--alt
Content-Type: text/plain; charset=utf-8
Content-Transfer-Encoding: quoted-printable

Bonjour,
Veuillez trouver ci-joint le compte rendu.
--alt
Content-Type: text/html; charset=utf-8

<p>Bonjour,</p>
--alt--"""
    )
    assert (
        mime.section_bytes(root, Section((1, 2), "MIME")) == b"Content-Type: text/html; charset=utf-8\r\n\r\n"
    )
    assert mime.section_bytes(root, Section((3,))) == b"UEsDBBQAAAAIAA=="
    assert mime.section_bytes(root, Section((3,), "MIME")) == crlf(
        """Content-Type: application/zip; name="IHE_XDM.ZIP"
Content-Disposition: attachment; filename="IHE_XDM.ZIP"; size=8
Content-Transfer-Encoding: base64

"""
    )
    assert mime.section_bytes(
        root, Section((), "HEADER.FIELDS", ("x-mss-codecda", "X-MSS-INS", "Content-Type"))
    ) == (
        # In message order, folded lines included, then the blank line.
        b'X-MSS-CODECDA: 11490-0\r\nX-MSS-INS: O\r\nContent-Type: multipart/mixed;\r\n boundary="----=_Part_0"\r\n\r\n'
    )
    not_fields = mime.section_bytes(root, Section((), "HEADER.FIELDS.NOT", ("Received", "Return-Path")))
    assert not_fields is not None
    assert (
        not_fields.startswith(b"From: ")
        and b"Received" not in not_fields
        and not_fields.endswith(b"\r\n\r\n")
    )
    # Parts that do not exist, or text specifiers on a part that is not a message.
    assert mime.section_bytes(root, Section((4,))) is None
    assert mime.section_bytes(root, Section((1, 3))) is None
    assert mime.section_bytes(root, Section((3, 1))) is None
    assert mime.section_bytes(root, Section((3,), "HEADER")) is None
    assert mime.section_bytes(root, Section((), "MIME")) is None


def test_binary_decodes_the_transfer_encoding() -> None:
    root = mime.parse_message(MIXED)
    assert mime.binary_section(root, (3,)) == base64.b64decode("UEsDBBQAAAAIAA==")
    assert mime.binary_section(root, (2,)) == base64.b64decode("JVBERi0xLjQKJcOkw7zDtsOfCjIgMCBvYmoK")
    assert mime.binary_section(root, (1, 1)) == b"Bonjour,\r\nVeuillez trouver ci-joint le compte rendu."
    assert mime.binary_section(root, (1, 2)) == b"<p>Bonjour,</p>"
    assert mime.binary_section(root, ()) == MIXED
    assert mime.binary_section(root, (9,)) is None
    weird = mime.parse_message(b"Content-Transfer-Encoding: x-uuencode\r\n\r\nbegin 644\r\n")
    with pytest.raises(mime.UnknownTransferEncoding, match="x-uuencode"):
        mime.binary_section(weird, (1,))


def test_partial() -> None:
    assert mime.partial(b"0123456789", 2, 3) == b"234"
    assert mime.partial(b"0123456789", 8, 100) == b"89"
    assert mime.partial(b"0123456789", 50, 3) == b""


FORWARD = crlf(
    """From: secretariat@cabinet-b.mssante.fr
To: jean.dupont@hopital-a.mssante.fr
Subject: Fwd: resultats
Date: Tue, 7 Jan 2025 09:00:00 +0100
MIME-Version: 1.0
Content-Type: multipart/mixed; boundary=outer

--outer
Content-Type: text/plain

See below.
--outer
Content-Type: message/rfc822
Content-Description: forwarded message

From: labo@labo-c.mssante.fr
Subject: resultats
Message-ID: <r1@labo-c>
Content-Type: multipart/mixed; boundary=inner

--inner
Content-Type: text/plain; charset=us-ascii

Glycemie normale.
--inner
Content-Type: application/pdf
Content-Disposition: inline

%PDF
--inner--
--outer--
"""
)


def test_bodystructure_of_a_nested_message() -> None:
    inner_env = (
        '(NIL "resultats" ((NIL NIL "labo" "labo-c.mssante.fr")) ((NIL NIL "labo" "labo-c.mssante.fr")) '
        '((NIL NIL "labo" "labo-c.mssante.fr")) NIL NIL NIL NIL "<r1@labo-c>")'
    )
    inner_body = (
        '(("TEXT" "PLAIN" ("charset" "us-ascii") NIL NIL "7BIT" 17 1 NIL NIL NIL NIL)'
        '("APPLICATION" "PDF" NIL NIL NIL "7BIT" 4 NIL ("INLINE" NIL) NIL NIL) "MIXED" ("boundary" "inner") NIL NIL NIL)'
    )
    assert structure(FORWARD) == (
        '(("TEXT" "PLAIN" NIL NIL NIL "7BIT" 10 1 NIL NIL NIL NIL)'
        f'("MESSAGE" "RFC822" NIL NIL "forwarded message" "7BIT" 284 {inner_env} {inner_body} 15 NIL NIL NIL NIL) '
        '"MIXED" ("boundary" "outer") NIL NIL NIL)'
    )


def test_sections_of_a_nested_message() -> None:
    root = mime.parse_message(FORWARD)
    start = FORWARD.index(b"From: labo@")
    nested = FORWARD[start : FORWARD.index(b"\r\n--outer--")]
    assert len(nested) == 284
    assert mime.section_bytes(root, Section((2,))) == nested
    nested_header = nested[: nested.index(b"\r\n\r\n") + 4]
    assert mime.section_bytes(root, Section((2,), "HEADER")) == nested_header
    assert mime.section_bytes(root, Section((2,), "TEXT")) == nested[len(nested_header) :]
    assert mime.section_bytes(root, Section((2,), "MIME")) == (
        b"Content-Type: message/rfc822\r\nContent-Description: forwarded message\r\n\r\n"
    )
    assert (
        mime.section_bytes(root, Section((2,), "HEADER.FIELDS", ("Subject",)))
        == b"Subject: resultats\r\n\r\n"
    )
    assert mime.section_bytes(root, Section((2, 1))) == b"Glycemie normale."
    assert mime.section_bytes(root, Section((2, 2))) == b"%PDF"
    assert mime.section_bytes(root, Section((2, 2), "MIME")) == (
        b"Content-Type: application/pdf\r\nContent-Disposition: inline\r\n\r\n"
    )
    assert mime.section_bytes(root, Section((2, 3))) is None
    assert mime.section_bytes(root, Section((1,))) == b"See below."


def test_a_message_without_content_type() -> None:
    raw = b"From: a@b.fr\r\nSubject: hello\r\n\r\nline1\r\nline2\r\n"
    assert structure(raw) == '("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 14 2 NIL NIL NIL NIL)'
    root = mime.parse_message(raw)
    # A non-multipart message has one part, 1: its body.
    assert mime.section_bytes(root, Section((1,))) == b"line1\r\nline2\r\n"
    assert mime.section_bytes(root, Section((2,))) is None
    assert mime.section_bytes(root, Section((1, 1))) is None
    assert render(mime.envelope(root)) == (
        b'(NIL "hello" ((NIL NIL "a" "b.fr")) ((NIL NIL "a" "b.fr")) ((NIL NIL "a" "b.fr")) NIL NIL NIL NIL NIL)'
    )


def test_extension_fields_language_location_md5_id_description() -> None:
    raw = crlf(
        """Content-Type: text/plain; charset="iso-8859-1"; format=flowed
Content-ID: <part1@x>
Content-Description: Note
Content-MD5: Q2hlY2sgSW50ZWdyaXR5IQ==
Content-Language: fr, en
Content-Location: http://example/note.txt
Content-Disposition: inline; filename*=UTF-8''compte%20rendu.txt

abc
"""
    )
    assert structure(raw) == (
        '("TEXT" "PLAIN" ("charset" "iso-8859-1" "format" "flowed") "<part1@x>" "Note" "7BIT" 5 1 '
        '"Q2hlY2sgSW50ZWdyaXR5IQ==" ("INLINE" ("filename*" "UTF-8\'\'compte%20rendu.txt")) ("fr" "en") '
        '"http://example/note.txt")'
    )
    one_language = raw.replace(b"fr, en", b"fr")
    assert '"Q2hlY2sgSW50ZWdyaXR5IQ==" ("INLINE"' in structure(one_language)
    assert ') "fr" "http://example/note.txt")' in structure(one_language)


def test_eight_bit_headers_become_literals() -> None:
    raw = "Subject: Résultat\r\nFrom: Zoé <zoe@x.fr>\r\n\r\nx".encode()
    env = render(mime.envelope(mime.parse_message(raw)))
    assert env.startswith(b"(NIL {9}\r\nR\xc3\xa9sultat ((" + b"{4}\r\nZo\xc3\xa9")
    assert render(mime.envelope(mime.parse_message(raw)), utf8=True).startswith(
        '(NIL "Résultat" (("Zoé"'.encode()
    )


def test_lf_only_messages() -> None:
    raw = b"Content-Type: multipart/mixed; boundary=b\n\n--b\nContent-Type: text/plain\n\nhi\nthere\n--b--\n"
    root = mime.parse_message(raw)
    assert mime.section_bytes(root, Section((1,))) == b"hi\nthere"
    assert (
        structure(raw)
        == '(("TEXT" "PLAIN" NIL NIL NIL "7BIT" 8 2 NIL NIL NIL NIL) "MIXED" ("boundary" "b") NIL NIL NIL)'
    )


def test_unterminated_and_broken_multiparts() -> None:
    unterminated = b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n\r\nabc\r\n--b\r\n\r\ndef\r\n"
    root = mime.parse_message(unterminated)
    assert [mime.section_bytes(root, Section((i,))) for i in (1, 2)] == [b"abc", b"def\r\n"]
    no_delimiters = b"Content-Type: multipart/mixed; boundary=zz\r\n\r\njust text\r\n"
    assert structure(no_delimiters) == (
        '(("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 11 1 NIL NIL NIL NIL) "MIXED" ("boundary" "zz") NIL NIL NIL)'
    )
    no_boundary = b"Content-Type: multipart/mixed\r\n\r\nhello"
    assert structure(no_boundary).startswith('("TEXT" "PLAIN" NIL NIL NIL "7BIT" 5 1')
    # A line that merely starts with the boundary is not a delimiter.
    prefix = b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n\r\n--bx\r\n--b--\r\n"
    assert mime.section_bytes(mime.parse_message(prefix), Section((1,))) == b"--bx"
    # An invalid Content-Type falls back to the default.
    assert structure(b"Content-Type: garbage\r\n\r\nx").startswith('("TEXT" "PLAIN" ("CHARSET" "US-ASCII")')
    # A header without any body.
    assert (
        structure(b"Subject: x\r\n")
        == '("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 0 0 NIL NIL NIL NIL)'
    )


def test_digest_parts_default_to_message_rfc822() -> None:
    raw = (
        b"Content-Type: multipart/digest; boundary=d\r\n\r\n--d\r\n\r\nSubject: one\r\n\r\nbody\r\n--d--\r\n"
    )
    text = structure(raw)
    assert text.startswith(
        '(("MESSAGE" "RFC822" NIL NIL NIL "7BIT" 20 (NIL "one" NIL NIL NIL NIL NIL NIL NIL NIL) '
    )


def test_deep_nesting_is_bounded() -> None:
    raw = b""
    for depth in range(100):
        raw += f"Content-Type: multipart/mixed; boundary=b{depth}\r\n\r\n--b{depth}\r\n".encode()
    raw += b"\r\nleaf\r\n"
    root = mime.parse_message(raw)
    render(mime.body_structure(root))  # no recursion error


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (b"jean@x.fr", b'((NIL NIL "jean" "x.fr"))'),
        (b"Jean Dupont <jean@x.fr>", b'(("Jean Dupont" NIL "jean" "x.fr"))'),
        (
            b'"Dupont, Jean" <jean@x.fr>, marie@y.fr',
            b'(("Dupont, Jean" NIL "jean" "x.fr")(NIL NIL "marie" "y.fr"))',
        ),
        (b"jean@x.fr (Jean Dupont)", b'(("Jean Dupont" NIL "jean" "x.fr"))'),
        (b"<@relay.fr,@r2.fr:jean@x.fr>", b'((NIL "@relay.fr,@r2.fr" "jean" "x.fr"))'),
        (
            b'Equipe: a@x.fr, "B" <b@y.fr>;, c@z.fr',
            b'((NIL NIL "Equipe" NIL)(NIL NIL "a" "x.fr")("B" NIL "b" "y.fr")(NIL NIL NIL NIL)(NIL NIL "c" "z.fr"))',
        ),
        (b"jean", b'((NIL NIL "jean" "MISSING_DOMAIN"))'),
        (b'"jean dupont"@x.fr', b'((NIL NIL "\\"jean dupont\\"" "x.fr"))'),
        (b"=?UTF-8?Q?Ren=C3=A9?= <r@x.fr>", b'(("=?UTF-8?Q?Ren=C3=A9?=" NIL "r" "x.fr"))'),
        (b"Dr. Who <who@tardis.fr>", b'(("Dr . Who" NIL "who" "tardis.fr"))'),
        (b"", b"NIL"),
        (b"  ,  ", b"NIL"),
        (b"x@[192.0.2.1]", b'((NIL NIL "x" "[192.0.2.1]"))'),
    ],
)
def test_addresses(header: bytes, expected: bytes) -> None:
    root = mime.parse_message(b"To: " + header + b"\r\n\r\n")
    env = mime.envelope(root)
    assert isinstance(env, tuple)
    assert render(env[5]) == expected


# -------------------------------------------------------------- generated trees: byte-exact sections

body_lines = st.lists(st.text(alphabet="abcdefgh XYZ=+/.é", max_size=20), max_size=4)


@st.composite
def trees(draw: st.DrawFn, depth: int = 0) -> dict[str, object]:
    if depth < 3 and draw(st.booleans()):
        children = draw(st.lists(trees(depth + 1), min_size=1, max_size=3))
        return {"multi": draw(st.sampled_from(["mixed", "alternative", "related"])), "children": children,
                "preamble": draw(st.sampled_from([b"", b"preamble\r\n"])), "epilogue": draw(st.sampled_from([b"", b"\r\nepilogue"]))}  # fmt: skip
    lines = draw(body_lines)
    kind = draw(st.sampled_from(["text/plain", "application/pdf", "application/zip", None]))
    return {"type": kind, "body": "\r\n".join(lines).encode()}


def build(
    node: dict[str, object], path: tuple[int, ...], expected: dict[tuple[int, ...], tuple[bytes, bytes]]
) -> tuple[bytes, bytes]:
    """(header block, body) of a part; records every part's (MIME header, body) by path."""
    if "multi" in node:
        boundary = "b" + "_".join(map(str, path)) + "x"
        header = f'Content-Type: multipart/{node["multi"]}; boundary="{boundary}"\r\n\r\n'.encode()
        body = node["preamble"]  # type: ignore[assignment]
        assert isinstance(body, bytes)
        children = node["children"]
        assert isinstance(children, list)
        for i, child in enumerate(children, 1):
            ch_header, ch_body = build(child, (*path, i), expected)
            body += (b"\r\n" if body else b"") + f"--{boundary}\r\n".encode() + ch_header + ch_body
        body += f"\r\n--{boundary}--".encode() + node["epilogue"]  # type: ignore[operator]
    else:
        kind = node["type"]
        header = (
            (f"Content-Type: {kind}\r\n" if kind else "").encode()
            + b"X-Part: "
            + str(path).encode()
            + b"\r\n\r\n"
        )
        body = node["body"]  # type: ignore[assignment]
        assert isinstance(body, bytes)
    expected[path] = (header, body)
    return header, body


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(trees())
def test_generated_messages_sections_are_byte_exact(tree: dict[str, object]) -> None:
    expected: dict[tuple[int, ...], tuple[bytes, bytes]] = {}
    header, body = build(tree, (), expected)
    raw = b"From: a@b.fr\r\nSubject: generated\r\nMIME-Version: 1.0\r\n" + header + body
    root = mime.parse_message(raw)
    assert mime.section_bytes(root, Section()) == raw
    head = mime.section_bytes(root, Section((), "HEADER"))
    text = mime.section_bytes(root, Section((), "TEXT"))
    assert head is not None and text is not None and head + text == raw
    for path, (part_header, part_body) in expected.items():
        if not path:
            continue
        assert mime.section_bytes(root, Section(path)) == part_body, path
        assert mime.section_bytes(root, Section(path, "MIME")) == part_header, path
    if "multi" not in tree:
        assert mime.section_bytes(root, Section((1,))) == body
    rendered = render(mime.body_structure(root))
    assert rendered.count(b"(") == rendered.count(b")") or b"{" in rendered


def test_header_syntax_corners() -> None:
    raw = (
        b'Content-Type: text/plain (a comment (nested)) ; charset = "utf\\"-8" ; junk ; format=flowed; =x\r\n'
        b'Content-Disposition: attachment (why); filename="a\\\\b.pdf\r\n'
        b"To: Team: a@x.fr\r\n"
        b"Subject: no newline at the end"
    )
    root = mime.parse_message(raw)
    assert root.params == [(b"charset", b'utf"-8'), (b"format", b"flowed")]
    assert structure(raw).endswith('("ATTACHMENT" ("filename" "a\\\\b.pdf")) NIL NIL)')
    env = mime.envelope(root)
    assert isinstance(env, tuple)
    assert render(env[5]) == b'((NIL NIL "Team" NIL)(NIL NIL "a" "x.fr")(NIL NIL NIL NIL))'
    assert (
        mime.section_bytes(root, Section((), "HEADER.FIELDS", ("Subject",)))
        == b"Subject: no newline at the end\r\n\r\n"
    )
    assert (
        mime.section_bytes(
            root, Section((), "HEADER.FIELDS.NOT", ("Content-Type", "Content-Disposition", "To", "Subject"))
        )
        == b"\r\n"
    )


def test_binary_of_containers_and_broken_base64() -> None:
    root = mime.parse_message(FORWARD)
    assert mime.binary_section(root, (2,)) == mime.section_bytes(root, Section((2,)))
    broken = mime.parse_message(b"Content-Transfer-Encoding: base64\r\n\r\nabc")
    with pytest.raises(mime.UnknownTransferEncoding, match="invalid base64"):
        mime.binary_section(broken, (1,))
    qp = mime.parse_message(b"Content-Transfer-Encoding: quoted-printable\r\n\r\nGlyc=C3=A9mie=\r\n normale")
    assert mime.binary_section(qp, (1,)) == "Glycémie normale".encode()
