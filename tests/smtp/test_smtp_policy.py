"""Pure policy decisions of the inbound listener."""

from __future__ import annotations

import pytest

from mssante_operator.smtp.policy import (
    ClosedPolicy,
    SuspendedPolicy,
    accepted_reply,
    data_start_decision,
    mail_from_decision,
    rcpt_decision,
)
from mssante_operator.smtp.ports import MailboxState, PeerVerdict, Verdict
from mssante_operator.smtp.replies import SmtpReply

GOOD_PEER = PeerVerdict(ok=True, reason="ok", subject_dn="CN=mx.peer.example,O=Peer,C=FR")


def mail(**kw: object) -> str:
    args: dict[str, object] = {
        "tls_active": True,
        "peer": GOOD_PEER,
        "trust": Verdict(True),
        "peer_subject_dn": GOOD_PEER.subject_dn,
        "mail_from_domain": "peer.example",
        "declared_size": None,
        "max_size": 1000,
    }
    args.update(kw)
    decision = mail_from_decision(**args)  # type: ignore[arg-type]
    return f"{decision.reason} {decision.reply}"


def test_mail_from_order_and_replies() -> None:
    assert mail() == "ok 250 2.1.0 Sender ok"
    assert (
        mail(tls_active=False, peer=None) == "starttls_required 530 5.7.0 Must issue a STARTTLS command first"
    )
    assert mail(peer=None).startswith("no_client_certificate 530 5.7.0 A TLS client certificate is required")
    assert mail(peer=PeerVerdict(False, "certificate revoked on 2026-01-02 (CRL of IGC-Santé CA)")) == (
        "client_certificate_invalid 550 5.7.1 Client certificate refused: certificate revoked on 2026-01-02 "
        "(CRL of IGC-Sante CA)"
    )
    assert mail(peer=PeerVerdict(False, "CRL expired", temporary=True)).startswith(
        "client_certificate_unverifiable 454 4.7.0"
    )
    assert mail(peer=PeerVerdict(True, "ok", subject_dn="")).startswith(
        "client_certificate_invalid 550 5.7.1"
    )
    assert mail(declared_size=1001).startswith("size_exceeded 552 5.3.4")
    assert mail(trust=Verdict(False, "no entry for this DN")) == (
        "sender_not_bound 550 5.7.1 Sender not authorized: the trust list does not bind certificate subject "
        "'CN=mx.peer.example,O=Peer,C=FR' to sender domain peer.example (no entry for this DN)"
    )
    assert mail(trust=Verdict(False), mail_from_domain=None).startswith(
        "sender_not_bound 550 5.7.1 Sender not authorized: certificate subject"
    )
    assert mail(trust=Verdict(False, "list unreadable", temporary=True)).startswith(
        "trust_unavailable 451 4.7.1"
    )
    with pytest.raises(ValueError, match="trust verdict"):
        mail(trust=None)


@pytest.mark.parametrize(
    ("state", "suspended", "closed", "expected"),
    [
        (
            None,
            SuspendedPolicy.TEMPORARY,
            ClosedPolicy.UNKNOWN,
            "550 5.1.1 <a@h.example>: no such mailbox here",
        ),
        (MailboxState.ACTIVE, SuspendedPolicy.TEMPORARY, ClosedPolicy.UNKNOWN, "250 2.1.5 Recipient ok"),
        (MailboxState.SUSPENDED, SuspendedPolicy.TEMPORARY, ClosedPolicy.UNKNOWN, "450 4.2.1"),
        (MailboxState.SUSPENDED, SuspendedPolicy.PERMANENT, ClosedPolicy.UNKNOWN, "550 5.2.1"),
        (MailboxState.CLOSED, SuspendedPolicy.TEMPORARY, ClosedPolicy.UNKNOWN, "550 5.1.1"),
        (
            MailboxState.CLOSED,
            SuspendedPolicy.TEMPORARY,
            ClosedPolicy.DISABLED,
            "550 5.2.1 <a@h.example>: mailbox closed",
        ),
    ],
)
def test_rcpt_states(
    state: MailboxState | None, suspended: SuspendedPolicy, closed: ClosedPolicy, expected: str
) -> None:
    decision = rcpt_decision(
        state,
        None,
        address="a@h.example",
        accepted_so_far=0,
        max_recipients=10,
        suspended=suspended,
        closed=closed,
    )
    assert str(decision.reply).startswith(expected)
    assert decision.allowed == (state is MailboxState.ACTIVE)


def test_rcpt_directory_and_limits() -> None:
    refused = rcpt_decision(
        MailboxState.ACTIVE,
        Verdict(False, "sender not in the national directory"),
        address="a@h",
        accepted_so_far=0,
        max_recipients=5,
    )
    assert str(refused.reply) == "550 5.7.1 <a@h>: sender not in the national directory"
    later = rcpt_decision(
        MailboxState.ACTIVE,
        Verdict(False, "mirror stale", temporary=True),
        address="a@h",
        accepted_so_far=0,
        max_recipients=5,
    )
    assert later.reply.code == 450
    assert rcpt_decision(
        MailboxState.ACTIVE, Verdict(True), address="a@h", accepted_so_far=0, max_recipients=5
    ).allowed
    full = rcpt_decision(MailboxState.ACTIVE, None, address="a@h", accepted_so_far=5, max_recipients=5)
    assert str(full.reply) == "452 4.5.3 Too many recipients (at most 5 per message)"


def test_data_start_and_accept() -> None:
    assert str(data_start_decision(0).reply) == "554 5.5.1 No valid recipients"
    assert str(data_start_decision(1).reply) == "354 End data with <CR><LF>.<CR><LF>"
    assert str(accepted_reply("Q1")) == "250 2.0.0 Ok Q1"


def test_reply_validation_and_multiline() -> None:
    with pytest.raises(ValueError, match="does not match"):
        SmtpReply(550, "4.1.1", "x")
    with pytest.raises(ValueError, match="CR"):
        SmtpReply(550, "5.1.1", "x\ry")
    assert SmtpReply(250, "2.0.0", "a\nb").lines() == ["250-2.0.0 a", "250 2.0.0 b"]
