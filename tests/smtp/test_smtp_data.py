"""The sans-IO DATA reader (dot-unstuffing, smuggling defence, limits) and the Received header."""

from __future__ import annotations

import email
import email.policy
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mssante_operator.smtp.data import DataLimits, DataReader, DataResult, ReceivedInfo, received_header

LIMITS = DataLimits(max_size=10_000, max_line_length=1000, max_header_count=20)


def run(
    stream: bytes, limits: DataLimits = LIMITS, chunks: list[int] | None = None
) -> tuple[DataResult, int]:
    reader = DataReader(limits)
    consumed = 0
    pieces: list[bytes] = []
    if chunks is None:
        pieces = [stream]
    else:
        pos = 0
        for size in chunks:
            pieces.append(stream[pos : pos + size])
            pos += size
        pieces.append(stream[pos:])
    for piece in pieces:
        if reader.done:
            break
        consumed += reader.feed(piece)
    assert reader.done, "end of data not found"
    return reader.result, consumed


def test_plain_message_and_dot_unstuffing() -> None:
    stream = b"Subject: x\r\n\r\n..leading dot\r\n.\r\nQUIT\r\n"
    result, consumed = run(stream)
    assert result.ok
    assert result.content == b"Subject: x\r\n\r\n.leading dot\r\n"
    assert stream[consumed:] == b"QUIT\r\n"
    assert result.header_count == 1


def test_empty_message() -> None:
    result, consumed = run(b".\r\n")
    assert result.ok and result.content == b"" and consumed == 3


@pytest.mark.parametrize(
    "smuggle",
    [
        b"\n.\n",
        b"\r.\r",
        b"\n.\r\n",
        b"\r\n.\n",
        b"\r\n.\r",
        b"\n.\r",
        b"\r.\r\n",
        b"\r\n.\r\r\n",
    ],
)
def test_smuggling_markers_do_not_end_the_message(smuggle: bytes) -> None:
    second = (
        b"MAIL FROM:<evil@attacker.example>\r\nRCPT TO:<victim@hopital.example>\r\n"
        b"DATA\r\nSubject: forged\r\n\r\nx\r\n"
    )
    stream = b"Subject: first\r\n\r\nbody" + smuggle + second + b".\r\nNEXT\r\n"
    result, consumed = run(stream)
    assert not result.ok
    assert result.reason == "bare_line_ending"
    assert result.reply is not None and str(result.reply).startswith(
        "554 5.6.0 Message refused: bare LF or bare CR"
    )
    # The whole thing is one refused message: the reader stops at the real end, not at the smuggled one.
    assert stream[consumed:] == b"NEXT\r\n"


def test_bare_lf_elsewhere_is_refused_too() -> None:
    result, _ = run(b"Subject: a\nb\r\n\r\nx\r\n.\r\n")
    assert result.reason == "bare_line_ending"
    assert result.reply is not None and "line 1" in result.reply.text


def test_line_too_long() -> None:
    long_line = b"x" * 999 + b"\r\n"
    result, _ = run(b"\r\n" + long_line + b".\r\n")
    assert result.reason == "line_too_long"
    assert result.reply is not None and str(result.reply).startswith(
        "554 5.6.0 Line 2 of the message is longer than 1000"
    )
    ok, _ = run(b"\r\n" + b"x" * 998 + b"\r\n" + b"." + b"y" * 998 + b"\r\n.\r\n")
    assert ok.ok  # 1000 octets with CRLF, plus a transparent dot, is fine


def test_very_long_line_in_small_chunks_is_bounded() -> None:
    stream = b"\r\n" + b"x" * 200_000 + b"\r\n.\r\n"
    result, consumed = run(stream, DataLimits(max_size=10**7), chunks=[7] * 40_000)
    assert result.reason == "line_too_long" and consumed == len(stream)


def test_too_many_headers() -> None:
    headers = b"".join(b"X-H%d: v\r\n" % i for i in range(21))
    result, _ = run(headers + b"\r\nbody\r\n.\r\n")
    assert result.reason == "too_many_headers"
    folded = b"".join(b"X-H%d: v\r\n continued\r\n" % i for i in range(20))
    assert run(folded + b"\r\nbody\r\n.\r\n")[0].ok


def test_size_limit_exact_reply() -> None:
    body = b"\r\n" + (b"y" * 98 + b"\r\n") * 101
    result, consumed = run(body + b".\r\n")
    assert result.reason == "size_exceeded"
    assert result.reply is not None
    assert str(result.reply) == "552 5.3.4 Message size exceeds fixed maximum message size of 10000 octets"
    assert consumed == len(body) + 3
    exact = b"\r\n" + (b"y" * 98 + b"\r\n") * 99 + b"y" * 96 + b"\r\n"
    assert len(exact) == 10_000 and run(exact + b".\r\n")[0].ok


def test_bare_lf_wins_over_size() -> None:
    body = b"\r\n" + (b"y" * 98 + b"\r\n") * 200 + b"z\n"
    assert run(body + b"\r\n.\r\n")[0].reason == "bare_line_ending"


def test_not_done_until_terminator() -> None:
    reader = DataReader(LIMITS)
    assert reader.feed(b"a\r\n.") == 4
    assert not reader.done
    with pytest.raises(RuntimeError):
        _ = reader.result
    assert reader.feed(b"\r\n") == 2 and reader.done


line = st.one_of(
    st.binary(max_size=40).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"") + b"\r\n"),
    st.sampled_from([b".\r\n", b"..\r\n", b".x\r\n", b"\r\n", b"\n", b"\r", b"\n.\n", b"\r.\r", b"\n.\r\n"]),
    st.binary(max_size=20),
)


@settings(max_examples=300)
@given(st.lists(line, max_size=30), st.lists(st.integers(min_value=1, max_value=17), max_size=40))
def test_any_chunking_gives_the_same_result(lines: list[bytes], cuts: list[int]) -> None:
    stream = b"".join(lines) + b"\r\n.\r\nTRAILER"
    limits = DataLimits(max_size=300, max_line_length=30, max_header_count=5)
    whole, consumed_whole = run(stream, limits)
    chunked, consumed_chunked = run(stream, limits, chunks=cuts)
    assert chunked == whole
    assert consumed_chunked == consumed_whole
    assert (b"\r\n" + stream[:consumed_whole]).endswith(b"\r\n.\r\n")
    # The end is never inside what a bare LF/CR could fake: the line before "." ended with CRLF.
    if whole.ok:
        assert whole.content is not None
        assert all(part.endswith(b"\r") or part == b"" for part in whole.content.split(b"\n")[:-1])


@given(st.binary(max_size=400))
def test_random_bytes_never_crash(data: bytes) -> None:
    reader = DataReader(DataLimits(max_size=200, max_line_length=50, max_header_count=3))
    consumed = reader.feed(data)
    assert 0 <= consumed <= len(data)
    if reader.done:
        result = reader.result
        assert result.ok or (result.reply is not None and result.reply.code >= 500)


def test_received_header() -> None:
    info = ReceivedInfo(
        helo="mx.peer.example",
        peer_ip="192.0.2.7",
        by_host="mail.hopital.example",
        queue_id="01ABCDEF",
        tls_version="TLSv1.3",
        tls_cipher="TLS_AES_256_GCM_SHA384",
        tls_bits=256,
        peer_subject="CN=mx.peer.example,O=Peer (SAS),C=FR,L=Évry",
        recipient="jean@hopital.example",
    )
    header = received_header(info, datetime(2026, 11, 22, 1, 2, 3, tzinfo=UTC))
    assert header.endswith(b"\r\n") and header.isascii()
    assert all(line.startswith(b"\t") for line in header.split(b"\r\n")[1:-1])
    msg = email.message_from_bytes(header + b"Subject: s\r\n\r\nbody\r\n", policy=email.policy.SMTP)
    value = str(msg["Received"])
    assert "from mx.peer.example ([192.0.2.7])" in value
    assert "using TLSv1.3 with cipher TLS_AES_256_GCM_SHA384 (256/256 bits)" in value
    assert 'peer certificate subject "CN=mx.peer.example,O=Peer \\(SAS\\),C=FR,L=\\C3\\89vry"' in value
    assert "by mail.hopital.example (mssante-operator) with ESMTPS id 01ABCDEF" in value
    assert value.endswith("for <jean@hopital.example>; Sun, 22 Nov 2026 01:02:03 +0000")


def test_received_header_hostile_helo_and_no_rcpt() -> None:
    info = ReceivedInfo(helo="evil)\r\nX-Injected: 1 (", peer_ip="2001:db8::1", by_host="h", queue_id="Q")
    header = received_header(info, datetime(2026, 1, 1, tzinfo=UTC))
    assert (
        b"X-Injected: 1" not in header.replace(b"\r\n\t", b" ").split(b"\r\n")[0] or b"\r\nX-" not in header
    )
    assert b"\r\nX-Injected" not in header
    assert b"[IPv6:2001:db8::1]" in header
    assert header.rstrip(b"\r\n").endswith(b"id Q;\r\n\tThu, 01 Jan 2026 00:00:00 +0000")


body_line = st.one_of(
    st.integers(min_value=0, max_value=34).map(lambda n: b"b" * n + b"\r\n"),
    st.integers(min_value=0, max_value=34).map(lambda n: b"." + b"d" * n + b"\r\n"),
    st.sampled_from([b".\r\n", b"..\r\n", b"\r\n", b"x\n", b"y\r", b"\r\n.\n", b"a\rb\r\n"]),
)


@settings(max_examples=400)
@given(
    st.lists(body_line, max_size=40),
    st.integers(min_value=20, max_value=600),
    st.booleans(),
)
def test_bulk_path_equals_line_by_line(lines: list[bytes], max_size: int, headers: bool) -> None:
    """Feeding everything at once takes the bulk path for body lines; feeding one octet at a time
    never does. Both must agree exactly, including where the message ends."""
    head = b"Subject: s\r\n\r\n" if headers else b"\r\n"
    stream = head + b"".join(lines) + b"\r\n.\r\nNEXT"
    limits = DataLimits(max_size=max_size, max_line_length=32, max_header_count=5)
    whole, consumed_whole = run(stream, limits)
    reader = DataReader(limits)
    consumed = 0
    for index in range(len(stream)):
        if reader.done:
            break
        consumed += reader.feed(stream[index : index + 1])
    assert reader.result == whole
    assert consumed == consumed_whole


def test_bulk_path_handles_a_large_body() -> None:
    body = b"Subject: big\r\n\r\n" + (b"." + b"z" * 75 + b"\r\n") * 20_000
    result, consumed = run(body + b".\r\nQUIT\r\n", DataLimits(max_size=10**7))
    assert result.ok and result.content == body.replace(b"\r\n.", b"\r\n")
    assert consumed == len(body) + 3


@given(st.text(max_size=120), st.text(max_size=200), st.text(max_size=60), st.text(max_size=40))
def test_received_header_is_always_one_safe_header(helo: str, subject: str, recipient: str, qid: str) -> None:
    info = ReceivedInfo(
        helo=helo,
        peer_ip="192.0.2.1",
        by_host="mx.example",
        queue_id=qid,
        tls_version="TLSv1.3",
        tls_cipher="TLS_AES_128_GCM_SHA256",
        peer_subject=subject,
        recipient=recipient or None,
    )
    header = received_header(info, datetime(2026, 1, 1, tzinfo=UTC))
    assert header.isascii() and header.startswith(b"Received: from ") and header.endswith(b"\r\n")
    lines = header[:-2].split(b"\r\n")
    assert all(line.startswith(b"\t") for line in lines[1:])
    assert b"\n" not in header.replace(b"\r\n", b"") and b"\r" not in header.replace(b"\r\n", b"")
    parsed = email.message_from_bytes(header + b"\r\nbody", policy=email.policy.SMTP)
    assert list(parsed.keys()) == ["Received"]
