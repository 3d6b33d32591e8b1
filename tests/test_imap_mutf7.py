from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mssante_operator.imap.mutf7 import MUTF7Error, decode, decode_name, encode, encode_name


@pytest.mark.parametrize(
    ("text", "wire"),
    [
        ("INBOX", b"INBOX"),
        ("Envoyés", b"Envoy&AOk-s"),
        ("Éléments supprimés", b"&AMk-l&AOk-ments supprim&AOk-s"),
        ("R&D", b"R&-D"),
        ("&", b"&-"),
        ("~peter/mail/台北/日本語", b"~peter/mail/&U,BTFw-/&ZeVnLIqe-"),
        ("Courrier 📬", b"Courrier &2D3c7A-"),
        ("", b""),
    ],
)
def test_known_encodings(text: str, wire: bytes) -> None:
    assert encode(text) == wire
    assert decode(wire) == text


@given(st.text())
def test_round_trip_any_text(text: str) -> None:
    wire = encode(text)
    assert wire.isascii()
    assert all(0x20 <= b <= 0x7E for b in wire)
    assert decode(wire) == text


@given(st.binary(max_size=40))
def test_decode_never_raises_anything_else(data: bytes) -> None:
    try:
        text = decode(data)
    except MUTF7Error:
        return
    # Strict decoding: what decodes re-encodes to the very same bytes.
    assert encode(text) == data


@pytest.mark.parametrize(
    ("wire", "reason"),
    [
        (b"&AOk", "never closed"),
        (b"Envoy\xc3\xa9s", "not allowed"),
        (b"&AOk-&AOk-", "adjacent"),
        (b"&AGE-", "printable ASCII"),
        (b"&A-", "impossible length"),
        (b"&AO!-", "not allowed in an encoded sequence"),
        (b"&AOl-", "padding bits"),
        (b"&2D0-", "UTF-16"),
        (b"tab\there", "not allowed"),
    ],
)
def test_invalid_names_are_refused_with_a_reason(wire: bytes, reason: str) -> None:
    with pytest.raises(MUTF7Error, match=reason):
        decode(wire)


def test_lone_surrogate_cannot_be_encoded() -> None:
    with pytest.raises(MUTF7Error, match="surrogate"):
        encode("a\ud800b")


def test_utf8_mode_keeps_raw_utf8() -> None:
    assert encode_name("Envoyés", utf8=True) == "Envoyés".encode()
    assert encode_name("Envoyés", utf8=False) == b"Envoy&AOk-s"
    assert decode_name("Envoyés".encode(), utf8=True) == "Envoyés"
    # In UTF-8 mode '&' is an ordinary character.
    assert decode_name(b"R&D", utf8=True) == "R&D"
    assert decode_name(b"R&-D", utf8=False) == "R&D"
    # 8-bit names from IMAP4rev2 clients are accepted before ENABLE too.
    assert decode_name("Envoyés".encode(), utf8=False) == "Envoyés"
    with pytest.raises(MUTF7Error, match="neither"):
        decode_name(b"\xff\xfe", utf8=False)
