"""Relay's pure parts: retry schedule, transport map / MX routing over a real UDP DNS server, DSNs."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from email import message_from_bytes, policy
from email.message import EmailMessage

import dns.asyncresolver
import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest
from hypothesis import given
from hypothesis import strategies as st

from mssante_operator.relay.dsn import DsnAction, DsnRecipient, DsnReport, build_dsn, should_notify
from mssante_operator.relay.routing import (
    RouteSource,
    RoutingError,
    order_mx,
    parse_transport,
    resolve_route,
    transport_lookup,
)
from mssante_operator.relay.schedule import RetrySchedule, parse_duration

T0 = datetime(2026, 11, 22, 8, 0, tzinfo=UTC)


def test_default_schedule_follows_the_issue() -> None:
    s = RetrySchedule()
    waits = [s.interval_after(n) for n in range(1, 8)]
    assert waits == [timedelta(minutes=m) for m in (5, 15, 30, 60, 60, 60, 60)]
    assert s.next_attempt(1, T0, T0) == T0 + timedelta(minutes=5)
    assert s.next_attempt(9, T0, T0 + timedelta(days=5)) is None
    # the last retry is never scheduled past expiry
    late = T0 + timedelta(days=5) - timedelta(minutes=10)
    assert s.next_attempt(50, T0, late) == T0 + timedelta(days=5)
    assert not s.delay_notice_due(T0, T0 + timedelta(hours=3, minutes=59), already_sent=False)
    assert s.delay_notice_due(T0, T0 + timedelta(hours=4), already_sent=False)
    assert not s.delay_notice_due(T0, T0 + timedelta(hours=5), already_sent=True)


@given(st.integers(1, 10_000), st.integers(0, 10 * 86400))
def test_next_attempt_is_in_the_future_and_before_expiry(failures: int, elapsed: int) -> None:
    s = RetrySchedule()
    now = T0 + timedelta(seconds=elapsed)
    nxt = s.next_attempt(failures, T0, now)
    if now >= T0 + s.give_up_after:
        assert nxt is None
    else:
        assert nxt is not None and now < nxt <= T0 + s.give_up_after


def test_durations() -> None:
    assert parse_duration("5m") == timedelta(minutes=5)
    assert parse_duration("4h") == timedelta(hours=4)
    assert parse_duration("90") == timedelta(seconds=90)
    for bad in ("", "-5m", "five", "0s"):
        with pytest.raises(ValueError, match="duration"):
            parse_duration(bad)


def test_transport_map() -> None:
    tmap = {"b.mssante.test": "127.0.0.1:2526", ".regions.test": "[::1]:2527", "c.test": "mx.c.test"}
    hop = transport_lookup("B.mssante.test.", tmap)
    assert hop is not None and (hop.host, hop.port, hop.source) == (
        "127.0.0.1",
        2526,
        RouteSource.TRANSPORT_MAP,
    )
    hop = transport_lookup("chu.bretagne.regions.test", tmap)
    assert hop is not None and (hop.host, hop.port) == ("::1", 2527)
    hop = transport_lookup("c.test", tmap)
    assert hop is not None and hop.port == 25
    assert transport_lookup("other.test", tmap) is None
    for bad in ("", ":25", "host:0", "host:99999", "host:x"):
        with pytest.raises(ValueError):
            parse_transport(bad)


def test_mx_order_and_null_mx() -> None:
    hops = order_mx([(20, "b.example."), (10, "A.example."), (10, "c.example")])
    assert [h.host for h in hops] == ["a.example", "c.example", "b.example"]
    with pytest.raises(RoutingError, match="null MX") as info:
        order_mx([(0, "")])
    assert info.value.permanent


class _Zone(asyncio.DatagramProtocol):
    """A tiny authoritative DNS server on loopback: real UDP, real dnspython wire format."""

    def __init__(self, mx: dict[str, list[tuple[int, str]]], nxdomain: set[str]) -> None:
        self.mx, self.nxdomain = mx, nxdomain
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        query = dns.message.from_wire(data)
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        question = query.question[0]
        name = question.name.to_text(omit_final_dot=True).lower()
        if name in self.nxdomain:
            response.set_rcode(dns.rcode.NXDOMAIN)
        elif question.rdtype == dns.rdatatype.MX and self.mx.get(name):
            texts = [f"{pref} {host}" for pref, host in self.mx[name]]
            response.answer.append(dns.rrset.from_text(question.name, 300, "IN", "MX", *texts))
        assert self.transport is not None
        self.transport.sendto(response.to_wire(), addr)


@pytest.fixture
async def resolver() -> AsyncIterator[dns.asyncresolver.Resolver]:
    zone = _Zone(
        mx={
            "b.mssante.test": [(20, "mx2.b.mssante.test."), (10, "mx1.b.mssante.test.")],
            "nullmx.test": [(0, ".")],
            "a-only.test": [],
        },
        nxdomain={"missing.test"},
    )
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(lambda: zone, local_addr=("127.0.0.1", 0))
    port = transport.get_extra_info("sockname")[1]
    res = dns.asyncresolver.Resolver(configure=False)
    res.nameservers = ["127.0.0.1"]
    res.port = port
    res.lifetime = 2.0
    try:
        yield res
    finally:
        transport.close()


async def test_resolve_route_over_real_dns(resolver: dns.asyncresolver.Resolver) -> None:
    hops = await resolve_route("b.mssante.test", {}, resolver=resolver)
    assert [(h.host, h.preference, h.source) for h in hops] == [
        ("mx1.b.mssante.test", 10, RouteSource.MX),
        ("mx2.b.mssante.test", 20, RouteSource.MX),
    ]
    fixed = await resolve_route("b.mssante.test", {"b.mssante.test": "127.0.0.1:2600"}, resolver=resolver)
    assert [(h.host, h.port) for h in fixed] == [("127.0.0.1", 2600)]
    implicit = await resolve_route("a-only.test", {}, resolver=resolver)
    assert implicit[0].source is RouteSource.IMPLICIT_MX and implicit[0].host == "a-only.test"
    with pytest.raises(RoutingError, match="NXDOMAIN") as info:
        await resolve_route("missing.test", {}, resolver=resolver)
    assert info.value.permanent
    with pytest.raises(RoutingError, match="null MX"):
        await resolve_route("nullmx.test", {}, resolver=resolver)


@pytest.mark.parametrize(
    ("sender", "notify", "action", "expected"),
    [
        ("a@x.test", None, DsnAction.FAILED, True),
        ("a@x.test", None, DsnAction.DELAYED, True),
        ("a@x.test", None, DsnAction.DELIVERED, False),
        ("a@x.test", "SUCCESS", DsnAction.DELIVERED, True),
        ("a@x.test", "SUCCESS,FAILURE", DsnAction.DELAYED, False),
        ("a@x.test", "NEVER", DsnAction.FAILED, False),
        ("<>", None, DsnAction.FAILED, False),
        ("", "SUCCESS,FAILURE,DELAY", DsnAction.FAILED, False),
    ],
)
def test_should_notify(sender: str, notify: str | None, action: DsnAction, expected: bool) -> None:
    assert should_notify(sender, notify, action) is expected


ORIGINAL = (
    b"From: Dr Martin <jean.martin@a.mssante.test>\r\nTo: <dr.b@b.mssante.test>\r\n"
    b"Subject: Compte rendu\r\nX-MSS-NIL: DPI-1.0\r\nMessage-ID: <orig@a>\r\n\r\nSECRET BODY LINE\r\n"
)


def _report(ret: str | None, action: DsnAction = DsnAction.FAILED) -> DsnReport:
    return DsnReport(
        reporting_mta="mail.a.mssante.test",
        sender="jean.martin@a.mssante.test",
        arrival_date=T0,
        envid="ENV+2B1",
        ret=ret,
        original_message=ORIGINAL,
        recipients=[
            DsnRecipient(
                final_recipient="dr.b@b.mssante.test",
                original_recipient="rfc822;dr.b@b.mssante.test",
                action=action,
                status="5.1.1" if action is DsnAction.FAILED else "2.0.0",
                diagnostic="550 5.1.1 <dr.b@b.mssante.test>: unknown mailbox",
                remote_mta="mx.b.mssante.test",
                last_attempt=T0,
            )
        ],
    )


def test_failure_dsn_is_a_parseable_rfc3464_report() -> None:
    raw = build_dsn(_report(None), now=T0, message_id_domain="a.mssante.test")
    msg = message_from_bytes(raw, policy=policy.default)
    assert isinstance(msg, EmailMessage)
    assert msg.get_content_type() == "multipart/report"
    assert msg.get_param("report-type") == "delivery-status"
    assert msg["To"] == "jean.martin@a.mssante.test"
    assert msg["Auto-Submitted"] == "auto-replied"
    parts = list(msg.iter_parts())
    assert [p.get_content_type() for p in parts] == [
        "text/plain",
        "message/delivery-status",
        "text/rfc822-headers",
    ]
    status_blocks = parts[1].get_payload()
    assert isinstance(status_blocks, list)
    assert status_blocks[0]["Reporting-MTA"] == "dns; mail.a.mssante.test"
    assert status_blocks[0]["Original-Envelope-Id"] == "ENV+2B1"
    rcpt = status_blocks[1]
    assert rcpt["Action"] == "failed" and rcpt["Status"] == "5.1.1"
    assert rcpt["Final-Recipient"] == "rfc822; dr.b@b.mssante.test"
    assert "unknown mailbox" in rcpt["Diagnostic-Code"]
    # headers only, never the body, unless RET=FULL
    assert b"X-MSS-NIL: DPI-1.0" in raw and b"SECRET BODY LINE" not in raw


def test_ret_full_returns_the_whole_message_and_success_never_does() -> None:
    full = build_dsn(_report("FULL"), now=T0, message_id_domain="a")
    assert b"SECRET BODY LINE" in full and b"message/rfc822" in full
    success = build_dsn(_report("FULL", DsnAction.DELIVERED), now=T0, message_id_domain="a")
    assert b"SECRET BODY LINE" not in success


def test_mixed_actions_are_refused() -> None:
    report = _report(None)
    mixed = DsnReport(
        **{
            **report.__dict__,
            "recipients": [*report.recipients, DsnRecipient("x@y", DsnAction.DELAYED, "4.0.0")],
        }
    )
    with pytest.raises(ValueError, match="one DSN per action"):
        build_dsn(mixed, now=T0, message_id_domain="a")
